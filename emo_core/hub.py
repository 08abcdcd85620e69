"""Model-file helper: fetch a single file on first use, atomically, with a clear offline error.

Nothing here runs at import time. ``ensure_file`` returns at once when the file exists
(and matches ``sha256`` when one is given); otherwise it downloads to a temporary file in
the destination folder, checks it, and renames it into place, so an interrupted download
never leaves a half-written model behind. When the network is unreachable it raises
:class:`ModelFileMissing`, whose message says which file to put where and where to get it.

``KNOWN_FILES`` lists the files the preprocessing needs, with their public URLs;
``ensure_known(name, models_dir)`` fetches one of them by name.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

ProgressCallback = Callable[[int, Optional[int]], None]  # (bytes done, total bytes or None)


class ModelFileMissing(FileNotFoundError):
    """A model file is absent and could not be fetched; the message tells the user what to do."""


class ChecksumMismatch(ValueError):
    """A downloaded or existing file does not have the expected sha256."""


@dataclass(frozen=True)
class KnownFile:
    name: str                       # file name on disk
    url: str                        # where it is downloaded from
    sha256: Optional[str] = None    # expected digest when pinned
    archive_member: Optional[str] = None  # when ``url`` is a zip: the member to extract
    description: str = ""


KNOWN_FILES: dict[str, KnownFile] = {
    f.name: f
    for f in (
        KnownFile(
            "face_landmarker.task",
            "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
            sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
            description="MediaPipe Tasks FaceLandmarker (478 landmarks, blendshapes, head pose matrix)",
        ),
        KnownFile(
            "face_landmarker_v2_with_blendshapes.task",
            "https://huggingface.co/fudan-generative-ai/hallo/resolve/main/face_analysis/models/face_landmarker_v2_with_blendshapes.task",
            description="the same FaceLandmarker as shipped in Hallo's pretrained_models/face_analysis/models",
        ),
        KnownFile(
            "blaze_face_short_range.tflite",
            "https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/float16/1/blaze_face_short_range.tflite",
            sha256="b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f",
            description="MediaPipe Tasks FaceDetector (BlazeFace short range)",
        ),
        KnownFile(
            "glintr100.onnx",
            "https://huggingface.co/fudan-generative-ai/hallo/resolve/main/face_analysis/models/glintr100.onnx",
            description="insightface antelopev2 ArcFace recognition model (512-d), as used by Hallo",
        ),
        KnownFile(
            "w600k_r50.onnx",
            "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
            archive_member="w600k_r50.onnx",
            description="insightface buffalo_l ArcFace recognition model (512-d)",
        ),
    )
}


def sha256_of(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def _missing_message(dest: Path, url: str, reason: str, member: Optional[str] = None) -> str:
    src = f"{url} (file {member} inside the zip)" if member else url
    return (
        f"model file {dest.name} is missing and could not be downloaded ({reason}).\n"
        f"  Put the file at: {dest}\n"
        f"  Get it from:     {src}"
    )


def _download(url: str, target: Path, progress_callback: Optional[ProgressCallback], timeout: float) -> None:
    """Stream ``url`` (http(s) or file://) into ``target``."""
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "emo-portrait"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
        total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
        total = int(total) if total and str(total).isdigit() else None
        done = 0
        if progress_callback:
            progress_callback(0, total)
        while True:
            block = response.read(1 << 20)
            if not block:
                break
            out.write(block)
            done += len(block)
            if progress_callback:
                progress_callback(done, total)


def ensure_file(url: str, dest_path, sha256: Optional[str] = None,
                progress_callback: Optional[ProgressCallback] = None, *,
                archive_member: Optional[str] = None, timeout: float = 60.0) -> Path:
    """Return ``dest_path``, downloading ``url`` there first if it is absent.

    * existing file: returned as is (checked against ``sha256`` when given: a mismatch
      raises :class:`ChecksumMismatch`, the file is left alone);
    * download goes to a temporary file next to the destination and is renamed into place
      only after it is complete and its sha256 matches;
    * ``archive_member``: ``url`` is a zip archive and only that member is kept;
    * unreachable network or missing remote file: :class:`ModelFileMissing` naming the
      destination path and the URL.
    """
    dest = Path(dest_path).expanduser()
    if dest.is_file():
        if sha256 and sha256_of(dest) != sha256.lower():
            raise ChecksumMismatch(
                f"{dest} exists but its sha256 is {sha256_of(dest)}, expected {sha256}; "
                f"delete it to download it again from {url}"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _download(url, tmp, progress_callback, timeout)
        except Exception as exc:  # URLError, HTTPError, socket timeouts, OSError
            raise ModelFileMissing(_missing_message(dest, url, f"{type(exc).__name__}: {exc}", archive_member)) from exc
        if archive_member:
            _extract_member(tmp, archive_member, dest, url)
        if sha256:
            got = sha256_of(tmp)
            if got != sha256.lower():
                raise ChecksumMismatch(f"download of {url} has sha256 {got}, expected {sha256}; {dest} was not written")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _extract_member(archive: Path, member: str, dest: Path, url: str) -> None:
    """Replace the downloaded zip at ``archive`` by its member called ``member`` (any folder)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if not names:
                raise ModelFileMissing(_missing_message(dest, url, f"the archive has no {member}", member))
            extracted = archive.with_suffix(".member")
            with zf.open(names[0]) as src, open(extracted, "wb") as out:
                shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as exc:
        raise ModelFileMissing(_missing_message(dest, url, f"not a zip archive: {exc}", member)) from exc
    os.replace(extracted, archive)


def ensure_known(name: str, models_dir, progress_callback: Optional[ProgressCallback] = None,
                 download: bool = True) -> Path:
    """Path of the known file ``name`` inside ``models_dir``, fetched when absent.

    With ``download=False`` a missing file raises :class:`ModelFileMissing` at once.
    """
    if name not in KNOWN_FILES:
        raise KeyError(f"unknown model file {name!r}; known: {sorted(KNOWN_FILES)}")
    info = KNOWN_FILES[name]
    dest = Path(models_dir).expanduser() / info.name
    if not download and not dest.is_file():
        raise ModelFileMissing(_missing_message(dest, info.url, "downloads are disabled", info.archive_member))
    return ensure_file(info.url, dest, info.sha256, progress_callback, archive_member=info.archive_member)


# ---------------------------------------------------------------------------------------------
# Hallo's published weights (HF fudan-generative-ai/hallo, folder layout of its pretrained_models/)
HALLO_REPO = "fudan-generative-ai/hallo"


@dataclass(frozen=True)
class RepoFile:
    path: str                # path inside the repository (= path inside the local model folder)
    required: bool           # needed to generate videos (the others only for training / initialisation)
    description: str = ""
    min_bytes: int = 1       # a smaller file is treated as a broken download


HALLO_FILES: tuple[RepoFile, ...] = (
    RepoFile("hallo/net.pth", True, "Hallo network: ReferenceNet, backbone, face locator, audio and identity projections", 1 << 30),
    RepoFile("sd-vae-ft-mse/config.json", True, "SD1.5 VAE (ft-MSE) config"),
    RepoFile("sd-vae-ft-mse/diffusion_pytorch_model.safetensors", True, "SD1.5 VAE (ft-MSE) weights", 50 << 20),
    RepoFile("wav2vec/wav2vec2-base-960h/config.json", True, "wav2vec2-base-960h config"),
    RepoFile("wav2vec/wav2vec2-base-960h/model.safetensors", True, "wav2vec2-base-960h weights", 100 << 20),
    RepoFile("face_analysis/models/face_landmarker_v2_with_blendshapes.task", True,
             "MediaPipe face landmarker (face boxes, landmarks, head pose)", 1 << 20),
    RepoFile("face_analysis/models/glintr100.onnx", True, "ArcFace identity embedding (Hallo's identity tokens)", 50 << 20),
    RepoFile("motion_module/mm_sd_v15_v2.ckpt", False, "AnimateDiff v2 motion module (training initialisation only)", 100 << 20),
    RepoFile("stable-diffusion-v1-5/unet/config.json", False, "SD1.5 UNet config (training initialisation only)"),
    RepoFile("stable-diffusion-v1-5/unet/diffusion_pytorch_model.safetensors", False,
             "SD1.5 UNet weights (training initialisation only)", 1 << 30),
)


def hf_url(repo: str, path: str, revision: str = "main") -> str:
    return f"https://huggingface.co/{repo}/resolve/{revision}/{path}"


@dataclass(frozen=True)
class FileTable:
    """A published model's files, laid out in its local folder as in its Hugging Face repository:
    the one download manager for Hallo's and EchoMimic's files."""

    name: str  # e.g. "Hallo", "EchoMimic accelerated"
    repo: str
    files: tuple[RepoFile, ...]
    also: str = ""  # another way to get them, said after the download command
    note: str = ""  # a last line for the offline instructions

    def url(self, path: str, revision: str = "main") -> str:
        return hf_url(self.repo, path, revision)

    def missing(self, folder, include_optional: bool = False, exclude=()) -> list[RepoFile]:
        """Files absent from ``folder`` (or smaller than a plausible download); ``exclude``: paths not
        needed (e.g. hallo/net.pth when a checkpoint file is given)."""
        folder = Path(folder).expanduser()
        return [f for f in self.files if (f.required or include_optional) and f.path not in exclude
                and (not (folder / f.path).is_file() or (folder / f.path).stat().st_size < f.min_bytes)]

    def instructions(self, folder, missing: Optional[list] = None) -> str:
        """What to put where when the files cannot be downloaded."""
        folder = Path(folder).expanduser()
        missing = self.missing(folder) if missing is None else missing
        lines = [f"{self.name} model files are missing from {folder}. Download them (e.g. `hf download "
                 f"{self.repo} --local-dir {folder}`, huggingface_hub's command line){self.also}, so that:"]
        lines += [f"  {folder / f.path}   <- {self.url(f.path)}  ({f.description})" for f in missing]
        return "\n".join(lines + ([self.note] if self.note else []))

    def ensure(self, folder, *, download: bool = True, include_optional: bool = False, exclude=(),
               progress_callback: Optional[Callable[[str, int, Optional[int]], None]] = None) -> Path:
        """Makes sure the files are in ``folder``, downloading the missing ones one by one
        (atomically, see :func:`ensure_file`). ``progress_callback(file_path, bytes_done,
        total_or_None)``. Offline or with ``download=False``: :class:`ModelFileMissing` listing
        every missing file and its URL. A file that exists but is implausibly small is reported as
        broken, never overwritten."""
        folder = Path(folder).expanduser()
        missing = self.missing(folder, include_optional, exclude)
        broken = [f for f in missing if (folder / f.path).is_file()]
        if broken:
            raise ModelFileMissing(
                f"these {self.name} model files look truncated (smaller than expected); delete them to download "
                "again:\n" + "\n".join(f"  {folder / f.path} ({(folder / f.path).stat().st_size} bytes)" for f in broken))
        if missing and not download:
            raise ModelFileMissing(self.instructions(folder, missing) + "\n(automatic download is switched off)")
        for f in missing:
            cb = None if progress_callback is None else (lambda done, total, _p=f.path: progress_callback(_p, done, total))
            try:
                ensure_file(self.url(f.path), folder / f.path, progress_callback=cb, timeout=120.0)
            except ModelFileMissing as exc:
                raise ModelFileMissing(f"{exc}\n\n" + self.instructions(
                    folder, self.missing(folder, include_optional, exclude))) from exc
            if (folder / f.path).stat().st_size < f.min_bytes:
                bad = folder / f.path
                size = bad.stat().st_size
                bad.unlink()
                raise ModelFileMissing(f"download of {self.url(f.path)} gave only {size} bytes (removed); "
                                       + self.instructions(folder))
        return folder


HALLO = FileTable("Hallo", HALLO_REPO, HALLO_FILES, also=" or copy Hallo's pretrained_models/ there")
hallo_url = HALLO.url
hallo_missing = HALLO.missing
hallo_instructions = HALLO.instructions
ensure_hallo = HALLO.ensure
