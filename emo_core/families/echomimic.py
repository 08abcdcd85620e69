"""EchoMimic v1 (antgroup/echomimic, Apache-2.0) model files -> an ``EmoNet`` of the EchoMimic family.

EchoMimic releases four files (plus ``_acc`` variants of two of them for its accelerated,
6-step model), ``.pth`` state dicts or safetensors copies of them:

| file | holds | goes into |
|---|---|---|
| ``denoising_unet[_acc].pth`` | the 3D UNet, motion modules usually included | ``denoising_unet`` (Backbone) |
| ``motion_module[_acc].pth``  | only the ``*.motion_modules.*`` keys         | ``denoising_unet`` (merged first) |
| ``reference_unet.pth``       | the 2D UNet without output head or cross-attention | ``reference_unet`` (ReferenceNet) |
| ``face_locator.pth``         | the 1-channel face locator                   | ``face_locator`` |

EchoMimic builds its denoising UNet from the motion-module file, then loads
``denoising_unet.pth`` over it without a key check; here the merged dict (motion modules
first, the denoising UNet's own values over them) must match the backbone exactly, and
every other file is checked strictly too. Key names are the ones our modules already use
(diffusers + AnimateDiff), so nothing is renamed: a mismatch is an error naming the keys.

The audio encoder is whisper-tiny (``audio_processor/whisper_tiny.pt``), see
``emo_core.models.whisper``. The VAE is SD's ``sd-vae-ft-mse`` as for Hallo.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..checkpoints import CheckpointError, check_parts, load_state_dict, load_strict, read_header
from ..config import AudioConfig, ConfigError, EmoConfig, TemporalConfig, UNetConfig

HF_REPO = "BadToBest/EchoMimic"
WHISPER_FILE = "audio_processor/whisper_tiny.pt"
# OpenAI publishes tiny.pt under its sha256; EchoMimic ships the same file as whisper_tiny.pt.
WHISPER_URL = ("https://openaipublic.azureedge.net/main/whisper/models/"
               "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9/tiny.pt")
PARTS = ("denoising_unet", "motion_module", "reference_unet", "face_locator")
ACCELERATED_PARTS = ("denoising_unet", "motion_module")  # the _acc files; the others are shared


@dataclass(frozen=True)
class EchoMimicFiles:
    denoising_unet: Path
    motion_module: Path | None
    reference_unet: Path
    face_locator: Path
    accelerated: bool


def file_names(accelerated: bool) -> dict[str, str]:
    """Part -> file stem in the released folder (``denoising_unet_acc`` etc. when accelerated)."""
    return {p: (f"{p}_acc" if accelerated and p in ACCELERATED_PARTS else p) for p in PARTS}


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def has_accelerated(folder: str | Path) -> bool:
    return _find(Path(folder), "denoising_unet_acc") is not None


def find_files(folder: str | Path, accelerated: bool | None = None) -> EchoMimicFiles:
    """The four files in ``folder``. ``accelerated=None`` picks the plain model when both exist."""
    folder = Path(folder)
    if accelerated is None:
        accelerated = _find(folder, "denoising_unet") is None and has_accelerated(folder)
    names = file_names(accelerated)
    found = {part: _find(folder, stem) for part, stem in names.items()}
    missing = [f"{names[p]}.pth (or .safetensors)" for p in ("denoising_unet", "reference_unet", "face_locator")
               if found[p] is None]
    if missing:
        raise FileNotFoundError(f"{folder}: EchoMimic{' accelerated' if accelerated else ''} files missing: "
                                f"{', '.join(missing)} (download them from huggingface.co/{HF_REPO})")
    return EchoMimicFiles(found["denoising_unet"], found["motion_module"], found["reference_unet"],
                          found["face_locator"], accelerated)


def config_from_folder(folder: str | Path, *, clip_frames: int = 12, context_overlap: int = 3) -> EmoConfig:
    """EchoMimic's config from a folder with ``unet_config.json`` (the base SD UNet config),
    ``unet_additional_kwargs.json`` (``unet_additional_kwargs`` of inference_v2.yaml) and
    optionally ``face_locator.json``; without the JSON files, the released model's config."""
    folder = Path(folder)
    cfg = replace(EmoConfig.echomimic(), clip_frames=clip_frames, context_overlap=context_overlap)
    if not (folder / "unet_config.json").is_file():
        return cfg
    unet = UNetConfig.from_diffusers(json.loads((folder / "unet_config.json").read_text()))
    extra_path = folder / "unet_additional_kwargs.json"
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
    if extra.get("unet_use_temporal_attention") or extra.get("unet_use_cross_frame_attention"):
        raise ConfigError("EchoMimic models with temporal or cross-frame attention inside the transformer "
                          "blocks are not supported (inference_v2.yaml turns both off)")
    temporal = TemporalConfig.from_unet_kwargs(extra, in_plain_blocks=True)
    width = extra.get("cross_attention_dim", 384)
    audio = replace(cfg.audio, feature_dim=width, token_dim=width,
                    tokens=cfg.audio.window * cfg.audio.feature_blocks)
    fl_path = folder / "face_locator.json"
    face_channels, face_in = cfg.face_locator_channels, cfg.face_locator_in_channels
    if fl_path.is_file():
        fl = json.loads(fl_path.read_text())
        if fl["conditioning_embedding_channels"] != unet.block_out_channels[0]:
            raise ConfigError(f"face_locator conditioning_embedding_channels={fl['conditioning_embedding_channels']} "
                              f"must equal the UNet's first width {unet.block_out_channels[0]}")
        face_channels = tuple(fl["block_out_channels"])
        face_in = fl.get("conditioning_channels", 1)
    return replace(cfg, unet=unet, temporal=temporal, audio=AudioConfig(**audio.__dict__),
                   face_locator_channels=face_channels, face_locator_in_channels=face_in)


def denoising_state_dict(files: EchoMimicFiles) -> dict[str, torch.Tensor]:
    """Motion-module values first, the denoising UNet's own values over them (EchoMimic's order)."""
    sd: dict[str, torch.Tensor] = {}
    if files.motion_module is not None:
        mm = load_state_dict(files.motion_module)
        stray = sorted(k for k in mm if ".motion_modules." not in k)
        if stray:
            raise CheckpointError(f"{files.motion_module}: a motion-module file holds only motion-module keys; "
                                  f"found {len(stray)} others, e.g. {stray[:3]}")
        sd.update(mm)
    sd.update(load_state_dict(files.denoising_unet))
    return sd


def load_echomimic(folder: str | Path, *, accelerated: bool | None = None, config: EmoConfig | None = None,
                   device="cpu", dtype=torch.float32):
    """Builds the EchoMimic-family ``EmoNet`` and loads the four files strictly."""
    from ..models.emo import EmoNet

    folder = Path(folder)
    files = find_files(folder, accelerated)
    cfg = config or config_from_folder(folder)
    unet_what = f"EchoMimic {files.denoising_unet.name}" + (f" + {files.motion_module.name}" if files.motion_module else "")
    motion = {} if files.motion_module is None else read_header(files.motion_module)
    check_parts(cfg, [("denoising_unet", {**motion, **read_header(files.denoising_unet)}, unet_what),
                      ("reference_unet", read_header(files.reference_unet), f"EchoMimic {files.reference_unet.name}"),
                      ("face_locator", read_header(files.face_locator), f"EchoMimic {files.face_locator.name}")])
    net = EmoNet(cfg)  # the files' names and shapes fit: build and load
    load_strict(net.denoising_unet, denoising_state_dict(files), unet_what)
    load_strict(net.reference_unet, load_state_dict(files.reference_unet), f"EchoMimic {files.reference_unet.name}")
    load_strict(net.face_locator, load_state_dict(files.face_locator), f"EchoMimic {files.face_locator.name}")
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


def repo_files(accelerated: bool) -> list[tuple[str, str, int]]:
    """(path in the Hugging Face repo = path in the local folder, description, minimum plausible size)."""
    stems = file_names(accelerated)
    size = {"denoising_unet": 1 << 30, "motion_module": 100 << 20, "reference_unet": 500 << 20, "face_locator": 1 << 10}
    what = {"denoising_unet": "denoising 3D UNet", "motion_module": "motion modules",
            "reference_unet": "reference UNet", "face_locator": "face locator"}
    files = [(f"{stems[p]}.pth", f"EchoMimic{' accelerated' if accelerated and p in ACCELERATED_PARTS else ''} "
              f"{what[p]}", size[p]) for p in PARTS]
    return files + [(WHISPER_FILE, "whisper-tiny audio encoder (OpenAI's tiny.pt)", 30 << 20)]


WHISPER_NAMES = ("audio_processor/whisper_tiny.pt", "audio_processor/tiny.pt", "whisper_tiny.pt", "tiny.pt")


def whisper_file(folder: str | Path) -> Path | None:
    """The whisper-tiny checkpoint of an EchoMimic folder (``audio_processor/whisper_tiny.pt`` or
    OpenAI's ``tiny.pt``; also looked for in the folder above), or None."""
    folder = Path(folder)
    for root in (folder, folder.parent):
        for name in WHISPER_NAMES:
            if (root / name).is_file():
                return root / name
    return None


def load_whisper(folder: str | Path, device="cpu", dtype=torch.float32):
    """The whisper-tiny encoder for an EchoMimic folder; ``ModelFileMissing`` saying where it goes."""
    from ..hub import ModelFileMissing
    from ..models.whisper import load_whisper_encoder

    path = whisper_file(folder)
    if path is None:
        raise ModelFileMissing(f"whisper-tiny not found: put {Path(folder) / WHISPER_FILE} there "
                               f"(OpenAI's tiny.pt: {WHISPER_URL}, or {file_url(WHISPER_FILE)})")
    return load_whisper_encoder(path, device, dtype)


def is_echomimic_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (_find(folder, "denoising_unet") is not None or has_accelerated(folder))


def file_url(path: str, revision: str = "main") -> str:
    from ..hub import hf_url

    return hf_url(HF_REPO, path, revision)


def file_table(accelerated: bool = True):
    """EchoMimic's files (plain or accelerated, with whisper-tiny) as a ``hub.FileTable``."""
    from ..hub import FileTable, RepoFile

    return FileTable(f"EchoMimic{' accelerated' if accelerated else ''}", HF_REPO,
                     tuple(RepoFile(path, True, what, size) for path, what, size in repo_files(accelerated)),
                     note=f"  (whisper_tiny.pt is OpenAI's tiny.pt: {WHISPER_URL})")


def ensure_echomimic(folder: str | Path, *, accelerated: bool = True, download: bool = True,
                     progress_callback=None) -> Path:
    """Makes sure EchoMimic's files (plain or accelerated) and whisper-tiny are in ``folder``
    (``hub.FileTable.ensure``: one at a time, atomically; offline: what goes where)."""
    return file_table(accelerated).ensure(folder, download=download, progress_callback=progress_callback)


@torch.no_grad()
def sample_video(net, ref_latent: torch.Tensor, audio_windows: torch.Tensor, schedule, steps: int, *,
                 face_mask: torch.Tensor | None = None, guidance: float = 1.0, generator: torch.Generator | None = None,
                 window_batch: int = 1, storage_device="cpu", callback=None, model=None) -> torch.Tensor:
    """The whole video as one latent sequence, sampled with context windows (``cfg.chaining ==
    "context_windows"``): windows of ``cfg.clip_frames`` overlapping by ``cfg.context_overlap``,
    shifted by 2 frames per step, predictions averaged; classifier-free guidance when
    ``guidance > 1`` (the accelerated model: 6 steps, guidance 1).

    ref_latent [1, 4, h, w]; audio_windows [T, window, blocks, dim] (``whisper_windows``);
    face_mask [H, W] in 0..1 at image size, or None. The model runs on its own device, one batch
    of windows at a time; the T-frame latents live on ``storage_device``. As EchoMimic, the
    initial noise is clamped to [-1.5, 1.5]. ``callback({"step", "steps", "x", "x0", "output"})``
    after every step; ``model(x, t, cond)`` (default: ``net``) lets a caller observe raw predictions.
    Returns latents [1, 4, T, h, w] on ``storage_device``.
    """
    from dataclasses import replace

    from ..context_windows import windowed_model
    from ..models.backbone import Conditioning
    from ..sampling.ddim import sample_ddim
    from ..sampling.guidance import batch_conditions, guided_batched, unconditional

    cfg = net.cfg
    if cfg.chaining != "context_windows":
        raise ValueError(f"this model chains clips with {cfg.chaining}; context windows need chaining='context_windows'")
    model = net if model is None else model
    frames = audio_windows.shape[0]
    ref_latent = ref_latent.to(net.device, net.dtype)
    face = None if face_mask is None else net.face_features(face_mask[None])
    # The video's audio windows stay where they are; only each window's frames go to the model.
    audio_windows = audio_windows.to(storage_device)
    cond = Conditioning(reference=net.reference_features(ref_latent, None), face=face)
    guided = guidance > 1.0
    both = batch_conditions(unconditional(cond, None), cond) if guided else cond

    def window_fn(x, t, windows):
        preds = []
        for k, idx in enumerate(windows):
            audio = net.audio_tokens(audio_windows[idx][None])  # [1, k, tokens, dim] on the model's device
            if guided:  # the unconditional half hears silence (zero tokens), as unconditional() makes it
                window_cond = replace(both, audio=torch.cat([torch.zeros_like(audio), audio]))
                preds.append(guided_batched(model, window_cond, guidance)(x[k:k + 1].to(net.dtype), t))
            else:
                preds.append(model(x[k:k + 1].to(net.dtype), t, replace(both, audio=audio)))
        return torch.cat(preds).float()

    timesteps = schedule.timesteps(steps)
    model_fn = windowed_model(window_fn, frames, cfg.clip_frames, cfg.context_overlap, timesteps,
                              window_batch=window_batch, model_device=net.device)
    h, w = ref_latent.shape[-2:]
    x = torch.randn((1, cfg.unet.in_channels, frames, h, w), generator=generator).clamp(-1.5, 1.5)
    step_cb = None if callback is None else (
        lambda s: callback({"step": s["i"] + 1, "steps": steps, "x": s["x"], "x0": s["x0"], "output": s["output"]}))
    return sample_ddim(model_fn, x.to(storage_device), schedule, steps, callback=step_cb)
