"""Peak memory of ``python -m emo_core generate --tiny`` for short and long audio, side by side.

    .venv/bin/python bench/long_audio_memory.py                 # 10 s and 10 min of audio
    .venv/bin/python bench/long_audio_memory.py --seconds 10 60 --steps 1

Each length runs the CLI in its own process (speech-like audio made here: a tone with a
syllable-rate loudness envelope), and the peak resident memory of that process is read from the
kernel (``getrusage`` of a wrapper process that runs only it). Frames are streamed to the mp4 and
clips are decoded one at a time, so memory should not grow with the length: the last line gives
the ratio of the longest run's peak to the shortest's (goal: within 10 %).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)")


def speech_like(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2  # about four syllables a second
    return (0.3 * envelope * np.sin(2 * np.pi * 180.0 * t)).astype(np.float32)


def peak_rss_mb(seconds: float, steps: int, folder: Path) -> tuple[float, int]:
    audio, out = folder / f"a{seconds:g}.wav", folder / f"v{seconds:g}.mp4"
    sf.write(str(audio), speech_like(seconds), 16000)
    cmd = [sys.executable, "-m", "emo_core", "generate", "--tiny", "--steps", str(steps), "--image",
           str(ROOT / "samples" / "portrait.png"), "--audio", str(audio), "-o", str(out), "--no-paste-back"]
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], cwd=ROOT, capture_output=True, text=True)
    kb, rc = proc.stdout.split()[-2:]
    if int(rc) != 0:
        raise RuntimeError(f"generate failed for {seconds} s of audio:\n{proc.stderr[-2000:]}")
    return int(kb) / 1024, sum(1 for line in proc.stderr.splitlines() if "done (" in line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 600.0])
    p.add_argument("--steps", type=int, default=1, help="DDIM steps (memory does not depend on them)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(s, *peak_rss_mb(s, args.steps, Path(tmp))) for s in sorted(args.seconds)]
    print(f"{'audio':>10} {'clips':>6} {'peak RSS':>10}")
    for s, mb, clips in rows:
        print(f"{s:>9g}s {clips:>6} {mb:>8.0f} MB")
    ratio = rows[-1][1] / rows[0][1]
    print(f"peak memory {rows[-1][0]:g} s / {rows[0][0]:g} s of audio: x{ratio:.3f} "
          f"({'within' if ratio <= 1.10 else 'NOT within'} 10 %)")


if __name__ == "__main__":
    main()
