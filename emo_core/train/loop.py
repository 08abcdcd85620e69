"""The training loop: one EMO stage on ``accelerate`` (one CPU to many GPUs / nodes).

``train(config)`` runs one stage from a config dict (see ``load_config`` for the keys and
``configs/*.json`` for examples). The denoiser is ``EmoNet.forward``, the same code path as
inference; the noise schedule is ``sampling.ddim.Schedule``; dropped conditions are exactly
the null inputs of ``sampling.guidance.unconditional``; motion frames go through
``EmoNet.reference_features(..., motion_latents=...)`` as at inference.

Determinism: every random draw (which clip, noise, timestep, dropout) comes from a seed made
of (config seed, optimizer step, micro-batch, process), so a run resumed from a checkpoint
reproduces an uninterrupted one, and all processes of a multi-process run stay in step.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..chaining import join_start, join_timestep
from ..checkpoints import FORMAT_NAME, WEIGHTS_FILE
from ..conditioning import build_conditioning, still_speed_rows
from ..config import EmoConfig, SpeedConfig
from ..models.attention import ReferenceFeatures
from ..models.backbone import Conditioning, DeepCache
from ..models.emo import EmoNet
from ..sampling.ddim import Schedule, frame_noise, predicted_x0_and_eps, sample_ddim, training_target
from ..sampling.guidance import batch_conditions, guided, guided_on_interval, guided_speed_batched, unconditional
from ..sampling.samplers import check_sampler, sigma_interval
from ..sampling.samplers import sample as sample_sigmas
from . import data as D
from .ema import RAW_FILE, WeightAverage, check_decay
from .init import CHECKPOINT_FORMAT, InitError, initialise, read_checkpoint
from .latents import build_codec
from .stages import apply_stage, summary

DEFAULTS: dict = {
    "stage": None,
    "model": {"preset": "emo", "with_speed": None, "overrides": {}, "file": None},
    "init": {},
    "data": {"shards": [], "validation_shards": None, "size": None, "frames": None, "motion_frames": None,
             "motion_reference_prob": 0.25, "mask_expand": 1.2, "wav2vec": None, "workers": 0,
             "reference_shift": 0.0, "motion_reference_adjacent": False},
    "latents": {"kind": "vae", "path": None, "pool": 4, "scale": 1.0},
    "schedule": {},
    "optim": {"lr": 1e-5, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "max_grad_norm": 1.0,
              "warmup_steps": 0, "speed_lr_scale": 1.0, "snr_gamma": None, "motion_loss": 0.0},
    "train": {"batch_size": 4, "gradient_accumulation": 1, "max_steps": 1000, "mixed_precision": "no",
              "gradient_checkpointing": False, "seed": 42, "timestep_shift": 1.0, "join_prob": 0.0,
              "join_denoise": 0.7, "ema_decay": 0.0},
    "dropout": {"all": 0.05, "reference": 0.0, "audio": 0.05, "face": 0.0, "speed": 0.0},
    "trainable": None,
    "frozen": None,
    "output": {"dir": None, "checkpoint_every": 500, "keep_checkpoints": 3, "log_every": 10, "validate_every": 0,
               "validation_items": 2, "validation_steps": 20, "validation_cfg": 3.5, "progress": True},
}


SPEED_PARAM = re.compile(r"(^speed_encoder\.|\.speed_(attention|norm|film)\.)")


class TrainConfigError(ValueError):
    """A training config that cannot run; the message names the key."""


# --------------------------------------------------------------------------- config
def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in base:
            raise TrainConfigError(f"unknown config key {path + k!r}; known keys here: {sorted(base)}")
        if isinstance(base[k], dict) and k not in ("init", "overrides", "schedule") and isinstance(v, dict):
            out[k] = _merge(base[k], v, f"{path}{k}.")
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(source, overrides: list[str] = ()) -> dict:
    """A config dict from a JSON file or dict, merged over ``DEFAULTS``; ``overrides`` are
    ``key.sub=JSON`` strings (e.g. ``train.max_steps=10``, ``output.dir="runs/x"``)."""
    raw = json.loads(Path(source).read_text()) if isinstance(source, (str, Path)) else dict(source)
    raw.pop("comment", None)
    cfg = _merge(DEFAULTS, raw)
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # a bare string
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise TrainConfigError(f"override {key!r}: {p!r} is not a section")
            node = node[p]
        free = node is cfg["init"] or node is cfg["schedule"] or key.startswith("model.overrides.")  # checked later
        if parts[-1] not in node and not free:
            raise TrainConfigError(f"override {key!r}: unknown key {parts[-1]!r}")
        node[parts[-1]] = value
    if cfg["stage"] not in (1, 2, 3):
        raise TrainConfigError(f"stage must be 1, 2 or 3, got {cfg['stage']!r}")
    if not cfg["output"]["dir"]:
        raise TrainConfigError("output.dir is required (where checkpoints, logs and samples go)")
    if not cfg["data"]["shards"]:
        raise TrainConfigError("data.shards is required: folders written by `python -m emo_core prepare`")
    return cfg


def model_config(cfg: dict) -> EmoConfig:
    m = cfg["model"]
    if m.get("file"):
        ec = EmoConfig.load(m["file"])
    else:
        presets = {"emo": EmoConfig.emo, "hallo": EmoConfig.hallo, "tiny": EmoConfig.tiny}
        if m["preset"] not in presets:
            raise TrainConfigError(f"model.preset must be one of {sorted(presets)}, got {m['preset']!r}")
        ec = presets[m["preset"]]()
    if m.get("overrides"):
        d = ec.to_dict()
        for k, v in m["overrides"].items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                d[k] = {**d[k], **v}
            else:
                d[k] = v
        ec = EmoConfig.from_dict(d)
    if m.get("with_speed") and ec.speed is None:
        ec = replace(ec, speed=SpeedConfig(token_dim=ec.unet.cross_attention_dim))
    return ec


def schedule_for(cfg: dict, ec: EmoConfig) -> Schedule:
    s = dict(cfg["schedule"])
    if "preset" in s:
        base = Schedule.hallo() if s.pop("preset") == "hallo" else Schedule()
        s = {**{f: getattr(base, f) for f in base.__dataclass_fields__ if f != "prediction_type"}, **s}
    s.setdefault("prediction_type", ec.prediction_type)
    if s["prediction_type"] != ec.prediction_type:
        raise TrainConfigError(f"schedule.prediction_type {s['prediction_type']!r} differs from the model's "
                               f"prediction_type {ec.prediction_type!r}")
    return Schedule(**s)


# --------------------------------------------------------------------------- conditioning
def conditioning(net: EmoNet, ref_latents, motion_latents, mask, audio_windows, speed, *,
                 region_masks=None, identity_embedding=None) -> tuple[Conditioning, torch.Tensor | None]:
    """Conditions for a batch, as inference builds them; also the null identity for CFG/dropout."""
    b = ref_latents.shape[0]
    identity = net.identity_tokens(identity_embedding, b)
    null_identity = net.identity_tokens(None, b)
    cond = build_conditioning(net, identity=identity, reference=net.reference_features(ref_latents, identity, motion_latents),
                              audio_windows=audio_windows, face_mask=mask, speed=speed, region_masks=region_masks)
    return cond, null_identity


def drop_conditions(cond: Conditioning, null_identity, drop: dict[str, torch.Tensor]) -> Conditioning:
    """Per-row condition dropout; dropped rows get exactly ``guidance.unconditional``'s inputs."""
    unc = unconditional(cond, null_identity)

    def pick(mask, c, u):
        if c is None or mask is None or not bool(mask.any()):
            return c
        return torch.where(mask.view(-1, *([1] * (c.ndim - 1))).to(c.device), u, c)

    ref = cond.reference
    if ref is not None and drop.get("reference") is not None and bool(drop["reference"].any()):
        ref = ReferenceFeatures(ref.spatial, ref.motion, ~drop["reference"].to(ref_device(ref)))
    return replace(cond, reference=ref, identity=pick(drop.get("identity"), cond.identity, unc.identity),
                   audio=pick(drop.get("audio"), cond.audio, unc.audio), face=pick(drop.get("face"), cond.face, unc.face),
                   speed=pick(drop.get("speed"), cond.speed, unc.speed))


def ref_device(ref: ReferenceFeatures):
    return next(iter(ref.spatial.values())).device


def region_masks_for(mask: torch.Tensor, levels: int) -> dict:
    """Hallo-family audio-region masks approximated from the face-locator masks [b, S, S]
    (face = box, lip = its lower middle; no landmarks in the shards)."""
    from ..preprocess.masks import region_masks_per_level, regions_from_box_mask

    rows = {"full": [], "face": [], "lip": []}
    s = mask.shape[-1]
    for m in mask:
        rm = region_masks_per_level(regions_from_box_mask(m), s, levels)
        for k in rows:
            rows[k].append(rm[k])
    return {k: [torch.cat([r[i] for r in v]) for i in range(levels)] for k, v in rows.items()}


class TrainStep(nn.Module):
    """Loss of one batch; wraps the net so DDP/FSDP see every trained module in ``forward``."""

    def __init__(self, net: EmoNet, schedule: Schedule, stage: int, snr_gamma: float | None = None,
                 motion_loss: float = 0.0):
        super().__init__()
        if motion_loss and schedule.prediction_type == "epsilon":
            raise TrainConfigError("optim.motion_loss needs the clean clip from the prediction: use 'sample' (x0) or "
                                   "'v_prediction', not 'epsilon' (x0 from epsilon is undefined at zero terminal SNR)")
        self.net = net
        self.stage = stage
        self.motion_loss = float(motion_loss)
        self.prediction_type = schedule.prediction_type
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod(), persistent=False)
        self.register_buffer("loss_weights", loss_weights(schedule, snr_gamma), persistent=False)

    def forward(self, clip_latents, ref_latents, motion_latents, mask, audio, speed, noise, timesteps, drop,
                region_masks=None, join=None):
        a = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1).to(clip_latents.dtype)
        noisy = a.sqrt() * clip_latents + (1 - a).sqrt() * noise
        if join is not None and bool(join.any()):  # rows that start from the last motion frame, as later clips do
            row = join.view(-1, 1, 1, 1, 1).to(noisy.device)
            noisy = torch.where(row, a.sqrt() * motion_latents[:, -1, :, None].to(noisy) + (1 - a).sqrt() * noise, noisy)
            noise = torch.where(row, (noisy - a.sqrt() * clip_latents) / (1 - a).sqrt(), noise)
        target = training_target(clip_latents, noise, a, self.prediction_type)
        cond, null_identity = conditioning(self.net, ref_latents, motion_latents, mask, audio, speed,
                                           region_masks=region_masks)
        cond = drop_conditions(cond, null_identity, drop)
        pred = self.net(noisy, timesteps, cond)
        per_item = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        if self.motion_loss and motion_latents is not None and motion_latents.shape[1] > 0:
            x0 = predicted_x0_and_eps(pred, noisy, a, self.prediction_type)[0]
            per_item = per_item + self.motion_loss * frame_change_error(x0, clip_latents, motion_latents[:, -1])
        if self.loss_weights is None:
            return per_item.mean()
        return (per_item * self.loss_weights[timesteps]).mean()


def frame_change_error(x0: torch.Tensor, clip: torch.Tensor, last_motion: torch.Tensor) -> torch.Tensor:
    """Per item: MSE between the predicted and the true frame-to-frame changes of the clip
    [b, C, f, h, w], the first change taken from the last motion frame [b, C, h, w]. It is what
    the plain MSE weighs least and the video shows most: a clip that starts off the pose the
    motion frames end on (a visible join) or that wobbles from frame to frame."""
    last = last_motion.to(x0.dtype)[:, :, None]
    pred = torch.cat([last, x0], 2).diff(dim=2)
    true = torch.cat([last, clip.to(x0.dtype)], 2).diff(dim=2)
    return (pred.float() - true.float()).pow(2).flatten(1).mean(1)


def sample_timesteps(num_train_timesteps: int, batch: int, shift: float, generator) -> torch.Tensor:
    """Training timesteps: uniform for ``shift`` 1; above 1 moved towards the noisy end as
    SD3 shifts its schedule (u -> shift u / (1 + (shift - 1) u)), so more of the steps are where
    only the conditions and the motion frames can tell the pose and the motion."""
    if shift == 1.0:
        return torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    if not shift > 0:
        raise TrainConfigError(f"train.timestep_shift: expected a number > 0, got {shift}")
    u = torch.rand(batch, generator=generator)
    u = shift * u / (1 + (shift - 1) * u)
    return (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


def loss_weights(schedule: Schedule, snr_gamma: float | None) -> torch.Tensor | None:
    """Per-timestep weights of the MSE on the raw target for ``optim.snr_gamma`` (None: unweighted).

    Measured as an error on x0, the unweighted losses weight timestep t by SNR (epsilon), 1 + SNR
    (v) or 1 (x0): the v weighting truncated at gamma, min(1 + SNR, gamma) (min-SNR weighting,
    Hang et al. 2023, kept finite at the zero-SNR terminal step), is applied whatever the model
    predicts."""
    if snr_gamma is None:
        return None
    if snr_gamma < 1:
        raise TrainConfigError(f"optim.snr_gamma must be >= 1 (or null), got {snr_gamma}")
    snr = schedule.snr().double()
    x0_weight = (snr + 1).clamp(max=float(snr_gamma))
    native = {"epsilon": snr.clamp(min=1e-8), "v_prediction": snr + 1, "sample": torch.ones_like(snr)}
    return (x0_weight / native[schedule.prediction_type]).float()


# --------------------------------------------------------------------------- checkpoints
def _flatten_optimizer(state: dict, names: list[str]) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for idx, st in state["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{names[idx]}::{key}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{names[idx]}::{key}"] = v
    meta = {"param_groups": state["param_groups"], "scalars": scalars, "names": names}
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict, names: list[str]) -> dict:
    if meta["names"] != names:
        raise InitError("the checkpoint's optimizer was built over different parameters than this run's stage; "
                        "resume with the same stage and trainable rules")
    index = {n: i for i, n in enumerate(names)}
    state: dict = {}
    for key, v in tensors.items():
        name, field = key.split("::")
        state.setdefault(index[name], {})[field] = v
    for key, v in meta["scalars"].items():
        name, field = key.split("::")
        state.setdefault(index[name], {})[field] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, net_state: dict, ec: EmoConfig, stage: int, step: int, train_cfg: dict,
                    optimizer_state: dict | None, param_names: list[str], log_tail: list | None = None,
                    raw_state: dict | None = None) -> Path:
    """Writes a checkpoint folder atomically (a temporary folder renamed into place). ``raw_state``:
    the raw trained weights when ``net_state`` holds their average (``ema.WeightAverage``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    meta = {"format": CHECKPOINT_FORMAT, "stage": str(stage), "step": str(step), "config": json.dumps(ec.to_dict())}
    save_file({k: v.detach().cpu().contiguous() for k, v in net_state.items()}, str(tmp / WEIGHTS_FILE),
              metadata=meta)
    (tmp / "config.json").write_text(json.dumps({"format": FORMAT_NAME, "config": ec.to_dict()}, indent=2))
    if optimizer_state is not None:
        tensors, ometa = _flatten_optimizer(optimizer_state, param_names)
        save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"state": json.dumps(ometa)})
    if raw_state is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in raw_state.items()}, str(tmp / RAW_FILE))
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "stage": stage, "train_config": train_cfg},
                                                       indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def checkpoints_in(out_dir: Path) -> list[Path]:
    out = [p for p in Path(out_dir).glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
           and (p / "trainer_state.json").is_file()]
    return sorted(out, key=lambda p: int(p.name.split("-")[1]))


def _resume_key(cfg: dict) -> dict:
    """The parts of a config that must not change when resuming."""
    c = copy.deepcopy(cfg)
    for k in ("max_steps",):
        c["train"].pop(k, None)
    if not c["train"].get("ema_decay"):  # runs written before the option resume too
        c["train"].pop("ema_decay", None)
    c["output"] = {}
    c["data"].pop("workers", None)
    return c


# --------------------------------------------------------------------------- video
def write_video(path, frames: np.ndarray, fps: float, audio: np.ndarray | None = None, sr: int = 16000) -> Path:
    """H.264 (+ AAC) mp4 of frames [T, H, W, 3] through ``video_out.Mp4Writer`` (a temporary file
    renamed into place when complete)."""
    from ..video_out import Mp4Writer

    with Mp4Writer(path, fps, audio=audio, sample_rate=sr if audio is not None else None) as writer:
        writer.write(np.asarray(frames))
    return Path(path)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def generate_clip(net: EmoNet, codec, schedule: Schedule, reference: torch.Tensor, motion: torch.Tensor | None,
                  mask: torch.Tensor, audio: torch.Tensor | None, speed: torch.Tensor | None, frames: int, *,
                  steps: int = 20, cfg_scale: float = 3.5, seed: int = 0, region_masks=None, sampler: str = "ddim",
                  guidance_interval: tuple[float, float] | None = None, deep_cache: int | None = None,
                  join_denoise: float = 1.0, speed_guidance: float | None = None,
                  speed_from_t: int | None = None, noise_correlation: float = 0.0) -> torch.Tensor:
    """Samples one clip with DDIM + CFG, as inference does. reference [b, 3, S, S] and motion
    [b, n, 3, S, S] pixels in [-1, 1]; returns pixels [b, frames, 3, S, S]. ``sampler``,
    ``guidance_interval`` (sigmas), ``deep_cache``: as ``EmoPipeline.sample_clip``;
    ``join_denoise`` < 1: the clip starts from its last motion frame at that level of the
    schedule (``chaining.join_timestep``; for clips after the first). ``speed_guidance``: its own
    guidance scale on the speed, away from a head held still, as the pipeline's
    (``guidance.guided_speed``, three rows per step); None: plain CFG. ``noise_correlation``: as the
    pipeline's (``ddim.frame_noise``)."""
    dev = net.device
    b = reference.shape[0]
    ref_lat = codec.encode(reference.to(dev)).to(net.dtype)
    motion_lat = None
    if motion is not None and motion.shape[1] > 0:
        motion_lat = codec.encode(motion.flatten(0, 1).to(dev)).unflatten(0, motion.shape[:2]).to(net.dtype)
    cond, null_identity = conditioning(net, ref_lat, motion_lat, mask.to(dev), None if audio is None else audio.to(dev),
                                       None if speed is None else speed.to(dev), region_masks=region_masks)
    cache = None if deep_cache is None else DeepCache(deep_cache)
    model = lambda x, t, c: net.denoising_unet(x, t, c, cache=cache)
    if speed_guidance is not None and speed is not None:
        three = still_speed_rows(net, cond, null_identity)  # guided away from a head held still, as the pipeline
        at = None if speed_from_t is None else (lambda t: int(torch.as_tensor(t).reshape(-1)[0]) >= speed_from_t)
        fn = guided_speed_batched(model, three, cfg_scale, speed_guidance, at) if guidance_interval is None else \
            guided_on_interval(model, three, cfg_scale, sigma_interval(schedule, *guidance_interval), speed_guidance)
    elif guidance_interval is not None and cfg_scale > 1.0:
        both = batch_conditions(unconditional(cond, null_identity), cond)
        fn = guided_on_interval(model, both, cfg_scale, sigma_interval(schedule, *guidance_interval))
    else:
        fn = guided(model, cond, null_identity, cfg_scale)
    g = torch.Generator().manual_seed(seed)
    x = frame_noise((b, ref_lat.shape[1], frames, *ref_lat.shape[-2:]), noise_correlation, g).to(dev, net.dtype)
    start_t = join_timestep(schedule, steps, join_denoise) if motion_lat is not None else None
    if start_t is not None:
        x = join_start(x, motion_lat[:, -1], schedule, start_t)
    x = sample_ddim(fn, x, schedule, steps, start_t=start_t) if check_sampler(sampler) == "ddim" else sample_sigmas(
        sampler, fn, x, schedule, steps, start_t=start_t)
    out = codec.decode(x.permute(0, 2, 1, 3, 4).flatten(0, 1).float())
    return out.unflatten(0, (b, frames))


# --------------------------------------------------------------------------- training
@dataclass
class RunResult:
    output_dir: Path
    final: Path
    steps: int
    losses: list


def _seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (2 ** 63)
    return h


def build_net(cfg: dict) -> tuple[EmoNet, EmoConfig, list[str]]:
    """The model of a config, initialised per ``init`` (before resuming)."""
    ec = model_config(cfg)
    torch.manual_seed(cfg["train"]["seed"])
    net = EmoNet(ec)
    report = initialise(net, cfg["init"], cfg["stage"])
    return net, ec, report


def _dataset(cfg: dict, ec: EmoConfig, shards, codec_channels: int) -> D.ClipDataset:
    d, stage = cfg["data"], cfg["stage"]
    frames = d["frames"] or (1 if stage == 1 else ec.clip_frames)
    motion = d["motion_frames"] if d["motion_frames"] is not None else (0 if stage == 1 else ec.motion_frames)
    if frames + motion > ec.temporal.position_encoding_max_len:
        raise TrainConfigError(f"data.frames + data.motion_frames = {frames + motion} exceeds the temporal position "
                               f"encoding length {ec.temporal.position_encoding_max_len}")
    if codec_channels != ec.unet.in_channels:
        raise TrainConfigError(f"the latent codec gives {codec_channels} channels but model unet.in_channels is "
                               f"{ec.unet.in_channels}")
    encoder = None
    if d["wav2vec"]:
        from ..preprocess.audio_features import AudioFeatureExtractor, load_wav2vec

        ext = AudioFeatureExtractor(load_wav2vec(d["wav2vec"]), fps=25, m=ec.audio.context)
        encoder = lambda wave, n: ext.encode(wave, n)
    ds = D.ClipDataset(shards, frames=frames, motion=motion, size=d["size"], audio_context=ec.audio.context,
                       audio_encoder=encoder, mask_expand=d["mask_expand"],
                       motion_reference_prob=d["motion_reference_prob"], with_audio=stage >= 2,
                       reference_shift=float(d.get("reference_shift", 0.0)),
                       motion_reference_adjacent=bool(d.get("motion_reference_adjacent", False)))
    if ds.size % ec.size_multiple:
        raise TrainConfigError(f"frame size {ds.size} must be a multiple of {ec.size_multiple} for this model "
                               "(set data.size)")
    if stage >= 2:
        feats = ds.audio_of(0)
        want = (ec.audio.feature_blocks, ec.audio.feature_dim)
        if tuple(feats.shape[1:]) != want:
            raise TrainConfigError(f"the shards' audio features are [T, {feats.shape[1]}, {feats.shape[2]}] but the "
                                   f"model's audio projection expects [T, {want[0]}, {want[1]}] (blocks, channels)")
    return ds


def train(cfg: dict, *, resume: str = "auto", accelerator=None, log: Callable[[str], None] = print) -> RunResult:
    """Runs one stage. ``resume``: "auto" (continue from the newest checkpoint in output.dir
    when there is one), "never" (refuse a non-empty output.dir), or a checkpoint folder."""
    from accelerate import Accelerator

    t, o, stage = cfg["train"], cfg["output"], cfg["stage"]
    acc = accelerator or Accelerator(mixed_precision=t["mixed_precision"])
    check_distributed_type(acc)
    main = acc.is_main_process
    ema_decay = check_decay(t["ema_decay"])
    out = Path(o["dir"])
    existing = checkpoints_in(out) if out.is_dir() else []
    resume_from = None
    if resume == "auto":
        resume_from = existing[-1] if existing else None
    elif resume == "never":
        if existing:
            raise TrainConfigError(f"{out} already holds checkpoints ({existing[-1].name}); resume, or choose another "
                                   "output.dir (nothing was overwritten)")
    else:
        resume_from = Path(resume)
        if not (resume_from / "trainer_state.json").is_file():
            raise InitError(f"cannot resume from {resume_from}: no trainer_state.json there")
    start_step = 0
    if resume_from is not None:
        st = json.loads((resume_from / "trainer_state.json").read_text())
        if _resume_key(st["train_config"]) != _resume_key(cfg):
            raise TrainConfigError(f"{resume_from} was written by a different config (only train.max_steps, "
                                   "output.* and data.workers may change when resuming)")
        start_step = int(st["step"])

    net, ec, report = build_net(cfg)
    schedule = schedule_for(cfg, ec)
    names = apply_stage(net, stage, cfg["trainable"], cfg["frozen"])
    if resume_from is not None:
        state, meta, _ = read_checkpoint(resume_from)
        net.load_state_dict(state, strict=True)
        report.append(f"resumed from {resume_from} at step {start_step}")
    if t["gradient_checkpointing"]:
        net.denoising_unet.set_gradient_checkpointing(True)
        net.reference_unet.enable_gradient_checkpointing()
    codec = build_codec(cfg["latents"]).to(acc.device)
    shards = D.list_shards(cfg["data"]["shards"])
    ds = _dataset(cfg, ec, shards, codec.channels)
    val_ds = ds
    if cfg["data"]["validation_shards"]:
        val_ds = _dataset(cfg, ec, D.list_shards(cfg["data"]["validation_shards"]), codec.channels)

    step_module = TrainStep(net, schedule, stage, cfg["optim"]["snr_gamma"], cfg["optim"]["motion_loss"])
    params = dict(net.named_parameters())
    o_cfg = cfg["optim"]
    # optim.speed_lr_scale lets the speed layers (speed encoder, temporal speed attention) learn at a
    # multiple of lr (1 by default; at 20 on the synthetic benchmark their outputs grew large without
    # telling the speeds apart, and the measured head speed did not follow the asked one)
    speed_names = [n for n in names if SPEED_PARAM.search(n)]
    scale = float(o_cfg.get("speed_lr_scale", 1.0))
    groups = [names] if scale == 1.0 or not speed_names else [[n for n in names if n not in set(speed_names)], speed_names]
    opt_names = [n for g in groups for n in g]  # the optimizer's parameter order (its state's indices)
    optimizer = torch.optim.AdamW([{"params": [params[n] for n in g], "lr": o_cfg["lr"] * (scale if i else 1.0)}
                                   for i, g in enumerate(groups) if g], lr=o_cfg["lr"], betas=tuple(o_cfg["betas"]),
                                  eps=o_cfg["eps"], weight_decay=o_cfg["weight_decay"])
    warm = max(0, int(o_cfg["warmup_steps"]))
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    step_module, optimizer = acc.prepare(step_module, optimizer)
    if resume_from is not None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        opt_file = resume_from / "optimizer.safetensors"
        with safe_open(str(opt_file), framework="pt") as fh:
            ometa = json.loads(fh.metadata()["state"])
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(opt_file)), ometa, opt_names))
        sched.last_epoch = start_step - 1
        sched.step()
    ema = WeightAverage({n: params[n] for n in names}, ema_decay) if ema_decay else None
    if ema is not None and resume_from is not None:
        ema.resume(resume_from)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for line in report:
            log(line)
        log(f"stage {stage}: training {len(names)} tensors; {summary(net)}")
        log(f"{acc.num_processes} process(es), device {acc.device}, mixed precision {acc.mixed_precision}")

    accum = int(t["gradient_accumulation"])
    sampler = D.StepBatches(t["seed"], t["batch_size"], acc.process_index, acc.num_processes, accum,
                            start_step, int(t["max_steps"]))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=D.collate,
                                         num_workers=int(cfg["data"]["workers"]),
                                         persistent_workers=False)
    log_path = out / "log.jsonl"
    if main and log_path.exists():  # drop lines past the resumed step
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start_step]
        log_path.write_text("".join(k + "\n" for k in kept))
    bar = None
    if main and o["progress"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(t["max_steps"]), initial=start_step, desc=f"stage {stage}", dynamic_ncols=True)
    dropout = cfg["dropout"]
    join_t = None
    if float(t["join_prob"]) > 0:
        join_t = join_timestep(schedule, schedule.num_train_timesteps, float(t["join_denoise"]))
    losses: list = []
    step = start_step
    micro = 0
    acc_loss = torch.zeros((), device=acc.device)
    t0 = time.time()
    step_module.train()
    for batch in loader:
        g = torch.Generator().manual_seed(_seed(t["seed"], step, micro, acc.process_index))
        b = batch["pixels"].shape[0]
        n_motion = ds.motion
        with torch.no_grad():
            pix = batch["pixels"].to(acc.device)
            lat = codec.encode(pix.flatten(0, 1)).unflatten(0, pix.shape[:2])  # [b, k, C, h, w]
            ref_lat = codec.encode(batch["reference"].to(acc.device))
        clip = lat[:, n_motion:].permute(0, 2, 1, 3, 4).contiguous()
        motion_lat = lat[:, :n_motion] if n_motion else None
        noise = torch.randn(clip.shape, generator=g).to(acc.device)
        timesteps = sample_timesteps(schedule.num_train_timesteps, b, float(t["timestep_shift"]), g).to(acc.device)
        u = torch.rand(6, b, generator=g)
        join = None
        if join_t is not None and n_motion:  # the join's first step, from the last true motion frame
            join = (u[4] < float(t["join_prob"])) & ~batch["motion_is_reference"].bool()
            timesteps = torch.where(join.to(timesteps.device), torch.full_like(timesteps, join_t), timesteps)
            join = join.to(acc.device)
        drop_all = u[0] < dropout["all"]
        drop = {"reference": (drop_all | (u[1] < dropout["reference"])).to(acc.device),
                "audio": (drop_all | (u[2] < dropout["audio"])).to(acc.device),
                "face": (drop_all | (u[3] < dropout["face"])).to(acc.device),
                "speed": (drop_all | (u[5] < dropout["speed"])).to(acc.device),
                "identity": drop_all.to(acc.device)}
        audio = batch["audio"].to(acc.device) if stage >= 2 else None
        speed = batch["speed"].to(acc.device) if stage == 3 else None
        region = region_masks_for(batch["mask"], len(ec.unet.block_out_channels)) if ec.audio.region_attention else None
        if region is not None:
            region = {k: [m.to(acc.device) for m in v] for k, v in region.items()}
        last = micro == accum - 1
        ctx = contextlib.nullcontext() if last or acc.num_processes == 1 else acc.no_sync(step_module)
        with ctx:
            loss = step_module(clip, ref_lat, motion_lat, batch["mask"].to(acc.device), audio, speed, noise,
                               timesteps, drop, region, join)
            acc.backward(loss / accum)
        acc_loss += loss.detach() / accum
        micro += 1
        if not last:
            continue
        if o_cfg["max_grad_norm"]:
            acc.clip_grad_norm_([p for p in step_module.parameters() if p.requires_grad], o_cfg["max_grad_norm"])
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        step += 1
        micro = 0
        mean_loss = float(acc.reduce(acc_loss, "mean"))
        acc_loss.zero_()
        losses.append(mean_loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
        if main and (step % int(o["log_every"]) == 0 or step == t["max_steps"]):
            recent = losses[-int(o["log_every"]):]
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"step": step, "loss": float(np.mean(recent)), "lr": sched.get_last_lr()[0],
                                     "seconds": round(time.time() - t0, 2)}) + "\n")
        if o["validate_every"] and step % int(o["validate_every"]) == 0:
            if main:
                validate(acc.unwrap_model(step_module).net, codec, schedule, val_ds, cfg, step, out / "samples")
            acc.wait_for_everyone()
        if step % int(o["checkpoint_every"]) == 0 or step == t["max_steps"]:
            _save(acc, step_module, optimizer, ec, cfg, step, opt_names, out, keep=int(o["keep_checkpoints"]), ema=ema)
    if bar is not None:
        bar.close()
    final = out / f"checkpoint-{step:06d}"
    acc.wait_for_everyone()
    return RunResult(out, final, step, losses)


def check_distributed_type(acc) -> None:
    """Refuses sharded training before any step: our checkpoints hold the whole optimizer state, which
    under FSDP / DeepSpeed ZeRO exists only in pieces across the processes."""
    from accelerate.utils import DistributedType

    kind = acc.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise TrainConfigError(f"accelerate is configured for {kind.name}, which shards the optimizer state; this trainer "
                               "saves it whole, so resumed runs would be wrong. Use data parallel instead "
                               "(accelerate launch --multi_gpu ...), with train.gradient_checkpointing and "
                               "train.mixed_precision to fit memory")


def _save(acc, step_module, optimizer, ec, cfg, step, names, out: Path, keep: int,
          ema: WeightAverage | None = None) -> None:
    state = acc.get_state_dict(step_module)
    net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    if acc.is_main_process:
        raw = None
        if ema is not None:
            raw, net_state = ema.raw_state(), ema.averaged_state(net_state)
        save_checkpoint(out / f"checkpoint-{step:06d}", net_state, ec, cfg["stage"], step, cfg,
                        optimizer.state_dict(), names, raw_state=raw)
        if keep > 0:
            for old in checkpoints_in(out)[:-keep]:
                shutil.rmtree(old)
    acc.wait_for_everyone()


@torch.no_grad()
def validate(net: EmoNet, codec, schedule: Schedule, ds: D.ClipDataset, cfg: dict, step: int, folder: Path) -> Path:
    """Writes ``step-N.mp4``: generated clips beside the ground truth, one item after another."""
    o = cfg["output"]
    folder.mkdir(parents=True, exist_ok=True)
    stage = cfg["stage"]
    rows = []
    for i in range(int(o["validation_items"])):
        item = D.collate([ds[_seed(cfg["train"]["seed"], 7919, i)]])
        n = ds.motion
        region = (region_masks_for(item["mask"], len(net.cfg.unet.block_out_channels))
                  if net.cfg.audio.region_attention else None)
        gen = generate_clip(net, codec, schedule, item["reference"], item["pixels"][:, :n] if n else None,
                            item["mask"], item.get("audio") if stage >= 2 else None,
                            item["speed"] if stage == 3 else None, ds.frames, steps=int(o["validation_steps"]),
                            cfg_scale=float(o["validation_cfg"]), seed=i, region_masks=region)
        truth = item["pixels"][:, n:]
        ref = item["reference"][:, None].expand_as(truth)
        rows.append(to_uint8(torch.cat([ref, truth, gen.cpu()], dim=-1)[0]))
    path = folder / f"step-{step:06d}.mp4"
    write_video(path, np.concatenate(rows), fps=25)
    return path
