"""Parity with Hallo's and EchoMimic's own code: ``python -m emo_core.parity GOLDEN_DIR``.

GOLDEN_DIR is one of the golden folders (outputs of those projects' code on tiny random
weights); its kind is detected from the files:

- ``net.safetensors`` + ``cases.json``: Hallo's modules, one guided step, the first clip
  (``parity.hallo``);
- ``chain.json``: 3 chained clips of Hallo's whole inference loop (``parity.hallo_chain``;
  weights from the sibling ``hallo`` folder);
- ``denoising_unet.safetensors``: EchoMimic (``parity.echomimic``).

Every runner drives the code users run (``EmoPipeline``, ``conditioning``, EchoMimic's
``sample_video``), not copies of it. One line per output tensor gives its max abs error;
the last line says PASS or FAIL.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .golden import Golden, compare, tolerance
from .hallo import HalloRunner

__all__ = ["Golden", "HalloRunner", "compare", "detect_family", "run_parity", "tolerance"]


def detect_family(folder: Path) -> str:
    folder = Path(folder)
    if (folder / "chain.json").is_file():
        return "hallo_chain"
    if (folder / "net.safetensors").is_file():
        return "hallo"
    if (folder / "denoising_unet.safetensors").is_file():
        return "echomimic"
    raise FileNotFoundError(f"{folder}: no net.safetensors (Hallo), chain.json (Hallo chain) or "
                            "denoising_unet.safetensors (EchoMimic): not a golden folder")


def run_parity(folder: str | Path, out=sys.stdout, **options) -> bool:
    folder = Path(folder)
    family = detect_family(folder)
    if family == "echomimic":
        from .echomimic import run_echomimic_parity

        return run_echomimic_parity(folder, out)
    if family == "hallo_chain":
        from .hallo_chain import run_chain_parity

        return run_chain_parity(folder, out, **options)
    from .hallo import run_hallo

    return run_hallo(Golden.load(folder), out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("golden_dir", help="a golden folder laid out like shared/golden/hallo, hallo_chain or echomimic")
    parser.add_argument("--weights", default=None,
                        help="hallo_chain only: the folder with the weights (default: the sibling 'hallo' folder)")


def main(args) -> int:
    import torch

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    options = {"weights": args.weights} if args.weights else {}
    ok = run_parity(args.golden_dir, **options)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1
