"""``python -m emo_core prepare VIDEOS_DIR OUT_DIR``: talking / singing videos -> training shards.

Per video (in parallel worker processes): decode, resample to 25 fps, find the face in
every frame (MediaPipe), crop a square around the union of the face boxes (scaled by
``--crop-scale``) and resize to ``--size``, store per-frame face boxes (crop pixels), head
rotations and rotation speeds (degrees per frame), and the audio: wav2vec features per frame
(``--audio features --wav2vec DIR``) or the 16 kHz waveform (``--audio waveform``).

Unusable videos (cannot be decoded, no audio, too short, too few frames with a face) are
skipped and listed with their reasons in ``OUT_DIR/manifest.json``. Shards are written
atomically and the manifest is updated after every video, so an interrupted run resumes
where it stopped (``--retry-skipped`` also retries the skipped ones).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

from .data import read_manifest, write_manifest, write_shard

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


class SkipVideo(Exception):
    """This video cannot become a shard; the message is the reason."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("videos_dir", help="folder of videos with audio (searched recursively)")
    parser.add_argument("out_dir", help="folder for the shards and manifest.json")
    parser.add_argument("--size", type=int, default=512, help="side of the square face crops (default 512)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--crop-scale", type=float, default=1.6,
                        help="crop side = this x the larger side of the union of the face boxes")
    parser.add_argument("--min-frames", type=int, default=16, help="skip videos shorter than this (at --fps)")
    parser.add_argument("--min-face-fraction", type=float, default=0.8,
                        help="skip videos where fewer frames than this fraction show a face")
    parser.add_argument("--audio", choices=("features", "waveform"), default="waveform",
                        help="store wav2vec features per frame (needs --wav2vec) or the 16 kHz waveform")
    parser.add_argument("--wav2vec", default=None, help="wav2vec2 folder (transformers layout) for --audio features")
    parser.add_argument("--frame-format", choices=("jpeg", "raw"), default="jpeg")
    parser.add_argument("--workers", type=int, default=max(1, min(4, (multiprocessing.cpu_count() or 2) // 2)))
    parser.add_argument("--face-backend", default="auto", choices=("auto", "tasks", "solutions"))
    parser.add_argument("--models-dir", default=None, help="folder with MediaPipe .task files (tasks backend)")
    parser.add_argument("--retry-skipped", action="store_true", help="retry videos skipped by an earlier run")


def find_videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def shard_name(video: Path, root: Path) -> str:
    rel = str(video.relative_to(root))
    return f"{video.stem}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}.safetensors"


_WORKER: dict = {}


def _init_worker(opts: dict) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.clear()
    _WORKER["opts"] = opts


def _analyzer():
    if "faces" not in _WORKER:
        from ..preprocess.face import FaceAnalyzer

        o = _WORKER["opts"]
        _WORKER["faces"] = FaceAnalyzer(o["face_backend"], o["models_dir"], landmarks=True, download=False)
    return _WORKER["faces"]


def _audio_extractor():
    if "audio" not in _WORKER:
        from ..preprocess.audio_features import AudioFeatureExtractor, load_wav2vec

        o = _WORKER["opts"]
        _WORKER["audio"] = AudioFeatureExtractor(load_wav2vec(o["wav2vec"]), fps=o["fps"])
    return _WORKER["audio"]


def _fill_boxes(faces) -> np.ndarray:
    idx = [i for i, f in enumerate(faces) if f is not None]
    out = []
    for i in range(len(faces)):
        j = i if faces[i] is not None else min(idx, key=lambda k: (abs(k - i), k))
        out.append(faces[j].box_xyxy)
    return np.asarray(out, np.float32)


def prepare_video(path: Path, out_file: Path) -> dict:
    """One video -> one shard. Raises SkipVideo with the reason when it is unusable."""
    from ..eval.video_io import VideoInputError, crop_box, read_video, resample_indices, square_box
    from ..preprocess.pose import head_rotations, rotation_speed

    o = _WORKER["opts"]
    try:
        video = read_video(path, with_audio=True)
    except VideoInputError as exc:
        raise SkipVideo(f"cannot decode: {exc}") from exc
    if video.audio is None:
        raise SkipVideo(f"no audio ({video.audio_note or 'no audio track'})")
    idx = resample_indices(video.num_frames, video.fps, o["fps"])
    hop = 16000 / o["fps"]
    t = min(len(idx), int(len(video.audio) // hop))
    if t < o["min_frames"]:
        raise SkipVideo(f"too short: {t} frames at {o['fps']:g} fps with audio (need {o['min_frames']})")
    frames = video.frames[idx[:t]]
    faces = _analyzer().analyze_video(frames)
    found = sum(f is not None for f in faces)
    if found < o["min_face_fraction"] * t:
        raise SkipVideo(f"no face in {t - found} of {t} frames (need a face in {o['min_face_fraction']:.0%})")
    boxes = _fill_boxes(faces)
    union = np.array([boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()])
    x0, y0, x1, y1 = square_box(union, o["crop_scale"])
    scale = o["size"] / (x1 - x0)
    crops = np.stack([crop_box(f, (x0, y0, x1, y1), o["size"]) for f in frames])
    crop_boxes = (boxes - np.array([x0, y0, x0, y0], np.float32)) * scale
    try:
        rotations = head_rotations(faces)
    except ValueError as exc:
        raise SkipVideo(f"head pose unavailable: {exc}") from exc
    speed = rotation_speed(rotations)  # frames are already at the target fps
    wave = video.audio[: int(round(t * hop))].astype(np.float32)
    feats = None
    if o["audio"] == "features":
        feats = _audio_extractor().encode(wave, t).float().cpu().numpy()
    write_shard(out_file, crops, crop_boxes, rotations, speed, fps=o["fps"], source=str(path),
                audio_features=feats, audio=wave if feats is None else None,
                audio_model=o["wav2vec"] or "", frame_format=o["frame_format"])
    return {"shard": out_file.name, "frames": int(t), "source": str(path)}


def _job(path: str, out_file: str) -> dict:
    try:
        return {"ok": True, **prepare_video(Path(path), Path(out_file))}
    except SkipVideo as exc:
        return {"ok": False, "video": path, "reason": str(exc)}
    except Exception as exc:  # a bug or an unexpected file: report it, keep going with the others
        return {"ok": False, "video": path, "reason": f"failed: {type(exc).__name__}: {exc}"}


def main(args) -> int:
    src, out = Path(args.videos_dir), Path(args.out_dir)
    if not src.is_dir():
        print(f"error: {src} is not a folder", file=sys.stderr)
        return 2
    if args.audio == "features" and not args.wav2vec:
        print("error: --audio features needs --wav2vec DIR (a wav2vec2 folder); or use --audio waveform",
              file=sys.stderr)
        return 2
    if args.size % 64:
        print(f"error: --size {args.size} must be a multiple of 64 (VAE factor 8 x UNet downsampling 8)", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.part"):  # left by a crash: never a shard, remove
        stale.unlink()
    manifest = read_manifest(out)
    done = {s["shard"] for s in manifest["shards"]}
    skipped = {s["video"] for s in manifest["skipped"]}
    videos = find_videos(src)
    if not videos:
        print(f"error: no videos ({', '.join(VIDEO_EXTENSIONS)}) in {src}", file=sys.stderr)
        return 2
    todo = []
    for v in videos:
        name = shard_name(v, src)
        if name in done:
            continue
        if (out / name).is_file():  # written before a crash, manifest not yet updated: keep it
            from .data import shard_info

            info = shard_info(out / name)
            manifest["shards"].append({"shard": name, "frames": info.num_frames, "source": str(v)})
            continue
        if str(v) in skipped and not args.retry_skipped:
            continue
        todo.append((v, name))
    if args.retry_skipped:
        manifest["skipped"] = [s for s in manifest["skipped"] if s["video"] not in {str(v) for v, _ in todo}]
    write_manifest(out, manifest)
    print(f"{len(videos)} videos: {len(videos) - len(todo)} already done or skipped, {len(todo)} to prepare "
          f"with {args.workers} worker(s)")
    opts = {"fps": args.fps, "size": args.size, "crop_scale": args.crop_scale, "min_frames": args.min_frames,
            "min_face_fraction": args.min_face_fraction, "audio": args.audio, "wav2vec": args.wav2vec,
            "frame_format": args.frame_format, "face_backend": args.face_backend, "models_dir": args.models_dir}
    t0 = time.time()
    results = []
    if args.workers <= 1:
        _init_worker(opts)
        for v, name in todo:
            results.append(_record(manifest, out, _job(str(v), str(out / name))))
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker, initargs=(opts,)) as ex:
            futs = {ex.submit(_job, str(v), str(out / name)): v for v, name in todo}
            for fut in cf.as_completed(futs):
                try:
                    r = fut.result()
                except Exception as exc:  # a worker died (e.g. killed); the video is retried next run
                    r = {"ok": False, "video": str(futs[fut]), "reason": f"worker failed: {exc}", "retry": True}
                results.append(_record(manifest, out, r))
    ok = sum(r["ok"] for r in results)
    print(f"prepared {ok}, skipped {len(results) - ok} in {time.time() - t0:.0f} s; "
          f"{len(manifest['shards'])} shards in {out / 'manifest.json'}")
    for r in results:
        if not r["ok"]:
            print(f"  skipped {r['video']}: {r['reason']}")
    return 0


def _record(manifest: dict, out: Path, r: dict) -> dict:
    if r["ok"]:
        manifest["shards"].append({k: r[k] for k in ("shard", "frames", "source")})
        print(f"  done {r['source']} -> {r['shard']} ({r['frames']} frames)")
    elif not r.get("retry"):
        manifest["skipped"].append({"video": r["video"], "reason": r["reason"]})
    write_manifest(out, manifest)
    return r
