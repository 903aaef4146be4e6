#!/usr/bin/env bash
# Example: label every image in output_frames with Faster R-CNN (ResNet-50 FPN v2) and keep the
# boxes scoring 0.7 or more: annotated copies, coco_dataset.json and coco_results.json go to
# annotated_frames.
#
#   frame_extract/image_annotator.sh [INPUT] [OUTPUT_FOLDER] [MORE FLAGS...]
#       INPUT          a folder of images, one image, or an extractor index (default: output_frames)
#       OUTPUT_FOLDER  default: annotated_frames (created if missing)
#       MORE FLAGS     e.g. --device cuda --batch-size 8, or --workers 4 to fan out over Ray actors
#   environment: MODEL (default fasterrcnn_resnet50_fpn_v2), WEIGHTS (default auto: the model's
#   COCO weights if already in $TORCH_HOME/hub/checkpoints, else none = random, meaningless boxes;
#   DEFAULT downloads them once; or a path to a .pth file), PYTHON (default python, else python3).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"

"$PYTHON" "$HERE/image_annotator.py" \
    -i "${1:-output_frames}" \
    -o "${2:-annotated_frames}" \
    --model_name "${MODEL:-fasterrcnn_resnet50_fpn_v2}" \
    --threshold 0.7 \
    --weights "${WEIGHTS:-auto}" \
    "${@:3}"
