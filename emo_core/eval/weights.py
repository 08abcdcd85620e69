"""The published networks the metrics use, and where their files live.

Every file sits in ``<models_dir>/eval/<filename>``. A file that is already there is used as
is (nothing is downloaded). A missing file is fetched through ``emo_core.hub.ensure_file`` only
when ``download=True``; offline or without permission the caller gets ``MissingWeightsError``
naming the file, the folder and the URL to fetch it from by hand. Nothing is downloaded at
import time.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightFile:
    key: str
    filename: str
    url: str
    description: str
    sha256_prefix: str | None = None  # torch-hub style: the start of the file's sha256


KNOWN_FILES = {
    "inception": WeightFile(
        "inception", "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "Inception v3 (TF 2015-12-05) ported by pytorch-fid; FID pool3 features", "6726825d"),
    "i3d": WeightFile(
        "i3d", "i3d_torchscript.pt",
        "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
        "I3D Kinetics-400 as TorchScript (StyleGAN-V port of the TF-Hub model used by FVD)"),
    "syncnet": WeightFile(
        "syncnet", "syncnet_v2.model",
        "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        "SyncNet v2 (joonson/syncnet_python) for LSE-C / LSE-D"),
}


class MissingWeightsError(FileNotFoundError):
    """A network file is not in the models folder and could not be downloaded."""


def default_models_dir() -> Path:
    return Path(os.environ.get("EMO_MODELS_DIR", Path.home() / ".cache" / "emo_portrait" / "models"))


def weight_path(key: str, models_dir=None) -> Path:
    spec = KNOWN_FILES[key]
    return Path(models_dir or default_models_dir()) / "eval" / spec.filename


def _check_prefix(path: Path, prefix: str | None) -> None:
    if not prefix:
        return
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if not h.hexdigest().startswith(prefix):
        raise ValueError(f"{path} does not have the published checksum (sha256 starts with {prefix}); "
                         "delete it and download it again")


def resolve_weights(key: str, models_dir=None, download: bool = False, progress_callback=None,
                    verify: bool = False) -> Path:
    """Path of the file for ``key`` ('inception', 'i3d', 'syncnet'); download it if allowed."""
    if key not in KNOWN_FILES:
        raise KeyError(f"unknown network {key!r}; known: {sorted(KNOWN_FILES)}")
    spec = KNOWN_FILES[key]
    path = weight_path(key, models_dir)
    if path.is_file():
        if verify:
            _check_prefix(path, spec.sha256_prefix)
        return path
    hint = (f"{spec.description}: {path} is missing. Download {spec.url} and save it as {path}"
            f" (or allow downloads).")
    if not download:
        raise MissingWeightsError(hint)
    try:
        from emo_core.hub import ensure_file
    except ImportError as err:  # hub not available in this checkout
        raise MissingWeightsError(hint) from err
    try:
        ensure_file(spec.url, path, sha256=None, progress_callback=progress_callback)
    except Exception as err:  # offline, HTTP error: keep the cause, add where the file goes
        raise MissingWeightsError(f"{hint} Download failed: {err}") from err
    try:
        _check_prefix(path, spec.sha256_prefix)
    except ValueError:
        path.unlink(missing_ok=True)  # a wrong download must not be picked up next time
        raise
    return path
