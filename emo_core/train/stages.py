"""Which parameters each EMO training stage trains.

Rules are regular expressions over ``EmoNet.named_parameters()`` names:

- stage 1 (images): ReferenceNet, the backbone's spatial layers (everything but
  ``audio_modules`` and ``motion_modules``), the face locator and, when present, the
  identity projection.
- stage 2 (video): stage 1 plus the temporal modules (without their speed layers), the
  backbone's audio layers and the audio projection.
- stage 3 (speed): only the temporal modules (their speed layers included) and the speed
  encoder; the audio layers stay frozen.

Parameters the loss never reaches are frozen in every stage so DDP needs no
``find_unused_parameters``: ReferenceNet's last transformer block after its ``norm1``
(its features are the norm1 output; nothing reads the rest), temporal modules of blocks that
do not run them (Hallo layout), and the speed layers before stage 3. A config may replace
the rules with its own ``trainable`` / ``frozen`` lists.
"""
from __future__ import annotations

import re

from torch import nn

SPATIAL = r"^denoising_unet\.(?!.*\.(audio_modules|motion_modules)\.)"
STAGE_RULES: dict[int, dict[str, list[str]]] = {
    1: {"trainable": [r"^reference_unet\.", SPATIAL, r"^face_locator\.", r"^imageproj\."], "frozen": []},
    2: {"trainable": [r"^reference_unet\.", SPATIAL, r"^face_locator\.", r"^imageproj\.",
                      r"^denoising_unet\..*\.motion_modules\.", r"^denoising_unet\..*\.audio_modules\.", r"^audioproj\."],
        "frozen": [r"\.speed_(attention|norm|film)\."]},
    3: {"trainable": [r"^denoising_unet\..*\.motion_modules\.", r"^speed_encoder\."], "frozen": []},
}


class StageError(ValueError):
    """A stage that cannot run with this model."""


def never_used(net: nn.Module) -> list[str]:
    """Regexes of parameters no stage's loss reaches, for this network's layout."""
    out = []
    ref = net.reference_unet
    last = len(ref.up_blocks) - 1
    ups = ref.up_blocks[last]
    if getattr(ups, "attentions", None):
        a = len(ups.attentions) - 1
        p = rf"^reference_unet\.up_blocks\.{last}\.attentions\.{a}\."
        out += [p + r"proj_out\.", p + r"transformer_blocks\.0\.(?!norm1\.)"]
    for name, block in net.denoising_unet.named_modules():
        if hasattr(block, "run_temporal") and not block.run_temporal and len(block.motion_modules):
            out.append(rf"^denoising_unet\.{re.escape(name)}\.motion_modules\.")
    return out


def stage_parameters(net: nn.Module, stage: int, trainable: list[str] | None = None,
                     frozen: list[str] | None = None) -> list[str]:
    """Names of the parameters ``stage`` trains (in ``named_parameters`` order)."""
    if stage not in STAGE_RULES:
        raise StageError(f"stage must be 1, 2 or 3, got {stage!r}")
    if stage == 3 and getattr(net, "speed_encoder", None) is None:
        raise StageError("stage 3 trains the speed layers, but this model config has none (speed: null); "
                         "use a config with speed layers, e.g. model.preset 'hallo' with model.with_speed true")
    rules = STAGE_RULES[stage]
    inc = [re.compile(r) for r in (trainable if trainable is not None else rules["trainable"])]
    exc = [re.compile(r) for r in (frozen if frozen is not None else rules["frozen"]) + never_used(net)]
    return [n for n, _ in net.named_parameters()
            if any(r.search(n) for r in inc) and not any(r.search(n) for r in exc)]


def apply_stage(net: nn.Module, stage: int, trainable=None, frozen=None) -> list[str]:
    """Sets ``requires_grad`` for ``stage`` and returns the trained names."""
    names = set(stage_parameters(net, stage, trainable, frozen))
    if not names:
        raise StageError(f"stage {stage}: the trainable rules match no parameter of this model")
    for n, p in net.named_parameters():
        p.requires_grad_(n in names)
    return [n for n, _ in net.named_parameters() if n in names]


def summary(net: nn.Module) -> str:
    """One line per top-level part: trained / total parameters."""
    parts: dict[str, list[int]] = {}
    for n, p in net.named_parameters():
        key = n.split(".")[0]
        if key == "denoising_unet":
            key += "." + ("motion" if ".motion_modules." in n else "audio" if ".audio_modules." in n else "spatial")
        t = parts.setdefault(key, [0, 0])
        t[1] += p.numel()
        t[0] += p.numel() if p.requires_grad else 0
    return ", ".join(f"{k} {a:,}/{b:,}" for k, (a, b) in parts.items())
