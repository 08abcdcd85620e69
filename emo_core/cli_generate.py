"""``python -m emo_core generate``: portrait + audio -> H.264 + AAC mp4, streamed clip by clip.

    python -m emo_core generate --image portrait.png --audio speech.wav -o out.mp4 --weights models/emo/hallo
    python -m emo_core generate --image portrait.png --audio speech.wav -o out.mp4 --weights models/emo/echomimic
    python -m emo_core generate --image samples/portrait.png --audio samples/speech.wav -o smoke.mp4 --tiny

``--weights``: a model folder (Hallo's pretrained_models layout, or ours: config.json +
emo.safetensors with sd-vae-ft-mse/ and wav2vec/wav2vec2-base-960h/ beside it, or an
EchoMimic folder: denoising_unet[_acc].pth ... with audio_processor/whisper_tiny.pt and
sd-vae-ft-mse/), or one checkpoint file (Hallo's net.pth, read with the helper models of the
pretrained_models folder it sits in; our emo.safetensors); the file is checked from its header
before the network is built, and one line says what was read. With ``--download`` missing
Hallo (or EchoMimic, for a folder named echomimic*) files are fetched into it first. The family
is detected from the folder; EchoMimic's accelerated weights default to 6 steps without guidance (cfg 1).
``--tiny``: random tiny weights, fully offline: the output is noise, it only shows that
everything runs; ``--tiny-family`` picks the layout (hallo, emo, echomimic).

The face is found on the whole photo and a square around it (``--margin``) is what the model
animates; the result is pasted back into the photo (``--feather``), so the video has the
photo's size (``--no-paste-back``: the square). See emo_core.preprocess.framing.

Progress goes to stderr (emo_core.progress): clips done / total, frames, elapsed and time left,
one line redrawn in place on a terminal, one line per finished clip otherwise (logs, pipes).

Every option is checked before anything is loaded, and the output is checked to be writable:
a bad value ends with ``error: <option>: expected ..., got ...`` and exit code 2. Ctrl-C or
SIGTERM stops the run and deletes the partial output (exit codes 130 / 143).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, help="portrait image (png/jpg)")
    p.add_argument("--audio", required=True, help="speech or singing (wav/mp3/flac/m4a or a video's audio track)")
    p.add_argument("-o", "--output", required=True, help="output .mp4")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="model folder (Hallo's pretrained_models layout, ours, EchoMimic's) or one "
                                       "checkpoint file (Hallo's hallo/net.pth, our emo.safetensors); default: "
                                       "$EMO_MODELS_DIR/emo/hallo or ~/.cache/emo_portrait/models/emo/hallo")
    src.add_argument("--tiny", action="store_true", help="random tiny weights, offline smoke test: the output is noise")
    p.add_argument("--tiny-family", choices=("hallo", "emo", "echomimic"), default=None,
                   help="layout of the --tiny preset (default hallo; implies --tiny)")
    p.add_argument("--accelerated", action="store_true",
                   help="EchoMimic: use the accelerated (_acc) weights, 6 steps without guidance (automatic when "
                        "the folder holds only those)")
    p.add_argument("--download", action="store_true", help="download missing Hallo (or EchoMimic) files into the "
                                                           "weights folder")
    p.add_argument("--size", type=int, default=512,
                   help="output side in pixels, a multiple of the model's size multiple (64 for every released "
                        "model; default 512; --tiny: 64)")
    p.add_argument("--fps", type=float, default=25.0, help="frames per second of the video (> 0; default 25)")
    p.add_argument("--steps", type=int, default=None,
                   help="DDIM steps, 1 to 1000 (default 40; EchoMimic 30, accelerated 6; --tiny: 4)")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale >= 0 (default 3.5; EchoMimic 2.5, accelerated 1 = none)")
    p.add_argument("--sampler", default=None,
                   help="ddim (default), euler, dpmpp_2m or unipc, over the model's own timesteps (emo_core.sampling)")
    p.add_argument("--preset", default=None,
                   help="quality: ddim, 40 steps, cfg 3.5; fast: dpmpp_2m, 10 steps, cfg 3.5 only at sigmas 0.28 to "
                        "5.42 (emo_core/sampling/presets.py); --steps, --cfg and --sampler override its values")
    p.add_argument("--join-denoise", type=float, default=None,
                   help="seamless clip joins: clips after the first start from the previous clip's last frame at "
                        "this fraction of the schedule, in (0, 1] (1 = from pure noise; default: the model's, EMO "
                        "0.6, Hallo and EchoMimic 1 as their own code)")
    p.add_argument("--noise-correlation", type=float, default=None,
                   help="share of each clip's initial noise its frames have in common, in [0, 1) (steadier pose "
                        "inside a clip, joins less so; default: the model's, 0)")
    p.add_argument("--speed-guidance", type=float, default=None,
                   help="guidance scale of the head speed alone, >= 0 (models with speed layers, with --cfg > 1): "
                        "how strongly the asked speed is followed; equal to --cfg: plain guidance (default: the "
                        "model's, EMO 5)")
    p.add_argument("--seed", type=int, default=0, help="noise seed, 0 to 2^64-1")
    p.add_argument("--speed", type=float, default=None,
                   help="constant head-rotation speed target, degrees per frame, >= 0 (models with speed layers)")
    p.add_argument("--motion-start", choices=("reference", "zeros"), default="reference")
    p.add_argument("--reference-rule", choices=("hallo", "clean"), default=None,
                   help="how portrait and motion-frame features meet the two guidance halves: 'hallo' reproduces "
                        "Hallo's own pipeline exactly (default for Hallo weights), 'clean' is the intended design "
                        "(default for EMO and EchoMimic weights); see the README")
    p.add_argument("--expand", type=float, default=1.2, help="face box growth for the face-locator mask (> 0)")
    p.add_argument("--no-face", choices=("error", "full_frame"), default="error",
                   help="without a credible face: stop with the reason (error), or use the photo's centre square "
                        "as the face region (full_frame)")
    p.add_argument("--framing", choices=("face", "center"), default="face",
                   help="face: find the face on the whole photo and crop a square around it (default); center: "
                        "the photo's centre square")
    p.add_argument("--margin", type=_fraction("--margin", 5.0), default=0.5,
                   help="space around the face box on each side, as a fraction of the box's side: the square "
                        "is box side x (1 + 2 x margin) (default 0.5: the face box is half the square)")
    p.add_argument("--feather", type=_fraction("--feather", 0.5), default=0.1,
                   help="width of the paste-back blend, as a fraction of the square's side (0 to 0.5; default 0.1)")
    p.add_argument("--no-paste-back", dest="paste_back", action="store_false",
                   help="write the square the model made (--size pixels) instead of pasting it back into the "
                        "photo (by default the video has the photo's size)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    p.add_argument("--crf", type=float, default=18, help="H.264 quality, 0 to 51 (lower is better; default 18)")


def _fraction(option: str, high: float):
    """argparse type: a finite number from 0 to ``high`` (bad values: exit code 2 naming ``option``)."""
    def parse(text: str) -> float:
        from . import checks

        try:
            return checks.number(float(text), option, low=0.0, high=high)
        except ValueError:  # argparse's message already names the option
            raise argparse.ArgumentTypeError(f"expected a number from 0 to {high:g}, got {text!r}") from None
    return parse


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


class UsageError(ValueError):
    """A bad option, found before any model work: ``<option>: expected ..., got ...``."""


def model_size_multiple(args) -> int:
    """The side multiple of the model ``args`` will load, read from its config alone (no weights):
    the tiny preset's, an EMO folder's config.json, else SD1.5's 64 (Hallo, EchoMimic)."""
    import json

    from .checkpoints import FORMAT_NAME
    from .config import EmoConfig

    if args.tiny or args.tiny_family is not None:
        family = args.tiny_family or "hallo"
        return EmoConfig.tiny(family=family, speed=family != "hallo").size_multiple
    weights = Path(args.weights).expanduser() if args.weights else default_weights()
    config = weights if weights.is_dir() else weights.parent
    try:
        meta = json.loads((config / "config.json").read_text())
        if meta.get("format") == FORMAT_NAME:
            return EmoConfig.from_dict(meta["config"]).size_multiple
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not our folder (or a broken config, reported by the loader)
    return EmoConfig.hallo().size_multiple


def validate_args(args) -> None:
    """Checks every option before anything is loaded; raises UsageError naming the option.
    Also makes sure the output can be written (so no generated video is lost at the end)."""
    from . import checks
    from .sampling.ddim import check_noise_correlation
    from .sampling.presets import preset
    from .sampling.samplers import check_sampler
    from .video_out import OutputPathError, check_output_path

    if args.tiny_family is not None and args.weights:
        raise UsageError("--tiny-family: it selects the layout of the --tiny preset and cannot be combined with "
                         f"--weights, got --weights {args.weights}")
    for option, check, value in (("--steps", checks.steps, args.steps), ("--cfg", checks.guidance, args.cfg),
                                 ("--speed", checks.speed, args.speed), ("--fps", checks.fps, args.fps),
                                 ("--seed", checks.seed, args.seed), ("--crf", checks.crf, args.crf),
                                 ("--expand", checks.expand, args.expand),
                                 ("--speed-guidance", checks.guidance, args.speed_guidance),
                                 ("--noise-correlation", check_noise_correlation, args.noise_correlation)):
        if value is not None:
            try:
                check(value, option)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    if args.speed_guidance is not None and args.cfg is not None and args.cfg <= 1.0:
        raise UsageError(f"--speed-guidance {args.speed_guidance:g}: needs classifier-free guidance, --cfg > 1 "
                         f"(got --cfg {args.cfg:g})")
    if args.join_denoise is not None and not 0.0 < args.join_denoise <= 1.0:
        raise UsageError(f"--join-denoise: expected a fraction of the schedule in (0, 1], got {args.join_denoise}")
    for option, check, value in (("--sampler", check_sampler, args.sampler), ("--preset", preset, args.preset)):
        if value is not None:
            try:
                check(value, option)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    tiny = args.tiny or args.tiny_family is not None
    if not (tiny and args.size == 512):  # --tiny turns the default 512 into 64
        try:
            checks.size(args.size, model_size_multiple(args), "--size")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.device:
        check_device(args.device)
    image = Path(args.image).expanduser()
    if not image.is_file():
        raise UsageError(f"--image: expected an image file (png/jpg), got {args.image} "
                         f"({'a folder' if image.is_dir() else 'not found'})")
    audio = Path(args.audio).expanduser()
    if not audio.is_file():
        raise UsageError(f"--audio: expected an audio or video file, got {args.audio} "
                         f"({'a folder' if audio.is_dir() else 'not found'})")
    if args.weights and not tiny:
        weights = Path(args.weights).expanduser()
        if weights.exists() and not (weights.is_dir() or weights.is_file()):
            raise UsageError(f"--weights: expected a model folder or a checkpoint file, got {args.weights}")
        if not weights.exists() and weights.suffix.lower() in CHECKPOINT_SUFFIXES:  # a folder may be downloaded into
            raise UsageError(f"--weights: expected a model folder or a checkpoint file, got {args.weights} (not found)")
    out = Path(args.output).expanduser()
    try:
        check_output_path(out)
    except OutputPathError as exc:
        raise UsageError(f"-o/--output: {exc}") from None
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"-o/--output: expected an .mp4 file name, got {args.output}")


def check_device(name: str) -> None:
    """``--device``: a device torch knows and this machine has (UsageError otherwise)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: expected cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device: expected a device this machine has, got {name!r} (torch sees no CUDA GPU; "
                             "use --device cpu)")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device: expected cuda:0 to cuda:{count - 1}, got {name!r}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device: expected a device this machine has, got {name!r} (MPS is not available)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device: expected cpu, cuda, cuda:N or mps, got {name!r}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the same clean-up runs as for Ctrl-C."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside: SIGTERM raises Terminated (a KeyboardInterrupt), so the mp4 writer deletes its
    partial file exactly as on Ctrl-C. Outside the main thread nothing is installed."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolve_weights(weights: Path) -> tuple[Path, Path | None]:
    """(model folder, checkpoint file or None) for ``--weights``: a folder is used as it is; a
    file (Hallo's net.pth, our emo.safetensors, EchoMimic's denoising_unet*.pth) is checked from
    its header and its helper models (VAE, wav2vec2, face models) are read from the folder it
    belongs to (Hallo: the pretrained_models folder above hallo/net.pth)."""
    from .checkpoints import detect_format

    if not weights.is_file():
        return weights, None
    fmt = detect_format(weights)  # reads the header only: a foreign file is refused here
    if fmt == "echomimic":
        return weights.parent, None
    if fmt == "hallo" and weights.parent.name == "hallo":
        return weights.parent.parent, weights
    return weights.parent, weights


def default_weights() -> Path:
    import os

    root = Path(os.environ.get("EMO_MODELS_DIR", Path.home() / ".cache" / "emo_portrait" / "models")).expanduser()
    return root / "emo" / "hallo"


def is_echomimic(weights: Path) -> bool:
    """An EchoMimic folder: its denoising_unet[_acc] files, or (to download into) a folder named echomimic*."""
    from .families.echomimic import is_echomimic_folder

    return is_echomimic_folder(weights) or (weights.name.lower().startswith("echomimic")
                                            and not (weights / "config.json").is_file())


def load_echomimic_pipeline(weights: Path, *, accelerated: bool, download: bool, device, dtype):
    """(pipeline, whisper encoder, accelerated) for an EchoMimic folder; missing files explained."""
    from .families.echomimic import _find, ensure_echomimic, find_files, has_accelerated, load_whisper, whisper_file
    from .pipeline import EmoPipeline

    if not accelerated:  # the plain model when both are there, as find_files
        accelerated = has_accelerated(weights) and _find(weights, "denoising_unet") is None
    try:
        find_files(weights, accelerated)
        complete = whisper_file(weights) is not None
    except FileNotFoundError:
        complete = False
    if not complete:
        ensure_echomimic(weights, accelerated=accelerated, download=download)
    pipe = EmoPipeline.from_folder(weights, device=device, dtype=dtype, accelerated=accelerated)
    return pipe, load_whisper(weights, device=device), accelerated


def load_portrait(path, size: int, *, framing: str = "face", margin: float = 0.5, if_missing: str = "error",
                  models_dir=None):
    """Image file -> (FramedPortrait: the model's [size, size, 3] float portrait, its Framing in the
    photo and the face in the portrait's pixels; the photo, uint8 [H, W, 3]). ``framing="face"``
    finds a credible face on the whole photo and crops a square around it (see
    emo_core.preprocess.framing); ``"center"`` takes the centre square and finds the face in it.
    Prints the chosen face and crop in one line."""
    import numpy as np
    from PIL import Image, ImageOps

    from .preprocess.face import NoFaceError
    from .preprocess.framing import frame_portrait

    try:
        with Image.open(path) as im:
            photo = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # phone photos: upright as shown
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read the image {path}: {exc}")
    try:
        framed = frame_portrait(photo, size, mode=framing, margin=margin, if_no_face=if_missing, models_dir=models_dir)
    except NoFaceError as exc:
        raise SystemExit(f"error: {exc} (--no-face full_frame continues without one)")
    print(framed.framing.describe(), file=sys.stderr)
    return framed, photo


def face_conditioning(pipe, portrait, face, expand: float, models_dir):
    """(face-locator mask [H, W], region masks per level or None, identity embedding or None) of
    ``face`` (in the portrait's pixels; score 0: the full-frame fallback)."""
    import warnings

    import numpy as np
    import torch

    from .preprocess.face import Face
    from .preprocess.masks import face_box_mask, hallo_region_masks, region_masks_per_level

    h, w = portrait.shape[:2]
    img = (portrait.numpy() * 255 + 0.5).astype(np.uint8)
    mask = face_box_mask(face, h, w, expand)
    regions = None
    if pipe.cfg.audio.region_attention:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = hallo_region_masks(face if face.score > 0 else Face(face.box_xyxy, 1.0, image_size=(h, w)), h, w,
                                   face_expand_ratio=expand)
        regions = region_masks_per_level(r, h, levels=len(pipe.cfg.unet.block_out_channels))
    embedding = None
    if pipe.cfg.identity_dim is not None and models_dir is not None and face.score > 0:
        from .preprocess.identity import FaceEmbedder

        embedding = torch.from_numpy(FaceEmbedder(models_dir=models_dir, dim=pipe.cfg.identity_dim).embed(img, face))
    return mask, regions, embedding


def generate(args) -> int:
    """The generation itself; ``main`` has validated ``args``."""
    import torch

    from . import families
    from .checkpoints import CheckpointError
    from .hub import ModelFileMissing, ensure_hallo
    from .pipeline import EmoPipeline
    from .preprocess.audio_features import load_wav2vec
    from .preprocess.audio_io import AudioError, load_audio
    from .preprocess.framing import PasteBack
    from .progress import ClipProgress
    from .video_out import Mp4Writer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
        args.dtype, torch.float32 if device.type == "cpu" else torch.float16)
    out = Path(args.output).expanduser()
    t0 = time.time()
    try:
        wave = load_audio(args.audio)
    except AudioError as exc:
        raise SystemExit(f"error: {exc}")
    if args.tiny_family is not None:
        args.tiny = True
    accelerated = False
    if args.tiny:
        family = args.tiny_family or "hallo"
        print(f"--tiny: random tiny weights ({family} layout). This only shows that the whole pipeline runs; "
              "the video is NOISE.", file=sys.stderr)
        torch.set_num_threads(1)  # tiny tensors: threads only add overhead
        pipe = EmoPipeline.tiny(seed=0, family=family, device=device)
        from .families.tiny import tiny_audio_model

        audio_model = tiny_audio_model(pipe.cfg)
        size, face_dir = (64 if args.size == 512 else args.size), None
        accelerated = family == "echomimic"  # the tiny EchoMimic stands in for the accelerated model
    else:
        weights = Path(args.weights).expanduser() if args.weights else default_weights()
        try:
            weights, model_file = resolve_weights(weights)
            if is_echomimic(weights):
                pipe, audio_model, accelerated = load_echomimic_pipeline(
                    weights, accelerated=args.accelerated, download=args.download, device=device, dtype=dtype)
                print(f"weights: echomimic model folder {weights}{' (accelerated)' if accelerated else ''}",
                      file=sys.stderr)
                face_dir = next((d for d in (weights / "face_analysis" / "models",
                                             weights.parent / "hallo" / "face_analysis" / "models") if d.is_dir()), None)
            else:
                if not (weights / "config.json").is_file():  # Hallo's layout: check (and fetch) its files
                    ensure_hallo(weights, download=args.download, exclude=() if model_file is None else
                                 ("hallo/net.pth",))
                pipe = load_pipeline(weights, model_file, device=device, dtype=dtype)
                audio_model = load_wav2vec(weights / "wav2vec" / "wav2vec2-base-960h", device=device)
                face_dir = weights / "face_analysis" / "models"
        except (ModelFileMissing, FileNotFoundError, CheckpointError, ValueError) as exc:
            raise SystemExit(f"error: {exc}")
        size = args.size
    defaults = families.family_of(pipe.cfg)  # the family's sampling defaults
    sampler, interval = sampling_choice(args, pipe)
    if args.steps is None:
        args.steps = 4 if args.tiny else defaults.accelerated_steps if accelerated else defaults.steps
    if args.cfg is None:
        args.cfg = defaults.accelerated_guidance if accelerated else defaults.guidance
    if args.reference_rule is not None:
        pipe.rule = families.reference_rule(pipe.cfg, args.reference_rule)
    multiple = pipe.cfg.size_multiple
    if size % multiple:
        raise SystemExit(f"error: --size {size} is not a multiple of {multiple}")
    framed, photo = load_portrait(args.image, size, framing=args.framing, margin=args.margin,
                                  if_missing=args.no_face, models_dir=face_dir)
    portrait = framed.portrait
    mask, regions, embedding = face_conditioning(pipe, portrait, framed.face, args.expand, face_dir)
    try:
        windows, frames = pipe.audio_conditioning(audio_model, wave, args.fps)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}")
    del audio_model
    speed = None if args.speed is None else torch.full((frames,), float(args.speed))
    ref = pipe.encode_reference(portrait, face_embedding=embedding)
    clips = -(-frames // pipe.cfg.clip_frames)
    how = (f"one latent sequence in context windows of {pipe.cfg.clip_frames}" if pipe.cfg.chaining == "context_windows"
           else f"{clips} clips of {pipe.cfg.clip_frames}")
    print(f"{len(wave) / 16000:.2f} s of audio -> {frames} frames at {args.fps:g} fps, {how}, {args.steps} steps, "
          f"cfg {args.cfg:g}, {size}x{size} on {device}"
          + ("" if (sampler, interval) == ("ddim", None) else f"; sampler {sampler}"
             + ("" if interval is None else f", guidance at sigmas {interval[0]:g} to {interval[1]:g}")),
          file=sys.stderr)

    paste = PasteBack(photo, framed.framing, feather=args.feather) if args.paste_back else None
    if paste is not None:
        print(f"pasting the animated square back into the {photo.shape[1]}x{photo.shape[0]} photo "
              f"(feather {args.feather:g})", file=sys.stderr)
    # clips done / total, frames and time left: one line redrawn on a terminal, a line per clip in a log
    progress = ClipProgress(frames, pipe.cfg.clip_frames, sys.stderr)
    try:
        with Mp4Writer(out, args.fps, audio=wave, sample_rate=16000, crf=args.crf) as writer:
            for clip in pipe.generate(ref, windows, face_mask=mask, region_masks=regions, speed=speed,
                                      steps=args.steps, guidance=args.cfg, seed=args.seed,
                                      motion_start=args.motion_start, callback=progress, num_frames=frames,
                                      sampler=sampler, guidance_interval=interval, join_denoise=args.join_denoise,
                                      speed_guidance=args.speed_guidance,
                                      noise_correlation=args.noise_correlation,
                                      reference_box=None if framed.face is None or framed.face.score <= 0
                                      else framed.face.box_xyxy):
                for part in ([clip] if paste is None else paste.iter(clip)):  # the photo's size, a few frames at a time
                    writer.write(part)
    except KeyboardInterrupt as exc:
        progress.close()
        print(f"interrupted: {out} was not written", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    finally:
        progress.close()
    print(f"wrote {out} ({writer.frames_written} frames, {time.time() - t0:.1f} s)", file=sys.stderr)
    return 0


def sampling_choice(args, pipe) -> tuple[str, tuple[float, float] | None]:
    """(sampler, guidance interval) of --preset and --sampler; the preset also fills --steps and
    --cfg where they were not given."""
    from .sampling.presets import preset

    sampler, interval = args.sampler or "ddim", None
    if args.preset is not None:
        chosen = preset(args.preset, "--preset")
        args.steps = chosen.steps if args.steps is None else args.steps
        args.cfg = chosen.guidance if args.cfg is None else args.cfg
        sampler, interval = args.sampler or chosen.sampler, chosen.guidance_interval
    if pipe.cfg.chaining == "context_windows" and (sampler, interval) != ("ddim", None):
        raise SystemExit(f"error: --sampler/--preset: this model ({pipe.cfg.family}) samples the whole video in "
                         f"context windows with DDIM only; got sampler {sampler}"
                         + ("" if interval is None else " with a guidance interval"))
    return sampler, interval


def load_pipeline(folder: Path, model_file: Path | None, *, device, dtype):
    """EmoPipeline of a model folder, or of one checkpoint file with the VAE of its folder; says
    which it read (one line)."""
    from .checkpoints import detect_format
    from .pipeline import EmoPipeline

    if model_file is None:
        print(f"weights: {detect_format(folder)} model folder {folder}", file=sys.stderr)
    else:
        print(f"weights: {detect_format(model_file)} checkpoint file {model_file} (VAE, audio and face models from "
              f"{folder})", file=sys.stderr)
    return EmoPipeline.from_folder(folder if model_file is None else model_file, device=device, dtype=dtype)


def main(args) -> int:
    """Validates every option first (``error: <option>: ...`` on stderr, exit code 2), then
    generates. Ctrl-C and SIGTERM stop it and leave no partial file (exit codes 130 / 143)."""
    try:
        validate_args(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .checkpoints import CheckpointError
    from .video_out import VideoWriteError

    with sigterm_as_interrupt():
        try:
            return generate(args)
        except CheckpointError as exc:  # any model file (network, VAE, audio, face models) refused
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except VideoWriteError as exc:  # e.g. the disk filled up: the partial file is already deleted
            print(f"error: {args.output} was not written: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:
            print(f"interrupted: {args.output} was not written", file=sys.stderr)
            return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
