"""EMO Model Loader: a checkpoint from models/emo (our format or Hallo's), its VAE, dtype.

The Hallo choice downloads Hallo's weights and helper models into models/emo/hallo on
first use (never at import), with progress, and explains what to put where when offline.
"""
from __future__ import annotations

from pathlib import Path

from .types import CATEGORY, EMO_MODEL

HALLO_CHOICE = "hallo (models/emo/hallo, downloaded on first use)"
TINY_CHOICE = "tiny-random hallo layout (smoke test: output is noise)"
TINY_EMO_CHOICE = "tiny-random emo layout, with speed layers (smoke test: output is noise)"
TINY_FAMILIES = {TINY_CHOICE: "hallo", TINY_EMO_CHOICE: "emo"}


def _local_choices() -> list[str]:
    """Model folders and files in every registered models/emo folder."""
    from .comfy_env import emo_folders

    out = []
    for root in emo_folders():
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if rel.startswith("hallo/") or rel == "hallo" or len(p.relative_to(root).parts) > 3:
                continue
            if p.is_dir() and (p / "config.json").is_file() and (p / "emo.safetensors").is_file():
                out.append(rel + "/")
            elif p.is_file() and p.suffix in (".pth", ".safetensors", ".pt") and p.name != "emo.safetensors":
                out.append(rel)
    return out


def _resolve(name: str) -> Path:
    from .comfy_env import emo_folders

    for root in emo_folders():
        p = root / name.rstrip("/")
        if p.exists():
            return p
    raise FileNotFoundError(f"{name} is not in any models/emo folder ({', '.join(map(str, emo_folders()))})")


def _download_progress():
    from .comfy_env import progress_bar

    bar = progress_bar(100)

    def cb(path, done, total):
        if total:
            bar.update_absolute(int(100 * done / total), 100)

    return cb


class EmoModelLoader:
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (EMO_MODEL,)
    RETURN_NAMES = ("emo_model",)
    DESCRIPTION = ("Loads an EMO network (our safetensors folder or Hallo's net.pth, detected from the keys) with its "
                   "VAE. Hallo's weights and helper models download into models/emo/hallo on first use.")

    @classmethod
    def INPUT_TYPES(cls):
        from .comfy_env import register_folders

        register_folders()
        return {
            "required": {
                "model": ([HALLO_CHOICE, TINY_CHOICE, TINY_EMO_CHOICE] + _local_choices(), {
                    "tooltip": "hallo: Hallo's released weights (models/emo/hallo, Hallo's pretrained_models layout). "
                               "Other entries: EMO folders (config.json + emo.safetensors) or Hallo net.pth files in "
                               "models/emo. tiny-random runs everything offline and only makes noise."}),
                "dtype": (["auto", "fp32", "fp16", "bf16"], {
                    "default": "auto", "tooltip": "auto: fp16/bf16 on a GPU, fp32 on the CPU"}),
                "download": ("BOOLEAN", {
                    "default": True, "tooltip": "download missing Hallo files (about 6 GB) from Hugging Face on "
                                                "first use; off: fail with the list of files to put in place"}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "an SD1.5 VAE (e.g. vae-ft-mse-840000); without it the model "
                                           "folder's sd-vae-ft-mse is used"}),
            },
        }

    def load(self, model, dtype="auto", download=True, vae=None):
        import torch

        from emo_core.pipeline import EmoPipeline

        from .comfy_env import emo_folders, load_device, offload_device, pick_dtype
        from .model import ComfyVae, EmoModel

        comfy_vae = None if vae is None else ComfyVae(vae)
        if model in TINY_FAMILIES:
            pipe = EmoPipeline.tiny(seed=0, family=TINY_FAMILIES[model])
            if comfy_vae is not None:
                pipe.vae = comfy_vae
            return (EmoModel(pipe, "tiny-random", "tiny", tiny=True),)
        torch_dtype = pick_dtype(dtype, load_device())
        if model == HALLO_CHOICE:
            from emo_core.hub import ensure_hallo

            folder = emo_folders()[0] / "hallo"
            ensure_hallo(folder, download=bool(download), progress_callback=_download_progress())
            pipe = EmoPipeline.from_folder(folder, device=offload_device(), dtype=torch_dtype, vae=comfy_vae)
            return (EmoModel(pipe, "hallo", "hallo", folder=folder),)
        path = _resolve(model)
        return (self._load_path(path, torch_dtype, comfy_vae),)

    @staticmethod
    def _load_path(path: Path, dtype, comfy_vae):
        from emo_core.checkpoints import CheckpointError, detect_format, load_model
        from emo_core.pipeline import EmoPipeline
        from emo_core.sampling.ddim import Schedule
        from emo_core.vae import load_vae

        from .comfy_env import offload_device
        from .model import EmoModel

        try:
            fmt = detect_format(path)  # CheckpointError with the reason for anything else
        except CheckpointError:
            raise
        except Exception as exc:  # e.g. a corrupt safetensors header
            raise CheckpointError(f"{path}: not a readable EMO or Hallo checkpoint ({exc})") from exc
        folder = path if path.is_dir() else path.parent
        net = load_model(path, device=offload_device(), dtype=dtype)
        vae = comfy_vae
        if vae is None:
            sub = next((d for d in (folder / "sd-vae-ft-mse", folder / "vae", folder.parent / "sd-vae-ft-mse")
                        if d.is_dir()), None)
            if sub is None:
                raise FileNotFoundError(f"no VAE for {path}: connect a VAE (SD1.5, e.g. vae-ft-mse-840000) or put "
                                        f"the sd-vae-ft-mse folder in {folder}")
            vae = load_vae(sub)
        schedule = Schedule.hallo() if net.cfg.prediction_type == "v_prediction" else Schedule()
        aux = folder.parent if path.is_file() and folder.name == "hallo" else folder
        pipe = EmoPipeline(net, vae, schedule, device=offload_device(), dtype=dtype)
        return EmoModel(pipe, path.name, fmt, folder=aux)


NODE_CLASS_MAPPINGS = {"EmoModelLoader": EmoModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoModelLoader": "EMO Model Loader"}
