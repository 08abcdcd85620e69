#!/usr/bin/env bash
# Creates .venv with a CPU torch and everything the library, the tests and the
# benchmarks need. Re-running it is safe.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
# System tools used by the tests on real media (speech synthesis, audio conversion).
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null
  else
    echo "note: install espeak-ng and sox for the real-media tests (they are skipped otherwise)" >&2
  fi
fi
echo "emo-portrait environment ready in .venv"
# Face analysis for the tests: mediapipe 0.10.21 still has mediapipe.solutions with its models
# inside the wheel (works offline). Its metadata asks for numpy<2, jax and opencv-contrib, which
# it does not need here: install it without dependencies plus what it really imports, with
# protobuf 4.25.x (5.x/7.x break it). The library itself only imports mediapipe lazily.
if python -m pip install -q --no-deps "mediapipe==0.10.21" "protobuf>=4.25.3,<5" absl-py attrs \
    flatbuffers opencv-python-headless; then
  python -m pip install -q matplotlib -c constraints.txt
else
  echo "note: mediapipe 0.10.21 is not available for this Python; face tests will be skipped" >&2
fi
