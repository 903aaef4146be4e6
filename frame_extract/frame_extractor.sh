#!/usr/bin/env bash
# Example: one frame every 2 seconds (--fps 0.5) of a video, as PNG files shot_000000.png, ...
# plus shot_index.csv (file name, source frame index, timestamp) in the output folder.
#
#   frame_extract/frame_extractor.sh [VIDEO] [OUTPUT_FOLDER] [MORE FLAGS...]
#       VIDEO          a video file or a stream URL (default: video.mp4; `sample` is rayprof's test video)
#       OUTPUT_FOLDER  default: output_frames (created if missing)
#       MORE FLAGS     e.g. --overwrite to run it again into the same folder, --start 10 --end 70
#
# The same frames as `ffmpeg -i video.mp4 -vf fps=0.5 output_frames/shot_%06d.png`.
# Set PYTHON to choose the interpreter (default: python, else python3).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"

"$PYTHON" "$HERE/frame_extractor.py" \
    -i "${1:-video.mp4}" \
    -o "${2:-output_frames}" \
    --fps 0.5 \
    --prefix "shot_" \
    --format "png" \
    "${@:3}"
