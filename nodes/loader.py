"""EMO Model Loader: a checkpoint from models/emo (our format, Hallo's or EchoMimic's), its VAE, dtype.

The Hallo choice downloads Hallo's weights and helper models into models/emo/hallo on
first use (never at import), with progress, and explains what to put where when offline;
the EchoMimic choices do the same with EchoMimic's files (plain or accelerated) and
whisper-tiny in models/emo/echomimic.
"""
from __future__ import annotations

from pathlib import Path

from .types import CATEGORY, EMO_MODEL

HALLO_CHOICE = "hallo (models/emo/hallo, downloaded on first use)"
TINY_CHOICE = "tiny-random hallo layout (smoke test: output is noise)"
TINY_EMO_CHOICE = "tiny-random emo layout, with speed layers (smoke test: output is noise)"
TINY_ECHOMIMIC_CHOICE = "tiny-random echomimic layout, whisper audio (smoke test: output is noise)"
TINY_FAMILIES = {TINY_CHOICE: "hallo", TINY_EMO_CHOICE: "emo", TINY_ECHOMIMIC_CHOICE: "echomimic"}
ECHOMIMIC_ACC_CHOICE = "echomimic-accelerated (download)"
ECHOMIMIC_CHOICE = "echomimic (download)"
ECHOMIMIC_DOWNLOADS = {ECHOMIMIC_ACC_CHOICE: True, ECHOMIMIC_CHOICE: False}  # choice -> accelerated
ECHOMIMIC_SUBDIR = "echomimic"  # models/emo/echomimic: where the download choices put the files
ACCELERATED_SUFFIX = " (accelerated)"


def _local_choices() -> list[str]:
    """Model folders and files in every registered models/emo folder. An EchoMimic folder is
    one entry ("name/"; "name/ (accelerated)" for its _acc weights), not its part files."""
    from emo_core.families.echomimic import _find, has_accelerated, is_echomimic_folder

    from .comfy_env import emo_folders

    out = []
    for root in emo_folders():
        if not root.is_dir():
            continue
        echomimic = []
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if (rel.split("/")[0] in ("hallo", ECHOMIMIC_SUBDIR) or len(p.relative_to(root).parts) > 3
                    or any(p.is_relative_to(e) for e in echomimic)):
                continue
            if p.is_dir() and is_echomimic_folder(p):
                echomimic.append(p)
                if _find(p, "denoising_unet") is not None:
                    out.append(rel + "/")
                if has_accelerated(p):
                    out.append(rel + "/" + ACCELERATED_SUFFIX)
            elif p.is_dir() and (p / "config.json").is_file() and (p / "emo.safetensors").is_file():
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


def _ensure_vae(folder: Path, download: bool) -> None:
    """EchoMimic's download choices: SD's sd-vae-ft-mse next to its files (the copy in Hallo's
    repository), unless a VAE folder is already there or in models/emo/hallo."""
    from emo_core.hub import HALLO_FILES, ModelFileMissing, ensure_file, hallo_url

    if any((d / "config.json").is_file() for d in (folder / "sd-vae-ft-mse", folder / "vae",
                                                   folder.parent / "hallo" / "sd-vae-ft-mse")):
        return
    for f in HALLO_FILES:
        if not f.path.startswith("sd-vae-ft-mse/") or (folder / f.path).is_file():
            continue
        if not download:
            raise ModelFileMissing(f"{folder / f.path} is missing (automatic download is switched off): put SD's "
                                   f"sd-vae-ft-mse there ({hallo_url(f.path)}) or connect a VAE to the loader")
        ensure_file(hallo_url(f.path), folder / f.path, progress_callback=None, timeout=120.0)


class EmoModelLoader:
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (EMO_MODEL,)
    RETURN_NAMES = ("emo_model",)
    DESCRIPTION = ("Loads an EMO network (our safetensors folder, Hallo's net.pth or an EchoMimic folder, detected "
                   "from the files) with its VAE. Hallo's weights and helper models download into models/emo/hallo, "
                   "EchoMimic's (with whisper-tiny) into models/emo/echomimic, on first use.")

    @classmethod
    def INPUT_TYPES(cls):
        from .comfy_env import register_folders

        register_folders()
        return {
            "required": {
                "model": ([HALLO_CHOICE, ECHOMIMIC_ACC_CHOICE, ECHOMIMIC_CHOICE, TINY_CHOICE, TINY_EMO_CHOICE,
                           TINY_ECHOMIMIC_CHOICE] + _local_choices(), {
                    "tooltip": "hallo: Hallo's released weights (models/emo/hallo, Hallo's pretrained_models layout). "
                               "echomimic: EchoMimic v1 (models/emo/echomimic; the accelerated weights run 6 steps "
                               "with cfg 1). Other entries: EMO folders (config.json + emo.safetensors), EchoMimic "
                               "folders or Hallo net.pth files in models/emo. tiny-random runs everything offline "
                               "and only makes noise."}),
                "dtype": (["auto", "fp32", "fp16", "bf16"], {
                    "default": "auto", "tooltip": "auto: fp16/bf16 on a GPU, fp32 on the CPU"}),
                "download": ("BOOLEAN", {
                    "default": True, "tooltip": "download missing Hallo (about 6 GB) or EchoMimic files from Hugging "
                                                "Face on first use; off: fail with the list of files to put in place"}),
            },
            "optional": {
                "reference_rule": (["auto", "hallo", "clean"], {
                    "default": "auto",
                    "tooltip": "how the portrait's and motion frames' features meet the two guidance halves. auto: "
                               "the model family's own (Hallo weights: 'hallo', reproducing Hallo's own pipeline "
                               "exactly; EMO and EchoMimic: 'clean', the intended design)"}),
                "vae": ("VAE", {"tooltip": "an SD1.5 VAE (e.g. vae-ft-mse-840000); without it the model "
                                           "folder's sd-vae-ft-mse is used"}),
            },
        }

    def load(self, model, dtype="auto", download=True, vae=None, reference_rule="auto"):
        from emo_core import families

        if reference_rule not in ("auto", "hallo", "clean"):
            from .common import EmoNodeError

            raise EmoNodeError(f"reference_rule: expected auto, hallo or clean, got {reference_rule!r}")
        (emo_model,) = self._load(model, dtype, download, vae)
        emo_model.pipe.rule = families.reference_rule(emo_model.cfg, None if reference_rule == "auto" else reference_rule)
        return (emo_model,)

    def _load(self, model, dtype, download, vae):
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
        if model in ECHOMIMIC_DOWNLOADS:
            from emo_core.families.echomimic import ensure_echomimic

            accelerated = ECHOMIMIC_DOWNLOADS[model]
            folder = emo_folders()[0] / ECHOMIMIC_SUBDIR
            ensure_echomimic(folder, accelerated=accelerated, download=bool(download),
                             progress_callback=_download_progress())
            if comfy_vae is None:
                _ensure_vae(folder, bool(download))
            return (self._load_path(folder, torch_dtype, comfy_vae, accelerated=accelerated),)
        accelerated = None
        if model.endswith(ACCELERATED_SUFFIX):
            model, accelerated = model[: -len(ACCELERATED_SUFFIX)], True
        path = _resolve(model)
        return (self._load_path(path, torch_dtype, comfy_vae, accelerated=accelerated),)

    @staticmethod
    def _load_path(path: Path, dtype, comfy_vae, accelerated=None):
        """The library's one loading path (``EmoPipeline.from_folder``: format detection, strict
        loading, the family's schedule rule, the VAE beside the weights unless one is connected)."""
        from emo_core.checkpoints import detect_format
        from emo_core.pipeline import EmoPipeline

        from .comfy_env import offload_device
        from .model import EmoModel

        fmt = detect_format(path)  # CheckpointError with the reason for anything else
        folder = path if path.is_dir() else path.parent
        try:
            pipe = EmoPipeline.from_folder(path, device=offload_device(), dtype=dtype, vae=comfy_vae,
                                           accelerated=accelerated)
        except FileNotFoundError as exc:
            if comfy_vae is None and "no VAE" in str(exc):
                raise FileNotFoundError(f"{exc} (or connect a VAE to the loader: SD1.5, e.g. vae-ft-mse-840000)") from exc
            raise
        aux = folder.parent if path.is_file() and folder.name == "hallo" else folder
        name = path.name + (ACCELERATED_SUFFIX if fmt == "echomimic" and accelerated else "")
        return EmoModel(pipe, name, fmt, folder=aux)


NODE_CLASS_MAPPINGS = {"EmoModelLoader": EmoModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoModelLoader": "EMO Model Loader"}
