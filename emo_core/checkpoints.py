"""Model files: safe loading, strict key checks with readable reports, format detection.

Everything loads with safetensors or ``torch.load(weights_only=True)``: no pickle code runs.
Formats:
- ``emo``:   our folder, ``config.json`` ({"format": "emo-portrait", "config": EmoConfig}) + ``emo.safetensors``
- ``hallo``: Hallo's ``net.pth`` (or a safetensors copy) with prefixes reference_unet./denoising_unet./...
- ``echomimic``: EchoMimic's four files (denoising_unet, reference_unet, motion_module, face_locator)
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import EmoConfig

FORMAT_NAME = "emo-portrait"
WEIGHTS_FILE = "emo.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the model it is loaded into."""


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: this pickle checkpoint needs more than plain tensors to load ({str(e).splitlines()[0]}). "
            "Only weights-only checkpoints are accepted: convert it to safetensors with the tool that made it, "
            "or re-save just its state_dict.") from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state_dict)")
    return sd


def find_weights(folder: Path, stem: str) -> Path:
    for suffix in (".safetensors", ".bin", ".pth", ".pt", ".ckpt"):
        p = folder / f"{stem}{suffix}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no {stem}.safetensors (or .bin/.pth) in {folder}")


def _keys_report(what: str, missing, unexpected, mismatched, limit: int = 12) -> str:
    lines = [f"{what}: the checkpoint does not fit the model"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            lines.append(f"  {len(keys)} {label} keys: {shown}")
    return "\n".join(lines)


def check_keys(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, *, allow_missing=()) -> None:
    """Raises CheckpointError naming missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in sd and not any(k.startswith(p) for p in allow_missing))
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted(f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in sd if k in own and sd[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(_keys_report(what, missing, unexpected, mismatched))


def load_strict(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, *, allow_missing=()) -> None:
    check_keys(module, sd, what, allow_missing=allow_missing)
    module.load_state_dict(sd, strict=not allow_missing)


# ---- whole models ----------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
            return "emo"
        for name in ("net.pth", "net.safetensors", "hallo/net.pth", "hallo/net.safetensors"):
            if (path / name).is_file():
                return "hallo"
        if any((path / f"denoising_unet{a}{s}").is_file() for a in ("", "_acc") for s in (".pth", ".safetensors")):
            return "echomimic"
        raise CheckpointError(f"{path}: no model found (expected {WEIGHTS_FILE} + {CONFIG_FILE}, Hallo's net.pth, "
                              "or EchoMimic's denoising_unet.pth)")
    if path.name.startswith("denoising_unet"):
        return "echomimic"
    keys = _peek_keys(path)
    if any(k.startswith("denoising_unet.") for k in keys):
        return "emo" if path.suffix == ".safetensors" and (path.parent / CONFIG_FILE).is_file() else "hallo"
    raise CheckpointError(f"{path}: not an EMO or Hallo checkpoint (no 'denoising_unet.' keys)")


def _peek_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return list(f.keys())
        except Exception as e:  # SafetensorError (bad header, truncated file), OSError
            raise CheckpointError(f"{path.name}: not a readable safetensors file ({e}) [{path}]") from e
    return list(load_state_dict(path))


def save_model(net, folder: str | Path) -> Path:
    """Writes ``emo.safetensors`` and ``config.json`` atomically (temp files, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    tmp_w, tmp_c = folder / (WEIGHTS_FILE + ".tmp"), folder / (CONFIG_FILE + ".tmp")
    save_file(sd, str(tmp_w))
    tmp_c.write_text(json.dumps({"format": FORMAT_NAME, "config": net.cfg.to_dict()}, indent=2))
    tmp_w.replace(folder / WEIGHTS_FILE)
    tmp_c.replace(folder / CONFIG_FILE)
    return folder


def load_model(path: str | Path, device="cpu", dtype=torch.float32, config: EmoConfig | None = None):
    """Builds an EmoNet and loads weights strictly from our folder, a Hallo checkpoint or
    EchoMimic's files (see ``detect_format``)."""
    from .models.emo import EmoNet

    path = Path(path)
    fmt = detect_format(path)
    if fmt == "emo":
        folder = path if path.is_dir() else path.parent
        meta = json.loads((folder / CONFIG_FILE).read_text())
        if meta.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{folder / CONFIG_FILE} is not an {FORMAT_NAME} config")
        cfg = config or EmoConfig.from_dict(meta["config"])
        weights = folder / WEIGHTS_FILE
    elif fmt == "hallo":
        cfg = config or EmoConfig.hallo()
        weights = path
        if path.is_dir():
            weights = next(p for p in (path / n for n in ("net.pth", "net.safetensors", "hallo/net.pth",
                                                          "hallo/net.safetensors")) if p.is_file())
    else:
        from .echomimic import load_echomimic

        return load_echomimic(path if path.is_dir() else path.parent, config=config, device=device, dtype=dtype)
    net = EmoNet(cfg)
    load_strict(net, load_state_dict(weights), f"{fmt} checkpoint {weights}")
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ---- initialising a fresh EMO model ----------------------------------------------------------
SD15_UNET_CONFIG = Path(__file__).with_name("configs") / "sd15_unet.json"


def load_sd15_unet(path: str | Path) -> dict[str, torch.Tensor]:
    """SD1.5 UNet weights in diffusers naming, from a diffusers folder (``unet/``) or a
    single-file checkpoint (original LDM naming, converted with diffusers' own converter)."""
    path = Path(path)
    if path.is_dir():
        folder = path / "unet" if (path / "unet").is_dir() else path
        return load_state_dict(find_weights(folder, "diffusion_pytorch_model"))
    sd = load_state_dict(path)
    if any(k.startswith("model.diffusion_model.") for k in sd):
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        cfg = json.loads(SD15_UNET_CONFIG.read_text())
        sd = convert_ldm_unet_checkpoint(sd, cfg)
    return sd


def init_from_sd15(net, unet_sd: dict[str, torch.Tensor]) -> list[str]:
    """Copies SD1.5 UNet weights into ReferenceNet and the backbone's spatial layers (EMO
    initialises both from SD1.5). Returns the backbone keys left at their fresh values
    (audio, temporal, speed layers); raises if an SD1.5 key fits neither network."""
    ref_keys = set(net.reference_unet.state_dict())
    ref_sd = {k: v for k, v in unet_sd.items() if k in ref_keys}
    dropped = sorted(set(unet_sd) - ref_keys - {k for k in unet_sd if k.startswith(("conv_norm_out", "conv_out"))})
    if dropped:
        raise CheckpointError(_keys_report("SD1.5 UNet -> ReferenceNet", [], dropped, []))
    load_strict(net.reference_unet, ref_sd, "SD1.5 UNet -> ReferenceNet")
    backbone = net.denoising_unet.state_dict()
    fits = {k: v for k, v in unet_sd.items() if k in backbone}
    bad = [f"{k} {tuple(v.shape)} vs {tuple(backbone[k].shape)}" for k, v in fits.items() if v.shape != backbone[k].shape]
    if bad:
        raise CheckpointError(_keys_report("SD1.5 UNet -> backbone", [], [], bad))
    net.denoising_unet.load_state_dict(fits, strict=False)
    return sorted(set(backbone) - set(fits))


def init_motion_modules(net, mm_sd: dict[str, torch.Tensor]) -> None:
    """Loads an AnimateDiff motion-module checkpoint (e.g. mm_sd_v15_v2.ckpt) into the
    backbone's temporal modules; every motion-module key of both sides must match."""
    backbone = net.denoising_unet.state_dict()
    own = {k for k in backbone if ".motion_modules." in k and ".speed_" not in k}
    missing = sorted(own - set(mm_sd))
    unexpected = sorted(set(mm_sd) - own)
    bad = [f"{k} {tuple(mm_sd[k].shape)} vs {tuple(backbone[k].shape)}" for k in own & set(mm_sd)
           if mm_sd[k].shape != backbone[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(_keys_report("AnimateDiff motion module", missing, unexpected, bad))
    net.denoising_unet.load_state_dict(mm_sd, strict=False)
