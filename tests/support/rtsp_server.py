"""A minimal RTSP server on 127.0.0.1 for tests: RTP from ffmpeg, relayed over TCP (interleaved).

``ffmpeg -re -stream_loop -1 -i VIDEO -c:v mpeg4 -f rtp rtp://127.0.0.1:P -sdp_file F`` produces
an endless RTP feed and its SDP. The server answers OPTIONS, DESCRIBE (that SDP, with a control
attribute), SETUP (``RTP/AVP/TCP`` interleaved only; UDP gets ``461 Unsupported Transport``),
PLAY, GET_PARAMETER/SET_PARAMETER (keep-alives) and TEARDOWN, and forwards every RTP/RTCP
packet to each playing client as ``$ <channel> <length> <packet>``. With ``user``/``password``
set it demands HTTP Basic auth (``401`` otherwise).

``pause()`` drops the clients and stops listening (the feed keeps running); ``resume()`` listens
again on the same port: a stream outage and its recovery, on demand.
"""

from __future__ import annotations

import base64
import select
import socket
import subprocess
import threading
import time
from pathlib import Path

from .media import ffmpeg_exe, free_port, stop_process


class RtspTestServer:
    """``with RtspTestServer(video) as srv: cv2.VideoCapture(srv.url)`` (see the module docstring)."""

    def __init__(self, video: Path, workdir: Path, *, path: str = "/live", user: str | None = None,
                 password: str | None = None, startup_timeout_s: float = 15.0):
        self.video, self.workdir, self.path = Path(video), Path(workdir), path
        self.user, self.password = user, password
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.transports: list[str] = []     # Transport headers of every SETUP received
        self.requests: list[str] = []       # "METHOD url" of every request received
        self.auth_failures = 0
        self._lock = threading.Lock()
        self._clients: list[_Client] = []
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._ffmpeg: subprocess.Popen | None = None
        self._sdp = ""

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        cred = f"{self.user}:{self.password}@" if self.user else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}{self.path}"

    def start(self) -> RtspTestServer:
        rtp, rtcp = _udp_socket(), _udp_socket()
        self._udp = (rtp, rtcp)
        sdp_file = self.workdir / f"rtsp-{self.port}.sdp"
        sdp_file.unlink(missing_ok=True)
        out = f"rtp://127.0.0.1:{rtp.getsockname()[1]}?rtcpport={rtcp.getsockname()[1]}&pkt_size=1200"
        self._ffmpeg = subprocess.Popen(
            [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
             "-i", str(self.video), "-an", "-c:v", "mpeg4", "-q:v", "5", "-g", "10", "-flags", "+global_header",
             "-f", "rtp", "-sdp_file", str(sdp_file), out],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.startup_timeout_s
        while not (sdp_file.exists() and "m=video" in sdp_file.read_text()):
            if self._ffmpeg.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ffmpeg RTP feed did not start (exit {self._ffmpeg.returncode})")
            time.sleep(0.05)
        self._sdp = _with_control(sdp_file.read_text())
        self._spawn(self._relay)
        self.resume()
        return self

    def resume(self) -> None:
        """Listen (again) on ``self.port``."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(8)
        sock.settimeout(0.2)
        self._listener = sock
        self._spawn(self._accept, sock)

    def pause(self) -> None:
        """Close every client connection and stop listening (connections are refused)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            c.close()

    def stop(self) -> None:
        self._stop.set()
        self.pause()
        if self._ffmpeg is not None:
            stop_process(self._ffmpeg)
        for t in self._threads:
            t.join(timeout=2)
        for s in getattr(self, "_udp", ()):
            s.close()

    def __enter__(self) -> RtspTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def playing(self) -> int:
        with self._lock:
            return sum(c.playing for c in self._clients)

    # ------------------------------------------------------------------ threads

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _relay(self) -> None:
        rtp, rtcp = self._udp
        channel = {rtp: 0, rtcp: 1}
        while not self._stop.is_set():
            ready, _, _ = select.select([rtp, rtcp], [], [], 0.2)
            for s in ready:
                packet = s.recv(65536)
                frame = b"$" + bytes([channel[s]]) + len(packet).to_bytes(2, "big") + packet
                with self._lock:
                    clients = [c for c in self._clients if c.playing]
                for c in clients:
                    c.send(frame)

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set() and self._listener is sock:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client = _Client(conn)
            with self._lock:
                self._clients.append(client)
            self._spawn(self._serve, client)

    def _serve(self, client: _Client) -> None:
        try:
            while not self._stop.is_set() and not client.closed:
                req = client.read_request()
                if req is None:
                    break
                method, url, headers = req
                self.requests.append(f"{method} {url}")
                if not self._handle(client, method, url, headers):
                    break
        except OSError:
            pass
        finally:
            client.close()
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)

    def _authorized(self, headers: dict) -> bool:
        if not self.user:
            return True
        want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return headers.get("authorization", "") == want

    def _handle(self, client: _Client, method: str, url: str, headers: dict) -> bool:
        """Answer one request; False to close the connection."""
        cseq = headers.get("cseq", "0")
        base = f"rtsp://127.0.0.1:{self.port}{self.path}"
        if method == "OPTIONS":
            client.reply(cseq, 200, "OK", {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"})
            return True
        if not self._authorized(headers):
            self.auth_failures += 1
            client.reply(cseq, 401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="rayprof-test"'})
            return True
        if not _path_of(url).startswith(self.path):
            client.reply(cseq, 404, "Not Found")
            return True
        if method == "DESCRIBE":
            client.reply(cseq, 200, "OK", {"Content-Type": "application/sdp", "Content-Base": base + "/"},
                         body=self._sdp.encode())
        elif method == "SETUP":
            transport = headers.get("transport", "")
            self.transports.append(transport)
            if "RTP/AVP/TCP" not in transport:
                client.reply(cseq, 461, "Unsupported Transport")
                return True
            client.reply(cseq, 200, "OK", {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1",
                                           "Session": f"{client.session};timeout=60"})
        elif method == "PLAY":
            client.reply(cseq, 200, "OK", {"Session": client.session, "Range": "npt=0.000-"})
            client.playing = True
        elif method in ("GET_PARAMETER", "SET_PARAMETER"):
            client.reply(cseq, 200, "OK", {"Session": client.session})
        elif method == "TEARDOWN":
            client.reply(cseq, 200, "OK", {"Session": client.session})
            return False
        else:
            client.reply(cseq, 405, "Method Not Allowed")
        return True


class _Client:
    """One RTSP connection: request parsing and locked writes (replies and relayed packets)."""

    _next_session = 10000

    def __init__(self, conn: socket.socket):
        self.conn = conn
        conn.settimeout(2.0)
        self.playing = False
        self.closed = False
        self._buf = b""
        self._wlock = threading.Lock()
        _Client._next_session += 1
        self.session = str(_Client._next_session)

    def _fill(self) -> bool:
        while not self.closed:
            try:
                chunk = self.conn.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return False
            self._buf += chunk
            return True
        return False

    def read_request(self) -> tuple[str, str, dict] | None:
        while True:
            # interleaved packets from the client (RTCP receiver reports): skip them
            while self._buf.startswith(b"$"):
                while len(self._buf) < 4:
                    if not self._fill():
                        return None
                size = 4 + int.from_bytes(self._buf[2:4], "big")
                while len(self._buf) < size:
                    if not self._fill():
                        return None
                self._buf = self._buf[size:]
            end = self._buf.find(b"\r\n\r\n")
            if end != -1 and not self._buf.startswith(b"$"):
                break
            if not self._fill():
                return None
        head, self._buf = self._buf[:end].decode("latin-1"), self._buf[end + 4:]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 2:
            return None
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(self._buf) < length:
            if not self._fill():
                return None
        self._buf = self._buf[length:]
        return parts[0], parts[1], headers

    def reply(self, cseq: str, code: int, reason: str, headers: dict | None = None, body: bytes = b"") -> None:
        lines = [f"RTSP/1.0 {code} {reason}", f"CSeq: {cseq}", "Server: rayprof-test"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        with self._wlock:
            try:
                self.conn.sendall(data)
            except OSError:
                self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.playing = False
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.conn.close()


def _udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def _path_of(url: str) -> str:
    rest = url.split("://", 1)[-1]
    i = rest.find("/")
    return rest[i:] if i != -1 else "/"


def _with_control(sdp: str) -> str:
    """The SDP ffmpeg wrote, with a control attribute per media and port 0 (TCP transport)."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            f = line.split(" ")
            f[1] = "0"
            out += [" ".join(f), "a=control:streamid=0"]
        else:
            out.append(line)
    return "\r\n".join(out) + "\r\n"
