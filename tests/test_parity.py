"""Parity with Hallo's own code on the golden folder (shared/golden/hallo).

float64 is the sharp check: every output, the three DDIM steps of the pipeline case and the
decoded video included, must match Hallo's float64 run within tolerance.json (1e-7).

float32: the single modules and the guided UNet step must match within tolerance.json. The
later steps of the pipeline case are not asserted in float32: on this 8x8-latent set the 1x1
bottleneck (GroupNorm over two values) and Hallo's float16 reference features make float32
chaotic; Hallo's own code run here misses e.final_latents by 0.26 too (see the closing note of
the parity issue), while our float64 run matches Hallo's float64 to 1e-8.
"""
import io
import re
import subprocess
import sys

import torch

from emo_core.parity import Golden, HalloRunner, compare

FLOAT32_CHAOTIC = re.compile(r"^e\.(step[1-9]|final_latents|video)")


def parse(text: str) -> dict[str, bool]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"(float32|float64) (\S+)\s+.*\b(ok|FAIL|equal|DIFFERENT)$", line)
        if m:
            rows[(m.group(1), m.group(2))] = m.group(3) in ("ok", "equal")
    return rows


def test_float64_parity_is_exact(hallo_golden):
    golden = Golden.load(hallo_golden)
    out = io.StringIO()
    ok = compare(golden, HalloRunner(golden, torch.float64).run(), float64=True, out=out)
    rows = parse(out.getvalue())
    assert ok, out.getvalue()
    # Every float64 golden tensor was compared (nothing silently skipped).
    assert {name for _, name in rows} >= set(golden.cases64) - {"e.source_image", "e.init_latents"}


def test_float32_parity(hallo_golden):
    golden = Golden.load(hallo_golden)
    out = io.StringIO()
    compare(golden, HalloRunner(golden, torch.float32).run(), float64=False, out=out)
    rows = parse(out.getvalue())
    checked = {name: good for (_, name), good in rows.items() if not FLOAT32_CHAOTIC.match(name)}
    assert len(checked) >= 25 and all(checked.values()), out.getvalue()
    assert {"a.output", "b.output", "c.output", "f.windowed", "d.noise_pred", "d.noise_pred_cfg",
            "e.step0.latents_after"} <= set(checked)


def test_parity_command_reports_every_tensor(hallo_golden):
    proc = subprocess.run([sys.executable, "-m", "emo_core.parity", str(hallo_golden)],
                          capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] in ("PASS", "FAIL")
    assert (proc.returncode == 0) == (lines[-1] == "PASS")
    rows = parse(proc.stdout)
    assert all(ok for (prec, _), ok in rows.items() if prec == "float64"), proc.stdout
    assert any(prec == "float32" for prec, _ in rows)
