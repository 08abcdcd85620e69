"""Initialising a training stage: SD1.5 UNet, AnimateDiff motion module, a previous stage's
checkpoint, or Hallo's ``net.pth``.

Every load is strict in the sense that matters: each source tensor must land on a target
tensor of the same shape, and target tensors left uninitialised must be ones the stage may
start fresh (listed in the report). Anything else raises ``InitError`` naming the keys.
Reading files, SD1.5 and AnimateDiff loads are ``emo_core.checkpoints``' (``load_state_dict``,
``load_sd15_unet``/``init_from_sd15``, ``init_motion_modules``); ``load_into`` stays here because
stages may leave tensors fresh by regex (speed layers inside the temporal modules).

Our checkpoint format: the model folder of ``emo_core.checkpoints`` (``emo.safetensors`` with
every ``EmoNet`` tensor under its module prefix, ``config.json`` = {"format": "emo-portrait",
"config": EmoConfig}), so ``checkpoints.load_model(folder)`` loads a training checkpoint for
inference; the safetensors metadata adds ``format=emo-checkpoint-1``, ``stage``, ``step``
and the config. For resuming: ``optimizer.safetensors`` and ``trainer_state.json``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..checkpoints import WEIGHTS_FILE, CheckpointError, init_from_sd15, init_motion_modules, load_sd15_unet, load_state_dict
from ..config import EmoConfig

CHECKPOINT_FORMAT = "emo-checkpoint-1"
SPEED_KEYS = r"(\.speed_(attention|norm|film)\.|^speed_encoder\.)"


class InitError(ValueError):
    """A checkpoint that is missing or does not fit the model/stage; the message says why."""


def load_state_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and (safetensors) metadata of a ``.safetensors`` / ``.pth`` / ``.ckpt`` / ``.bin`` file
    (read by ``checkpoints.load_state_dict``: safetensors or weights-only ``torch.load``)."""
    path = Path(path)
    if not path.is_file():
        raise InitError(f"checkpoint {path} not found")
    try:
        state = load_state_dict(path)
    except CheckpointError as exc:
        raise InitError(f"{path}: not a readable checkpoint ({exc})") from exc
    meta: dict[str, str] = {}
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    return state, meta


def load_into(module: nn.Module, state: dict[str, torch.Tensor], *, what: str,
              fresh_ok: list[str] = (), ignore_source: list[str] = ()) -> list[str]:
    """Copies ``state`` into ``module``. Raises when a source key has no target or a
    different shape, or when a target key is missing from ``state`` and matches none of the
    ``fresh_ok`` regexes. Returns the target keys left fresh."""
    target = module.state_dict()
    src = {k: v for k, v in state.items() if not any(re.search(r, k) for r in ignore_source)}
    unknown = sorted(set(src) - set(target))
    shapes = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                    for k, v in src.items() if k in target and v.shape != target[k].shape)
    missing = sorted(k for k in set(target) - set(src) if not any(re.search(r, k) for r in fresh_ok))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} checkpoint keys the model does not have, e.g. {unknown[:5]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches, e.g. {shapes[:5]}")
    if missing:
        problems.append(f"{len(missing)} model keys the checkpoint lacks, e.g. {missing[:5]}")
    if problems:
        raise InitError(f"{what} does not fit this model: " + "; ".join(problems)
                        + ". Check that the model config matches the checkpoint (same preset/widths)")
    with torch.no_grad():
        for k, v in src.items():
            target[k].copy_(v.to(target[k].dtype))
    module.load_state_dict(target, strict=True)
    return sorted(set(target) - set(src))


def init_sd15(net: nn.Module, path) -> list[str]:
    """SD1.5 UNet (diffusers folder or single file) -> ReferenceNet (without the output head)
    and the backbone's spatial layers, by ``checkpoints.init_from_sd15``."""
    try:
        state = load_sd15_unet(path)
        fresh = init_from_sd15(net, state)
    except (CheckpointError, FileNotFoundError) as exc:
        raise InitError(f"SD1.5 UNet {path} does not fit this model (shape mismatches, or keys the model does not "
                        f"have): {exc}") from exc
    spatial = [k for k in fresh if not re.search(r"\.(audio_modules|motion_modules)\.", k)]
    if spatial:
        raise InitError(f"SD1.5 UNet {path}: the checkpoint lacks {len(spatial)} backbone spatial tensors, "
                        f"e.g. {spatial[:5]}")
    return [f"SD1.5 UNet {path}: ReferenceNet and backbone spatial layers ({len(state)} tensors); "
            f"{len(fresh)} backbone tensors (audio/temporal) left fresh"]


def init_animatediff(net: nn.Module, path) -> list[str]:
    """AnimateDiff motion module (``mm_sd_v15_v2.ckpt``) -> the backbone's temporal modules."""
    state, _ = load_state_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(".motion_modules." in k for k in state):
        raise InitError(f"{path}: no motion_modules keys; not an AnimateDiff motion module")
    bb = net.denoising_unet
    target = {k for k in bb.state_dict() if ".motion_modules." in k}
    sub = {k: v for k, v in state.items()}
    unknown = sorted(set(sub) - target)
    if unknown:
        raise InitError(f"{path}: {len(unknown)} AnimateDiff keys have no temporal module in this model, e.g. "
                        f"{unknown[:5]} (the model's temporal layout — resolutions, mid block, blocks — differs)")
    speed = [k for k in target - set(sub) if re.search(SPEED_KEYS, k)]
    try:
        init_motion_modules(net, sub)
    except CheckpointError as exc:
        raise InitError(f"{path}: the motion module does not fit this model's temporal layers: {exc}") from exc
    return [f"AnimateDiff {path}: {len(sub)} temporal tensors; {len(speed)} speed-layer tensors left fresh"]


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict[str, str], Path]:
    """Our checkpoint (folder or its ``emo.safetensors``) -> tensors, metadata, folder."""
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise InitError(f"checkpoint {path} not found (expected a folder with {WEIGHTS_FILE})")
    state, meta = load_state_file(file)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InitError(f"{file}: not an emo_core training checkpoint (metadata format {meta.get('format')!r}); "
                        "use init.sd15 / init.animatediff / init.hallo for other weights")
    return state, meta, file.parent


def init_checkpoint(net: nn.Module, path, stage: int) -> list[str]:
    """A previous stage (or an earlier run) of ours."""
    state, meta, _ = read_checkpoint(path)
    from_stage = int(meta.get("stage", 0))
    if stage == 3 and from_stage < 2:
        raise InitError(f"{path} was written by stage {from_stage}; stage 3 trains only the temporal and speed "
                        "layers, so it must start from a stage-2 checkpoint (or Hallo's weights) whose temporal "
                        "and audio layers are trained")
    if stage == 2 and from_stage < 1:
        raise InitError(f"{path}: unknown stage {meta.get('stage')!r}; stage 2 starts from a stage-1 checkpoint")
    ck_cfg = EmoConfig.from_dict(json.loads(meta["config"])) if "config" in meta else None
    fresh_ok = []
    if ck_cfg is not None and ck_cfg.speed is None and net.cfg.speed is not None:
        fresh_ok.append(SPEED_KEYS)  # stage 3 adds speed layers to a model trained without them
    elif ck_cfg is not None:
        a, b = ck_cfg.to_dict(), net.cfg.to_dict()
        diff = sorted(k for k in a if a[k] != b.get(k) and k not in ("clip_frames", "motion_frames"))
        if diff == ["speed"] and a["speed"] is not None and b["speed"] is not None \
                and {**a["speed"], "film": None} == {**b["speed"], "film": None} and b["speed"]["film"]:
            fresh_ok.append(r"\.speed_film\.")  # FiLM added to trained speed layers: starts as identity
        elif diff:
            raise InitError(f"{path}: its model config differs from this run's in {diff}; start from a "
                            "checkpoint of the same architecture")
    fresh = load_into(net, state, what=f"checkpoint {path}", fresh_ok=fresh_ok)
    return [f"checkpoint {path} (stage {from_stage}, step {meta.get('step', '?')})"
            + (f"; {len(fresh)} speed-layer tensors left fresh" if fresh else "")]


def init_hallo(net: nn.Module, path) -> list[str]:
    """Hallo's ``net.pth`` (reference_unet / denoising_unet / face_locator / imageproj / audioproj)."""
    state, _ = load_state_file(path)
    if not any(k.startswith("denoising_unet.") for k in state):
        raise InitError(f"{path}: no 'denoising_unet.' keys; not Hallo's net.pth")
    if net.cfg.family != "hallo":
        raise InitError(f"{path}: Hallo weights need a Hallo-family model config (model.preset 'hallo'), "
                        f"this run's config has family {net.cfg.family!r}")
    fresh = load_into(net, state, what=f"Hallo {path}", fresh_ok=[SPEED_KEYS])
    return [f"Hallo {path}: {len(state)} tensors" + (f"; {len(fresh)} speed-layer tensors left fresh" if fresh else "")]


def initialise(net: nn.Module, init: dict, stage: int) -> list[str]:
    """Applies ``init`` (keys sd15, animatediff, hallo, checkpoint; later ones override earlier
    ones) and returns a report. Missing files fail before anything is loaded."""
    known = {"sd15", "animatediff", "hallo", "checkpoint"}
    unknown = set(init) - known
    if unknown:
        raise InitError(f"unknown init keys {sorted(unknown)}; known: {sorted(known)}")
    for key in ("sd15", "animatediff", "hallo", "checkpoint"):
        p = init.get(key)
        if p and not Path(p).exists():
            raise InitError(f"init.{key}: {p} not found")
    report = []
    if init.get("sd15"):
        report += init_sd15(net, init["sd15"])
    if init.get("hallo"):
        report += init_hallo(net, init["hallo"])
    if init.get("animatediff"):
        report += init_animatediff(net, init["animatediff"])
    if init.get("checkpoint"):
        report += init_checkpoint(net, init["checkpoint"], stage)
    if not report:
        report.append(init_shared_random(net))
    return report


def init_shared_random(net: nn.Module) -> str:
    """Random initialisation the way the real recipe starts: ReferenceNet begins as a copy of
    the backbone's spatial layers (both come from one SD1.5 UNet), so the reference and
    motion-frame features that ReferenceNet hands the backbone start in the backbone's own
    feature basis instead of an unrelated one."""
    backbone = net.denoising_unet.state_dict()
    net.reference_unet.load_state_dict({k: backbone[k] for k in net.reference_unet.state_dict()})  # copies values
    return "random initialisation (no init given); ReferenceNet starts as a copy of the backbone's spatial layers"
