"""bench/hallo_side_by_side.py without a Hallo checkout: one skip line, exit 0."""
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "hallo_side_by_side.py"


def test_side_by_side_skips_without_hallo():
    env = {k: v for k, v in os.environ.items() if k not in ("EMO_HALLO_DIR", "EMO_HALLO_PYTHON")}
    r = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    assert r.stdout.strip().startswith("skipped: ") and len(r.stdout.strip().splitlines()) == 1
