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
    """A model file is unreadable or does not fit the model it is loaded into; the message names
    the file and what was expected. Every loader (network, VAE, wav2vec2, whisper, face models)
    raises this one type."""


def torch_load(path: str | Path, *, mmap: bool = False):
    """``torch.load(weights_only=True)`` with readable refusals: a pickle that needs globals (code)
    to load, or a file that is no torch checkpoint, is a CheckpointError naming the file.
    ``mmap``: tensors stay in the file until read (for reading names and shapes only)."""
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if not mmap or "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: this pickle checkpoint needs more than plain tensors to load: it needs pickle globals "
            f"({_unpickling_reason(e)}). Only weights-only checkpoints are loaded, no pickle code runs: use the "
            "model's .safetensors file if it has one, or convert this one to safetensors (or re-save just its "
            "state_dict) with the tool that made it.") from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e


def _unpickling_reason(e: Exception) -> str:
    """The useful line of torch's weights-only refusal (which global it met), without its advice
    to load with weights_only=False."""
    import re

    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it refers to {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return found.group(1).strip() if found else text.splitlines()[0].strip()


def _as_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state_dict), got a {type(obj).__name__}")
    return obj


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return _as_state_dict(torch_load(path), path)


def read_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors without reading their data: the safetensors
    header, or a .pth/.bin/.ckpt opened memory-mapped (weights_only). Fast for any file size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # SafetensorError (bad header, truncated file), OSError
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return {k: tuple(v.shape) for k, v in _as_state_dict(torch_load(path, mmap=True), path).items()}


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
    check_shapes({k: tuple(v.shape) for k, v in module.state_dict().items()},
                 {k: tuple(v.shape) for k, v in sd.items()}, what, allow_missing=allow_missing)


def check_shapes(own: dict[str, tuple], found: dict[str, tuple], what: str, *, allow_missing=()) -> None:
    """``check_keys`` on names and shapes alone (a model's expected ones against a file's header)."""
    missing = sorted(k for k in own if k not in found and not any(k.startswith(p) for p in allow_missing))
    unexpected = sorted(k for k in found if k not in own)
    mismatched = sorted(f"{k} {tuple(found[k])} vs model {tuple(own[k])}"
                        for k in found if k in own and tuple(found[k]) != tuple(own[k]))
    if missing or unexpected or mismatched:
        raise CheckpointError(_keys_report(what, missing, unexpected, mismatched))


def expected_shapes(cfg: EmoConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer name of an EmoNet of ``cfg`` with its shape, from a network
    built on the meta device (no memory, well under a second even at Hallo's size)."""
    from .models.emo import EmoNet

    with torch.device("meta"):
        net = EmoNet(cfg)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_parts(cfg: EmoConfig, parts) -> None:
    """Checks the headers of checkpoints that each fill one part of an EmoNet of ``cfg`` (e.g.
    EchoMimic's files): ``parts`` is [(attribute such as "reference_unet", header, what)]. Only a
    meta-device network is built."""
    from .models.emo import EmoNet

    with torch.device("meta"):
        net = EmoNet(cfg)
    for attr, header, what in parts:
        check_shapes({k: tuple(v.shape) for k, v in getattr(net, attr).state_dict().items()}, header, what)


def check_checkpoint(weights: Path, cfg: EmoConfig, fmt: str) -> None:
    """Refuses a checkpoint that cannot fit an EmoNet of ``cfg`` from its header alone, before
    the network is built: not an EMO/Hallo file at all, or names / shapes that differ."""
    header = read_header(weights)
    if not any(k.startswith("denoising_unet.") for k in header):
        raise _not_ours(weights, header)
    check_shapes(expected_shapes(cfg), header, f"{fmt} checkpoint {weights}")


def _not_ours(path: Path, keys) -> CheckpointError:
    prefixes = sorted({k.split(".", 1)[0] for k in keys})
    shown = ", ".join(prefixes[:8]) + (", ..." if len(prefixes) > 8 else "")
    return CheckpointError(f"{path}: not an EMO or Hallo checkpoint: expected the keys of Hallo's net.pth "
                           "(denoising_unet., reference_unet., face_locator., imageproj., audioproj.), found "
                           f"{len(keys)} tensors under {shown or 'no names'}")


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
    raise _not_ours(path, keys)


def _peek_keys(path: Path) -> list[str]:
    """The tensor names of a checkpoint, from its header (no tensor data is read)."""
    return list(read_header(path))


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
        try:
            meta = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder / CONFIG_FILE}: not a readable JSON config ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or "config" not in meta:
            raise CheckpointError(f"{folder / CONFIG_FILE} is not an {FORMAT_NAME} config (expected "
                                  f'{{"format": "{FORMAT_NAME}", "config": ...}})')
        try:
            cfg = config or EmoConfig.from_dict(meta["config"])
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{folder / CONFIG_FILE}: its model config is not valid ({e})") from e
        weights = folder / WEIGHTS_FILE
    elif fmt == "hallo":
        cfg = config or EmoConfig.hallo()
        weights = path
        if path.is_dir():
            weights = next(p for p in (path / n for n in ("net.pth", "net.safetensors", "hallo/net.pth",
                                                          "hallo/net.safetensors")) if p.is_file())
    else:  # four files with their own layout: emo_core.families.echomimic (families.load_net picks it)
        raise CheckpointError(f"{path} holds EchoMimic's files: load them with emo_core.families.load_net")
    check_checkpoint(weights, cfg, fmt)  # from the header: a foreign file is refused before the build
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
