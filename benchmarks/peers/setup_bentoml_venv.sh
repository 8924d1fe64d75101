#!/usr/bin/env bash
# Create the BentoML peer's virtualenv (default .venv-bench, git-ignored by a .gitignore of
# its own): BentoML plus numpy, Pillow and ONNX Runtime pinned to the versions in .venv, so
# the peer computes with the same libraries as FishEye (peer_compare checks the tensors).
#
#   bash benchmarks/peers/setup_bentoml_venv.sh [VENV]      # from anywhere
#
# Why not .venv itself: installing bentoml there moves opentelemetry-api (which fastapi
# requires) back a patch release, 1.45.2 -> 1.45.1; nothing else FishEye has changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-bench}"
MAIN_PYTHON="${MAIN_PYTHON:-.venv/bin/python}"
PYTHON="${PYTHON:-python3.11}"

"$PYTHON" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"
"$MAIN_PYTHON" -m pip freeze --exclude-editable \
  | grep -iE '^(numpy|pillow|onnxruntime|fastapi|starlette|uvicorn|pydantic|pydantic[-_]core|anyio|httpx|python-multipart)==' \
  > "$VENV/pins.txt"
"$VENV/bin/python" -m pip install --quiet -c "$VENV/pins.txt" \
  'bentoml>=1.4.40,<1.5' numpy pillow onnxruntime
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c 'import bentoml, numpy, PIL, onnxruntime as o; print("bentoml", bentoml.__version__, "numpy", numpy.__version__, "pillow", PIL.__version__, "onnxruntime", o.__version__)'
