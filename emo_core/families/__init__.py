"""Model families: what differs between EMO, Hallo and EchoMimic weights, in one place.

Each family names its sampling defaults and its reference rule (how reference and motion-frame
features are laid out over the CFG halves, see ``emo_core.conditioning``). The noise schedule
follows one rule for every family: a ``scheduler.json`` (or diffusers
``scheduler/scheduler_config.json``) beside the weights when there is one, else the schedule
the model's ``prediction_type`` was trained with (``Schedule.for_prediction``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..conditioning import CleanReference
from ..config import EmoConfig
from ..sampling.ddim import Schedule
from . import hallo

RULES = {"clean": CleanReference(), "hallo": hallo.HalloReference()}
SCHEDULER_FILES = ("scheduler.json", "scheduler/scheduler_config.json")


@dataclass(frozen=True)
class Family:
    name: str
    steps: int  # default DDIM steps
    guidance: float  # default classifier-free guidance scale
    reference_rule: str  # key of RULES used unless the user picks another
    accelerated_steps: int | None = None  # distilled weights of the family (EchoMimic's _acc files)
    accelerated_guidance: float | None = None
    audio_as_hallo: bool = False  # wav2vec2 features computed as Hallo's preprocessing (hallo.py, quirk 7)
    join_denoise: float = 1.0  # clips after the first start from the last frame at this level (chaining.join_timestep)
    # its own guidance scale on the speed (guidance.guided_speed) when CFG is on and a speed is given
    speed_guidance: float | None = None
    noise_correlation: float = 0.0  # share of the initial noise every frame of a clip has in common (ddim.frame_noise)
    # the first clip's motion frames show the reference's face inside the face-locator mask
    # (chaining.first_motion_frames); Hallo and EchoMimic copy the reference as it is
    place_first_motion: bool = False


FAMILIES = {
    "emo": Family("emo", 40, 3.5, "clean", join_denoise=0.6, speed_guidance=5.0, place_first_motion=True),
    "hallo": Family(hallo.NAME, hallo.DEFAULT_STEPS, hallo.DEFAULT_CFG, "hallo", audio_as_hallo=True),
    "echomimic": Family("echomimic", 30, 2.5, "clean", accelerated_steps=6, accelerated_guidance=1.0),
}


def family_of(cfg: EmoConfig) -> Family:
    if cfg.family not in FAMILIES:
        raise ValueError(f"unknown model family {cfg.family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[cfg.family]


def reference_rule(cfg: EmoConfig, name: str | None = None):
    """The rule ``name`` ("clean" or "hallo"), or the family's own when None."""
    name = family_of(cfg).reference_rule if name is None else name
    if name not in RULES:
        raise ValueError(f"reference rule must be one of {sorted(RULES)}, got {name!r}")
    return RULES[name]


def schedule_for(cfg: EmoConfig, folder: str | Path | None = None) -> Schedule:
    """The sampling schedule of a model: the folder's scheduler file when present, else the one
    its prediction type implies. A scheduler file that disagrees with the model is refused."""
    if folder is not None:
        for name in SCHEDULER_FILES:
            path = Path(folder) / name
            if path.is_file():
                schedule = Schedule.from_file(path)
                if schedule.prediction_type != cfg.prediction_type:
                    raise ValueError(f"{path} says prediction_type {schedule.prediction_type!r} but the model "
                                     f"predicts {cfg.prediction_type!r}")
                return schedule
    return Schedule.for_prediction(cfg.prediction_type)


def load_net(path: str | Path, *, device="cpu", dtype=None, accelerated: bool | None = None,
             config: EmoConfig | None = None):
    """The one way weights are loaded (CLI, nodes, parity): ``path`` is a model folder or a
    weights file, the format is detected from the files (``checkpoints.detect_format``).
    A Hallo-format folder that carries Hallo's config files (``unet_config.json``,
    ``audioproj.json`` ...) is built from them, otherwise from the released layout.
    Returns (net, the folder the weights were found in)."""
    import torch

    from ..checkpoints import detect_format, load_model

    dtype = torch.float32 if dtype is None else dtype
    path = Path(path).expanduser()
    fmt = detect_format(path)
    folder = path if path.is_dir() else path.parent
    if fmt == "echomimic":
        from .echomimic import load_echomimic

        return load_echomimic(folder, accelerated=accelerated, config=config, device=device, dtype=dtype), folder
    if config is None and fmt == "hallo" and (folder / "unet_config.json").is_file():
        config = EmoConfig.from_hallo_folder(folder)
    return load_model(path, device=device, dtype=dtype, config=config), folder


VAE_FOLDERS = ("sd-vae-ft-mse", "vae", "../sd-vae-ft-mse", "../hallo/sd-vae-ft-mse")


def vae_folder(folder: Path) -> Path | None:
    """The SD VAE that goes with the weights in ``folder`` (beside them, or beside their folder)."""
    return next((folder / n for n in VAE_FOLDERS if (folder / n).is_dir()), None)
