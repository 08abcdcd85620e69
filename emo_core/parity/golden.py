"""Golden folders and the comparison rule shared by every parity runner.

A golden folder holds another project's outputs on tiny random weights: the cases in
``cases.json`` / ``cases.safetensors`` (float64 outputs in ``cases_f64.safetensors`` when
present) and ``tolerance.json``: ``|ours - golden| <= atol + rtol * |golden|`` per tensor.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file


@dataclass
class Golden:
    folder: Path
    meta: dict
    cases: dict[str, torch.Tensor]
    cases64: dict[str, torch.Tensor]
    tolerance: dict
    # float32 tensors reported but not asserted (the golden README explains why), name -> reason
    reported_only: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path) -> "Golden":
        folder = Path(folder)
        for name in ("cases.json", "cases.safetensors", "tolerance.json", "net.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing: not a Hallo-layout golden folder")
        f64 = folder / "cases_f64.safetensors"
        return cls(folder, json.loads((folder / "cases.json").read_text()), load_file(str(folder / "cases.safetensors")),
                   load_file(str(f64)) if f64.is_file() else {}, json.loads((folder / "tolerance.json").read_text()))

    def has(self, *prefixes: str) -> bool:
        return all(any(k.startswith(p + ".") for k in self.cases) for p in prefixes)

    def levels(self, prefix: str) -> int:
        return sum(1 for k in self.cases if k.startswith(f"{prefix}.full_mask."))


def tolerance(golden: Golden, name: str, float64: bool) -> tuple[float, float]:
    tol = golden.tolerance
    if float64 and "float64" in tol:
        tol64 = tol["float64"]
        if name in tol64.get("exceptions", {}):
            e = tol64["exceptions"][name]
            return e["atol"], e["rtol"]
        t = tol64["per_case_prefix"][name.split(".")[0]]
    else:
        t = tol["per_case_prefix"][name.split(".")[0]]
    return t["atol"], t["rtol"]


def compare(golden: Golden, ours: dict[str, torch.Tensor], float64: bool, out=sys.stdout) -> bool:
    """One line per tensor present in both; False when an asserted tensor is off."""
    expected = golden.cases64 if float64 else golden.cases
    ok = True
    label = "float64" if float64 else "float32"
    for name, value in ours.items():
        if name not in expected:
            continue
        ref = expected[name]
        if not ref.is_floating_point():
            good = torch.equal(value.to(ref.dtype).cpu(), ref)
            print(f"{label} {name:32s} {'equal' if good else 'DIFFERENT'}", file=out)
            ok &= good
            continue
        if tuple(value.shape) != tuple(ref.shape):
            print(f"{label} {name:32s} shape {tuple(value.shape)} != {tuple(ref.shape)}", file=out)
            ok = False
            continue
        atol, rtol = tolerance(golden, name, float64)
        v, r = value.double().cpu(), ref.double()
        err = (v - r).abs()
        good = bool((err <= atol + rtol * r.abs()).all())
        verdict = "ok" if good else "FAIL"
        if not float64 and name in golden.reported_only:
            verdict, good = f"reported ({golden.reported_only[name]})", True
        print(f"{label} {name:32s} max abs err {err.max().item():.3e}  (atol {atol:g}, rtol {rtol:g}) {verdict}",
              file=out)
        ok &= good
    return ok
