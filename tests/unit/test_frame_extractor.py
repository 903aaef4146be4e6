"""The frame extractor without ffmpeg: the fps clock on known answers, the reading strategy on a
fake capture, the index and the files on small real videos, and every bad input (one line, exit 2)."""

from __future__ import annotations

import csv
import json
import socket
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from frame_extract import frame_extractor as fx
from frame_extract._fpsclock import FpsClock, parse_rate, rate_text, round_near
from frame_extract._reader import FrameReader, InputInfo
from rayprof.errors import UserError

# -- the clock: ffmpeg's fps filter on known answers ------------------------------------------------


def choose(times: list[float], fps, end: float) -> list[tuple[int, int]]:
    """(tick, source index) for each output frame, as ffmpeg's fps filter would give them."""
    clock = FpsClock(Fraction(fps))
    out = []
    for i, t in enumerate(times):
        frame, ticks = clock.push(i, t)
        out += [(tick, frame.index) for tick in ticks]
    frame, ticks = clock.finish(end)
    out += [(tick, frame.index) for tick in ticks]
    return out


def test_half_fps_from_30_takes_the_last_frame_before_each_half_tick():
    # what `ffmpeg -i 30fps_10s.mp4 -vf fps=0.5` outputs: frames 29, 89, 149, 209, 269
    times = [k / 30 for k in range(300)]
    assert choose(times, "1/2", end=10.0) == [(0, 29), (1, 89), (2, 149), (3, 209), (4, 269)]


def test_a_higher_output_rate_repeats_frames_and_fills_to_the_end():
    times = [k / 10 for k in range(10)]  # 10 fps, 1 s
    got = choose(times, 25, end=1.0)
    # frame k rounds to tick round(2.5 k): 0, 3, 5, 8, 10, 13, 15, 18, 20, 23; the end rounds to 25
    assert [t for t, _ in got] == list(range(25))
    assert [i for _, i in got] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8, 8, 9, 9]


def test_the_clock_starts_at_the_first_frame_and_the_end_rounds_to_nearest():
    assert choose([0.9, 1.9, 2.9], 1, end=3.9) == [(1, 0), (2, 1), (3, 2)]   # first tick round(0.9) = 1
    assert choose([0.0, 1.0, 2.0], 1, end=2.4) == [(0, 0), (1, 1)]           # round(2.4) = 2: tick 2 is past the end
    assert choose([0.0, 1.0, 2.0], 1, end=2.5) == [(0, 0), (1, 1), (2, 2)]   # a half rounds up


def test_timestamps_going_backwards_replace_the_pending_frame_like_ffmpeg():
    assert choose([0.0, 1.0, 0.5, 2.0], 1, end=3.0) == [(0, 0), (1, 2), (2, 3)]


def test_rounding_is_half_away_from_zero_and_tolerates_float_milliseconds():
    assert [round_near(x) for x in (0.5, 1.5, 2.5, -0.5, 0.49999, 2.4999999999995)] == [1, 2, 3, -1, 0, 3]
    clock = FpsClock(Fraction(1, 2))
    assert clock.tick_of(1000.0000000000001 / 1000) == 1 and clock.tick_of(0.9999999999999999) == 1


def test_boundary_says_when_the_pending_frame_becomes_an_output():
    clock = FpsClock(Fraction(1, 2))
    assert clock.boundary() == float("inf")
    clock.push(0, 0.0)
    assert clock.boundary() == 1.0          # a next frame at >= 1.0 s rounds to tick 1
    _, ticks = clock.push(1, 0.99)
    assert not ticks and clock.boundary() == 1.0
    _, ticks = clock.push(2, 1.0)
    assert list(ticks) == [0] and clock.boundary() == 3.0


@pytest.mark.parametrize("text, want", [("0.5", Fraction(1, 2)), ("2", Fraction(2)), ("1/2", Fraction(1, 2)),
                                        ("30000/1001", Fraction(30000, 1001)), (" 0.25 ", Fraction(1, 4))])
def test_rates_parse_exactly(text, want):
    assert parse_rate("fps", text) == want


@pytest.mark.parametrize("text", ["0", "-1", "abc", "1/0", "nan", "inf", "", "2000"])
def test_bad_rates_are_user_errors(text):
    with pytest.raises(UserError) as e:
        parse_rate("fps", text)
    assert e.value.field == "fps"


def test_rate_text_is_short_and_exact():
    assert [rate_text(Fraction(x)) for x in ("1/2", "2", "30000/1001", "1/3")] == ["0.5", "2", "30000/1001", "1/3"]


# -- reading: convert only what can be chosen, re-read on a surprise gap --------------------------------


class FakeCapture:
    """A cv2.VideoCapture stand-in: frames at ``times`` (s); each image is painted with its index."""

    def __init__(self, times, log):
        self.times, self.log, self.pos = times, log, -1
        log["opens"] += 1

    def grab(self):
        self.pos += 1
        return self.pos < len(self.times)

    def get(self, prop):
        assert prop == 0  # CAP_PROP_POS_MSEC
        return self.times[self.pos] * 1000.0

    def retrieve(self):
        self.log["retrieved"].append(self.pos)
        return True, np.full((8, 8, 3), (self.pos % 256, self.pos // 256, 0), np.uint8)

    def release(self):
        pass


def fake_run(tmp_path, times, fps, container_fps=30.0, **kw):
    log = {"opens": 0, "retrieved": []}
    info = InputInfo(display="fake.mp4", kind="file", live=False, fps=container_fps, frame_count=len(times),
                     width=8, height=8, wall_clock=False)
    reader = FrameReader(lambda: FakeCapture(times, log), info)
    opts = fx.ExtractOptions(input="fake.mp4", output=tmp_path, fps=Fraction(fps), fmt="png", **kw)
    t0 = reader.next()
    res = fx.extract(opts, reader, t0)
    pixels = [cv2.imread(str(tmp_path / r["file_name"]))[0, 0] for r in res.rows]
    images = [int(p[0]) + 256 * int(p[1]) for p in pixels]  # the index FakeCapture painted
    return res, log, images


def test_constant_rate_decimation_converts_only_the_frames_near_a_tick(tmp_path):
    times = [k / 30 for k in range(300)]
    res, log, images = fake_run(tmp_path, times, "1/2")
    assert [r["frame_index"] for r in res.rows] == [29, 89, 149, 209, 269] == images
    assert len(log["retrieved"]) <= 3 * len(res.rows) and log["opens"] == 1 and res.rereads == 0
    assert res.frames_read == 300 and res.stopped_by == "end" and res.truncated is None


def test_a_gap_longer_than_predicted_reads_the_frame_again_exactly(tmp_path):
    # 25 fps, then a 3 s hole: the frame before the hole is the one tick 1 needs
    times = [k * 0.04 for k in range(25)] + [4.0 + k * 0.04 for k in range(25)]
    res, log, images = fake_run(tmp_path, times, 1, container_fps=25.0)
    want = choose(times, 1, end=times[-1] + 0.04)
    assert [(r["output_index"], r["frame_index"]) for r in res.rows] == [(n, i) for n, (_, i) in enumerate(want)]
    assert images == [i for _, i in want]
    assert res.rereads >= 1 and log["opens"] == 1 + res.rereads


def test_start_and_end_cut_the_source_and_shift_the_clock(tmp_path):
    times = [k / 10 for k in range(100)]  # 10 s at 10 fps
    res, _, _ = fake_run(tmp_path, times, 1, container_fps=10.0, start=2.5, end=6.0)
    # relative times 0.0 .. 3.4 (frames 25..59); the end is 3.5 -> ticks 0..3 (round(3.5) = 4)
    assert [r["frame_index"] for r in res.rows] == [29, 39, 49, 59]
    assert [r["output_time_s"] for r in res.rows] == [2.5, 3.5, 4.5, 5.5]
    assert res.stopped_by == "end_time" and res.frames_read == 60


def test_max_duration_counts_from_start(tmp_path):
    times = [k / 10 for k in range(100)]
    res, _, _ = fake_run(tmp_path, times, 2, container_fps=10.0, start=1.0, max_duration=2.0)
    assert res.stopped_by == "max_duration" and res.last_t == pytest.approx(2.9)
    assert len(res.rows) == 4


# -- real (small) videos ---------------------------------------------------------------------------


def run_main(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        fx.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """4 s at 16 fps, 96x64 (64 distinct frames)."""
    from rayprof.source import make_sample_video

    return make_sample_video(tmp_path_factory.mktemp("fx") / "v.mp4", seconds=4, fps=16, width=96, height=64)


def test_csv_index_and_files(video, tmp_path, capsys):
    out = tmp_path / "frames"
    code, stdout, err = run_main(["-i", video, "-o", out, "--fps", "2", "--prefix", "shot_", "--format", "png"], capsys)
    assert code == 0 and err == "", err
    assert stdout.count("\n") == 1 and stdout.startswith("extracted 8 frame(s) at 2 fps as png")
    rows = read_rows(out / "shot_index.csv")
    assert list(rows[0]) == list(fx.INDEX_COLUMNS)
    assert [r["file_name"] for r in rows] == [f"shot_{n:06d}.png" for n in range(8)]
    # 16 fps -> 2 fps: frame k rounds to tick round(k / 8); tick n shows frame 8n + 3 (at 8n/16 + 3/16 s)
    assert [int(r["frame_index"]) for r in rows] == [8 * n + 3 for n in range(8)]
    assert [float(r["timestamp_s"]) for r in rows] == [round((8 * n + 3) / 16, 6) for n in range(8)]
    assert [float(r["output_time_s"]) for r in rows] == [n / 2 for n in range(8)]
    assert sorted(p.name for p in out.iterdir()) == sorted([r["file_name"] for r in rows] + ["shot_index.csv"])
    img = cv2.imread(str(out / "shot_000000.png"))
    assert img.shape == (64, 96, 3)


def test_json_index_webp_and_quality(video, tmp_path, capsys):
    code, _, _ = run_main(["-i", video, "-o", tmp_path / "hi", "--fps", "1", "--format", "webp", "--index", "json",
                           "--quality", "100"], capsys)
    assert code == 0
    doc = json.loads((tmp_path / "hi" / "frame_index.json").read_text())
    assert doc["fps"] == "1" and doc["format"] == "webp" and doc["stopped_by"] == "end"
    assert doc["source_frames_read"] == 64 and len(doc["frames"]) == 4
    assert cv2.imread(str(tmp_path / "hi" / doc["frames"][0]["file_name"])).shape == (64, 96, 3)
    code, _, _ = run_main(["-i", video, "-o", tmp_path / "lo", "--fps", "1", "--format", "jpg", "--quality", "5"], capsys)
    code2, _, _ = run_main(["-i", video, "-o", tmp_path / "q95", "--fps", "1", "--format", "jpg"], capsys)
    assert code == code2 == 0
    small = (tmp_path / "lo" / "frame_000000.jpg").stat().st_size
    assert small < (tmp_path / "q95" / "frame_000000.jpg").stat().st_size


def test_a_second_run_needs_overwrite_which_removes_stale_frames(video, tmp_path, capsys):
    out = tmp_path / "o"
    assert run_main(["-i", video, "-o", out, "--fps", "4"], capsys)[0] == 0
    assert len(list(out.glob("frame_*.jpg"))) == 16
    (out / "mine.txt").write_text("keep me")
    code, _, err = run_main(["-i", video, "-o", out, "--fps", "1"], capsys)
    assert code == 2 and err.startswith("error: output = ") and "--overwrite" in err
    assert len(list(out.glob("frame_*.jpg"))) == 16  # untouched
    assert run_main(["-i", video, "-o", out, "--fps", "1", "--overwrite"], capsys)[0] == 0
    assert len(list(out.glob("frame_*.jpg"))) == 4 and (out / "mine.txt").read_text() == "keep me"
    assert run_main(["-i", video, "-o", out, "--fps", "1", "--prefix", "b_"], capsys)[0] == 0  # another prefix: fine


def test_a_truncated_video_extracts_what_is_readable_and_says_how_much(video, tmp_path, capsys):
    from tests.support.frames import faststart_copy

    whole = faststart_copy(video, tmp_path / "whole.mp4")   # index first, so the cut copy still opens
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    code, stdout, err = run_main(["-i", cut, "-o", tmp_path / "o", "--fps", "2"], capsys)
    assert code == 0
    assert err.count("\n") == 1 and err.startswith("warning: the video ends early:") and "of 4.00 s" in err
    rows = read_rows(tmp_path / "o" / "frame_index.csv")
    assert 0 < len(rows) < 8 and stdout.startswith(f"extracted {len(rows)} frame(s)")


def test_the_sample_video_and_script_style_relative_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_main(["-i", "sample", "-o", "frames", "--fps", "0.5", "--end", "4"], capsys)
    assert code == 0 and "extracted 2 frame(s)" in stdout
    assert (tmp_path / "frames" / "frame_000001.jpg").is_file()


# -- bad input: one line, exit 2, nothing written ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD = {
    "missing file": (["-i", "{tmp}/nope.mp4"], "input = '{tmp}/nope.mp4': no such file"),
    "a folder": (["-i", "{tmp}"], "input = '{tmp}': is a folder, not a video file"),
    "empty file": (["-i", "{tmp}/empty.mp4"], "is an empty file"),
    "not a video": (["-i", "{tmp}/text.mp4"], "is not a video OpenCV/FFmpeg can read"),
    "fps 0": (["--fps", "0"], "fps = '0': must be greater than 0"),
    "fps negative": (["--fps", "-2"], "fps = '-2': must be greater than 0"),
    "fps text": (["--fps", "fast"], "fps = 'fast': not a frame rate"),
    "format": (["--format", "gif"], "format = 'gif': unknown image format"),
    "format typo": (["--format", "pgn"], "(did you mean 'png'"),
    "output is a file": (["-o", "{tmp}/file.txt"], "output = '{tmp}/file.txt': is a file, not a folder"),
    "output under a file": (["-o", "{tmp}/file.txt/x"], "lies under"),
    "prefix with a slash": (["--prefix", "../up_"], "prefix = '../up_': may not contain /"),
    "quality for png": (["--format", "png", "--quality", "80"], "quality = '80': png is lossless"),
    "quality range": (["--quality", "0"], "quality = '0': must be at least 1"),
    "end before start": (["--start", "3", "--end", "1"], "end = '1': is not after --start (3 s)"),
    "start past the end": (["--start", "9"], "start = '9': is past the end of the video (4.00 s long)"),
    "max duration": (["--max-duration", "0"], "max_duration = '0': must be greater than 0"),
    "index format": (["--index", "xml"], "index = 'xml': unknown index format"),
    "unknown flag": (["--fsp", "2"], "No such option '--fsp'"),
    "unreachable stream": (["-i", "http://cam:secret@127.0.0.1:{port}/video?token=abc"],
                           "input = 'http://cam:***@127.0.0.1:{port}/video?token=***': could not be opened"),
    "unreachable rtsp": (["-i", "rtsp://127.0.0.1:{port}/live", "--open-timeout", "2"], "could not be opened"),
    "unsupported scheme": (["-i", "udp://127.0.0.1:5000"], "URL scheme 'udp://' is not supported"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, video, tmp_path, capsys):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 50)
    (tmp_path / "file.txt").write_text("x")
    extra, expected = BAD[case]
    fill = {"tmp": str(tmp_path), "port": str(free_port())}
    extra = [a.format(**fill) for a in extra]
    args = {"-i": str(video), "-o": str(tmp_path / "out")}
    for flag in ("-i", "-o"):
        if flag in extra:
            k = extra.index(flag)
            args[flag] = extra[k + 1]
            del extra[k:k + 2]
    code, out, err = run_main(["-i", args["-i"], "-o", args["-o"], *extra], capsys)
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert expected.format(**fill) in err
    assert "Traceback" not in err and "secret" not in err and "token=abc" not in err
    assert not (tmp_path / "out").exists()


def test_missing_output_flag_is_one_line(video, capsys):
    code, _, err = run_main(["-i", video], capsys)
    assert code == 2 and err == "error: Missing option '-o' / '--output'; see python -m frame_extract.frame_extractor --help\n"


def test_help_exits_0(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "--fps" in out and "--prefix" in out and "--max-duration" in out
