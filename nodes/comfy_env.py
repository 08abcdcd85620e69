"""The few ComfyUI services the nodes use, imported lazily and with plain fallbacks, so
the pack imports (and its tests run) without ComfyUI: progress bars, latent previews, the
Cancel check, devices, cache release, model folders, the temp folder, ModelPatcher loading
and VIDEO objects. Nothing here runs at import time.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

EMO_FOLDER = "emo"  # models/emo, registered with folder_paths


def _try(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        return None


# ---------------------------------------------------------------- latent format, model-patcher stand-in
class _LatentFormat:
    """Core's SD15 latent format when ComfyUI is there (previews), else its two numbers."""
    scale_factor, latent_channels, latent_dimensions, spacial_downscale_ratio = 0.18215, 4, 2, 8

    def process_in(self, latent):
        return latent * self.scale_factor

    def process_out(self, latent):
        return latent / self.scale_factor


def latent_format():
    """The SD1.5 latent format: core's LATENT holds latents / scale_factor (``process_out``)."""
    formats = _try("comfy.latent_formats")
    return formats.SD15() if formats is not None else _LatentFormat()


class CoreBaseModel:
    """What core reads of ``model_patcher.model`` / ``model_wrap.inner_model``."""

    def __init__(self, model_sampling):
        self.model_sampling = model_sampling
        self.latent_format = latent_format()

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent):
        return self.latent_format.process_out(latent)

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        return self.model_sampling.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (len(noise.shape) - 1)),
                                                 noise, latent_image)


class CorePatcher:
    """What core reads of a guider's ``model_patcher`` (latent format, preview device, model class)."""

    def __init__(self, model: CoreBaseModel, device):
        self.model, self.load_device, self.model_options = model, device, {}

    def get_model_object(self, name):
        return getattr(self.model, name)


def model_patcher(schedule, device=None) -> CorePatcher:
    """The stand-in ModelPatcher of an EMO schedule: what core's SamplerCustomAdvanced and latent
    previews read (``load_device``, ``model.latent_format``, ``model.model_sampling``)."""
    from emo_core.sampling.discrete import ModelSampling

    return CorePatcher(CoreBaseModel(ModelSampling(schedule)), load_device() if device is None else device)


# ---------------------------------------------------------------- progress / interrupt
class _NoBar:
    def __init__(self, total):
        self.total, self.current = total, 0

    def update(self, n):
        self.current += n

    def update_absolute(self, value, total=None, preview=None):
        self.current = value
        if total is not None:
            self.total = total


def progress_bar(total: int):
    utils = _try("comfy.utils")
    return utils.ProgressBar(total) if utils is not None and hasattr(utils, "ProgressBar") else _NoBar(total)


def latent_previewer(patcher):
    """``preview(x0) -> image`` for a progress bar's ``update_absolute``, x0 [1, 4, h, w] in the
    model's latent space, by core's ``latent_preview`` with the preview method ComfyUI runs with
    (TAESD, latent2rgb); None without ComfyUI or with previews off. ``patcher``: what core's
    ``prepare_callback`` reads (``load_device``, ``model.latent_format``)."""
    lp = _try("latent_preview")
    if lp is None or not hasattr(lp, "get_previewer"):
        return None
    previewer = lp.get_previewer(patcher.load_device, patcher.model.latent_format)
    if previewer is None:
        return None
    return lambda x0: previewer.decode_latent_to_preview_image("JPEG", x0)


def check_interrupt() -> None:
    """Raises ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    mm = _try("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def soft_empty_cache() -> None:
    mm = _try("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- devices
def load_device() -> torch.device:
    mm = _try("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    mm = _try("comfy.model_management")
    return mm.unet_offload_device() if mm is not None else torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": fp16 (bf16 where supported) on an accelerator, fp32 on CPU."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name in table:
        return table[name]
    if name != "auto":
        raise ValueError(f"dtype must be auto, fp32, fp16 or bf16, got {name!r}")
    if device.type == "cpu":
        return torch.float32
    mm = _try("comfy.model_management")
    if mm is not None and hasattr(mm, "should_use_bf16") and mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16


class _Holder(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.device = None


class Patched:
    """Loads a module onto the compute device through ComfyUI's model management (a
    ModelPatcher, fully loaded, so ComfyUI can offload it when other models need memory);
    without ComfyUI it moves the module itself. ``with patched.loaded() as device:``."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.patcher = None
        mp = _try("comfy.model_patcher")
        mm = _try("comfy.model_management")
        if mp is not None and mm is not None:
            holder = _Holder(module)  # ModelPatcher assigns .device, a read-only property on many modules
            size = mm.module_size(holder) if hasattr(mm, "module_size") else 0
            self.patcher = mp.ModelPatcher(holder, load_device=load_device(), offload_device=offload_device(), size=size)

    @contextlib.contextmanager
    def loaded(self):
        if self.patcher is not None:
            mm = _try("comfy.model_management")
            mm.load_models_gpu([self.patcher], force_full_load=True)
            yield self.patcher.load_device
            return
        device = load_device()
        self.module.to(device)
        try:
            yield device
        finally:
            if device.type != "cpu":
                self.module.to(offload_device())
                soft_empty_cache()


# ---------------------------------------------------------------- folders
def models_dir() -> Path:
    """ComfyUI's models folder; outside ComfyUI $EMO_MODELS_DIR or ~/.cache/emo_portrait/models."""
    fp = _try("folder_paths")
    if fp is not None:
        return Path(fp.models_dir)
    return Path(os.environ.get("EMO_MODELS_DIR", Path.home() / ".cache" / "emo_portrait" / "models")).expanduser()


def emo_dir() -> Path:
    return models_dir() / EMO_FOLDER


def register_folders() -> None:
    """Registers models/emo with folder_paths (no-op without ComfyUI; safe to call often)."""
    fp = _try("folder_paths")
    if fp is None:
        return
    path = str(emo_dir())
    names = getattr(fp, "folder_names_and_paths", {})
    if EMO_FOLDER in names and path in names[EMO_FOLDER][0]:
        return
    fp.add_model_folder_path(EMO_FOLDER, path)


def emo_folders() -> list[Path]:
    """Every folder registered as "emo" (extra_model_paths.yaml included), models/emo first."""
    fp = _try("folder_paths")
    if fp is not None:
        register_folders()
        try:
            return [Path(p) for p in fp.get_folder_paths(EMO_FOLDER)]
        except Exception:  # an older folder_paths without get_folder_paths
            pass
    return [emo_dir()]


def temp_dir() -> Path:
    fp = _try("folder_paths")
    d = Path(fp.get_temp_directory()) if fp is not None and hasattr(fp, "get_temp_directory") else Path(tempfile.gettempdir()) / "emo_portrait"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------- VIDEO
def make_video(path):
    """ComfyUI's file-backed VIDEO (``VideoFromFile``) or, without ComfyUI, our small stand-in."""
    latest = _try("comfy_api.latest")
    if latest is not None and hasattr(latest, "InputImpl"):
        return latest.InputImpl.VideoFromFile(str(path))
    from .video import FileVideo

    return FileVideo(str(path))
