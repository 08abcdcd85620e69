"""``evaluate``: all metrics over a set of generated videos and (optionally) reference videos.

Pairing: a generated and a reference video with the same file stem form a pair; the pair's
reference portrait for F-SIM is the reference video's first frame unless an image is given
explicitly (``reference_images[stem]``). Set metrics (FID, FVD, E-FID) use every generated and
every reference video; statistics of the reference set can be saved and reused
(``EvalConfig.save_stats_dir`` / ``reference_stats``).

Each metric needs its network; a network that cannot be loaded (file missing offline, mediapipe
absent) turns the metric into "skipped" with the reason, and the other metrics still run.
Videos that cannot be used for a metric (too short, no audio, no face) are skipped for that
metric and listed in the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import motion
from .long_video import LONG_VIDEO_PROTOCOL, long_video_stats, mouth_series
from .report import EvalReport, MetricResult
from .stats import FeatureStats, StatsAccumulator
from .video_io import Video

ALL_METRICS = ("fid", "fvd", "syncnet", "fsim", "efid", "motion", "long_video")


@dataclass
class EvalConfig:
    metrics: tuple = ALL_METRICS
    models_dir: str | Path | None = None
    download: bool = False
    device: str = "cpu"
    expression: str = "auto"          # auto | 3dmm | blendshapes | landmarks
    fid_frame_stride: int = 1         # use every n-th frame for FID
    reference_stats: dict = field(default_factory=dict)   # metric -> .npz of reference statistics
    save_stats_dir: str | Path | None = None
    window_s: float = 60.0            # long_video: identity and mouth/loudness per window of this many seconds
    clip_frames: int | None = None    # long_video: the generator's clip length, for the clip-join statistic


@dataclass
class Networks:
    """Loaded networks; any may be None (then ``unavailable[name]`` says why)."""
    inception: object = None
    i3d: object = None
    syncnet: object = None
    face_analyzer: object = None      # .analyze_video(frames) -> [Face | None]
    face_embedder: object = None      # .embed(image, face) -> vector
    expression: object = None         # extractor(frames, faces) -> (features, skipped)
    unavailable: dict = field(default_factory=dict)


def load_networks(config: EvalConfig, reference_given: bool) -> Networks:
    from .weights import resolve_weights

    net = Networks()
    need = set(config.metrics)
    if "fid" in need and (reference_given or "fid" in config.reference_stats):
        try:
            from .inception import load_fid_inception
            net.inception = load_fid_inception(resolve_weights("inception", config.models_dir, config.download),
                                               config.device)
        except Exception as err:  # a metric without its network is reported, not fatal
            net.unavailable["inception"] = str(err)
    if "fvd" in need:
        try:
            from .i3d import load_i3d
            net.i3d = load_i3d(resolve_weights("i3d", config.models_dir, config.download), config.device)
        except Exception as err:
            net.unavailable["i3d"] = str(err)
    if "syncnet" in need:
        try:
            from .syncnet import load_syncnet
            net.syncnet = load_syncnet(resolve_weights("syncnet", config.models_dir, config.download), config.device)
        except Exception as err:
            net.unavailable["syncnet"] = str(err)
    if need & {"fvd", "syncnet", "fsim", "efid", "motion", "long_video"}:
        try:
            from emo_core.preprocess.face import FaceAnalyzer
            net.face_analyzer = FaceAnalyzer(backend="auto", models_dir=_sub(config.models_dir, "face"),
                                             download=config.download)
        except Exception as err:
            net.unavailable["face_analyzer"] = f"{type(err).__name__}: {err}"
    if need & {"fsim", "long_video"}:
        try:
            from emo_core.preprocess.identity import FaceEmbedder
            embedder = FaceEmbedder(_sub(config.models_dir, "face"))
            if getattr(embedder, "available", True):
                net.face_embedder = embedder
            else:  # it would return zero embeddings
                net.unavailable["face_embedder"] = (
                    f"ArcFace model (glintr100.onnx or w600k_r50.onnx) not found in {_sub(config.models_dir, 'face')}; "
                    "get glintr100.onnx from https://huggingface.co/fudan-generative-ai/hallo (face_analysis/models/)")
        except Exception as err:
            net.unavailable["face_embedder"] = f"{type(err).__name__}: {err}"
    if "efid" in need:
        from .expression import make_expression_extractor
        try:
            net.expression = make_expression_extractor(config.expression)
        except ValueError as err:
            net.unavailable["expression"] = str(err)
    return net


def _sub(models_dir, name):
    return None if models_dir is None else Path(models_dir) / name


def _boxes(faces):
    return None if faces is None else [None if f is None else np.asarray(f.box_xyxy, np.float64) for f in faces]


class _Faces:
    """Face analysis once per video, shared by every metric; also the per-frame F-SIM of each
    video (``identity``), shared by fsim and long_video."""

    def __init__(self, analyzer):
        self.analyzer = analyzer
        self.cache = {}
        self.identity = {}   # id(video) -> fsim.FsimResult against its reference portrait

    def __call__(self, video: Video):
        if self.analyzer is None:
            return None
        key = id(video)
        if key not in self.cache:
            self.cache[key] = self.analyzer.analyze_video(video.frames)
        return self.cache[key]


def evaluate(generated: list[Video], reference: list[Video] | None = None, config: EvalConfig | None = None,
             networks: Networks | None = None, reference_images: dict | None = None) -> EvalReport:
    config = config or EvalConfig()
    reference = reference or []
    reference_images = reference_images or {}
    if not generated:
        raise ValueError("no generated videos to evaluate")
    unknown = set(config.metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; known: {list(ALL_METRICS)}")
    net = networks or load_networks(config, bool(reference))
    report = EvalReport(inputs={"generated_videos": len(generated), "reference_videos": len(reference),
                                "metrics": list(config.metrics)})
    faces = _Faces(net.face_analyzer)
    _check_pairs(generated, reference, report)
    runners = {"fid": _fid, "fvd": _fvd, "efid": _efid, "syncnet": _syncnet, "fsim": _fsim, "motion": _motion,
               "long_video": _long_video}
    for name in config.metrics:
        runners[name](generated, reference, config, net, faces, report, reference_images)
    return report


def _stem(v: Video) -> str:
    return Path(v.name).stem


def _check_pairs(generated, reference, report):
    ref = {_stem(v): v for v in reference}
    sizes = {v.size for v in generated}
    if len(sizes) > 1:
        report.warnings.append(f"generated videos have different frame sizes {sorted(sizes)}; "
                               "each is resized to the network's input size")
    for g in generated:
        r = ref.get(_stem(g))
        if r is None:
            continue
        if r.size != g.size:
            report.warnings.append(f"{g.name}: generated frames are {g.size[1]}x{g.size[0]}, reference "
                                   f"{r.size[1]}x{r.size[0]}; set metrics resize both, paired values are per video")
        if r.num_frames != g.num_frames:
            report.warnings.append(f"{g.name}: {g.num_frames} generated frames vs {r.num_frames} reference frames")
        if abs(r.fps - g.fps) > 1e-3:
            report.warnings.append(f"{g.name}: generated at {g.fps:.3f} fps, reference at {r.fps:.3f} fps")


def _set_metric(name, network_key, protocol, featurise, generated, reference, config, net, report):
    """Shared path of FID / FVD / E-FID: features of both sets -> statistics -> Fréchet distance."""
    if getattr(net, network_key) is None:
        report.add(MetricResult(name, None, protocol, skipped_reason=net.unavailable.get(network_key, "network not loaded")))
        return
    cached = config.reference_stats.get(name)
    if not reference and not cached:
        report.add(MetricResult(name, None, protocol, skipped_reason="needs reference videos or reference statistics"))
        return
    stats = {}
    for label, videos in (("generated", generated),) + ((("reference", reference),) if not cached else ()):
        acc = StatsAccumulator(protocol={"metric": name, **protocol})
        for v in videos:
            try:
                feats, note = featurise(v)
            except ValueError as err:
                report.skip(v.name, name, str(err))
                continue
            if note:
                report.skip(v.name, name, note)
            acc.add(feats)
        try:
            stats[label] = acc.finalize()
        except ValueError as err:
            report.add(MetricResult(name, None, protocol, skipped_reason=f"{label} set: {err}"))
            return
    if cached:
        stats["reference"] = FeatureStats.load(cached)
    if config.save_stats_dir:
        for label, st in stats.items():
            st.save(Path(config.save_stats_dir) / f"{name}_{label}_stats.npz")
    try:
        value = stats["generated"].frechet(stats["reference"])
    except ValueError as err:
        report.add(MetricResult(name, None, protocol, skipped_reason=str(err)))
        return
    report.add(MetricResult(name, value, {**stats["generated"].protocol, **protocol},
                            counts={"generated_samples": stats["generated"].count,
                                    "reference_samples": stats["reference"].count}))


def _fid(generated, reference, config, net, faces, report, _):
    from .inception import FID_PROTOCOL, inception_features

    def featurise(v):
        return inception_features(net.inception, v.frames[::config.fid_frame_stride], device=config.device).numpy(), ""

    _set_metric("fid", "inception", {**FID_PROTOCOL, "frame_stride": config.fid_frame_stride},
                featurise, generated, reference, config, net, report)


def _fvd(generated, reference, config, net, faces, report, _):
    from .i3d import CLIP_FRAMES, FVD_PROTOCOL, face_clips

    crops = set()

    def featurise(v):
        clips, rule = face_clips(v.frames, _boxes(faces(v)))
        crops.add(rule)
        if len(clips) == 0:
            raise ValueError(f"{v.num_frames} frames: shorter than one {CLIP_FRAMES}-frame clip")
        return net.i3d(clips), ""

    fps = sorted({round(v.fps, 3) for v in generated + reference})
    protocol = {**FVD_PROTOCOL, "fps": fps[0] if len(fps) == 1 else fps}
    _set_metric("fvd", "i3d", protocol, featurise, generated, reference, config, net, report)
    if "fvd" in report.metrics and crops:
        report.metrics["fvd"].protocol["crop"] = " | ".join(sorted(crops))


def _efid(generated, reference, config, net, faces, report, _):
    if net.face_analyzer is None:
        report.add(MetricResult("efid", None, skipped_reason="face analysis unavailable: "
                                + net.unavailable.get("face_analyzer", "")))
        return
    protocol = dict(getattr(net.expression, "protocol", {})) if net.expression is not None else {}

    def featurise(v):
        feats, skipped = net.expression(v.frames, faces(v))
        if len(feats) == 0:
            raise ValueError("no face with landmarks in any frame")
        return feats, (f"{skipped} frames without a usable face" if skipped else "")

    _set_metric("efid", "expression", protocol, featurise, generated, reference, config, net, report)


def _syncnet(generated, reference, config, net, faces, report, _):
    from .syncnet import SYNCNET_PROTOCOL, combine_results, evaluate_sync

    if net.syncnet is None:
        report.add(MetricResult("lse", None, SYNCNET_PROTOCOL, skipped_reason=net.unavailable.get("syncnet", "")))
        return
    if net.face_analyzer is None:
        report.add(MetricResult("lse", None, SYNCNET_PROTOCOL,
                                skipped_reason="face analysis unavailable: " + net.unavailable.get("face_analyzer", "")))
        return
    out = {}
    for label, videos in (("generated", generated), ("reference", reference)):
        results = []
        for v in videos:
            if v.audio is None:
                report.skip(v.name, "syncnet", f"no audio ({v.audio_note or 'no audio track'})")
                continue
            try:
                r = evaluate_sync(net.syncnet, v.frames, v.fps, v.audio, _boxes(faces(v)), device=config.device)
            except ValueError as err:
                report.skip(v.name, "syncnet", str(err))
                continue
            if r.dropped_frames:
                report.skip(v.name, "syncnet", f"{r.dropped_frames} frames outside usable face tracks")
            report.per_video.setdefault(v.name, {})["syncnet"] = {
                "lse_d": r.min_dist, "lse_c": r.confidence, "offset_frames": r.offset, "tracks": r.tracks}
            results.append(r)
        out[label] = combine_results(results) if results else None
    g = out["generated"]
    if g is None:
        report.add(MetricResult("lse", None, SYNCNET_PROTOCOL, skipped_reason="no generated video could be scored"))
        return
    extra = {"lse_c": g.confidence, "av_offset_frames": g.offset}
    if out["reference"] is not None:
        extra.update(lse_d_reference=out["reference"].min_dist, lse_c_reference=out["reference"].confidence)
    report.add(MetricResult("lse_d", g.min_dist, SYNCNET_PROTOCOL, counts={"windows": g.num_windows}, extra=extra))
    report.add(MetricResult("lse_c", g.confidence, SYNCNET_PROTOCOL, counts={"windows": g.num_windows},
                            extra={k: v for k, v in extra.items() if k != "lse_c"}))


def _fsim(generated, reference, config, net, faces, report, reference_images):
    from .fsim import FSIM_PROTOCOL

    missing = [k for k in ("face_analyzer", "face_embedder") if getattr(net, k) is None]
    if missing:
        report.add(MetricResult("fsim", None, FSIM_PROTOCOL,
                                skipped_reason="; ".join(f"{k}: {net.unavailable.get(k, 'not loaded')}" for k in missing)))
        return
    refs = {_stem(v): v for v in reference}
    sums = {"generated": [0.0, 0], "reference": [0.0, 0]}
    for g in generated:
        ref_video = refs.get(_stem(g))
        ref_emb = _portrait_embedding(g, refs, reference_images, net, report, "fsim")
        if ref_emb is None:
            continue
        pairs = [("generated", g)] + ([("reference", ref_video)] if ref_video is not None else [])
        for label, v in pairs:
            try:
                r = _identity(v, ref_emb, net, faces)
            except ValueError as err:
                report.skip(v.name, "fsim", str(err))
                continue
            if r.skipped_frames:
                report.skip(v.name, "fsim", f"{r.skipped_frames} frames without a face")
            sums[label][0] += r.mean * r.frames_with_face
            sums[label][1] += r.frames_with_face
            report.per_video.setdefault(v.name, {})["fsim"] = r.mean
    total, n = sums["generated"]
    if n == 0:
        report.add(MetricResult("fsim", None, FSIM_PROTOCOL, skipped_reason="no generated frame could be scored"))
        return
    extra = {}
    if sums["reference"][1]:
        extra["fsim_ground_truth"] = sums["reference"][0] / sums["reference"][1]
    report.add(MetricResult("fsim", total / n, FSIM_PROTOCOL, counts={"frames": n}, extra=extra))


def _portrait_embedding(g: Video, refs: dict, reference_images: dict, net: Networks, report: EvalReport,
                        metric: str):
    """ArcFace embedding of generated video ``g``'s reference portrait: ``reference_images[stem]``,
    else the same-stem reference video's first frame; None (and a skip under ``metric``) if none."""
    stem = _stem(g)
    image = reference_images.get(stem)
    if image is None and refs.get(stem) is not None:
        image = refs[stem].frames[0]
    if image is None:
        report.skip(g.name, metric, "no reference image or same-named reference video")
        return None
    ref_face = net.face_analyzer.analyze_video([image])[0]
    if ref_face is None:
        report.skip(g.name, metric, "no face in the reference image")
        return None
    return net.face_embedder.embed(image, ref_face)


def _identity(v: Video, ref_emb, net: Networks, faces: _Faces):
    """Per-frame F-SIM of ``v`` against ``ref_emb`` (``fsim.face_similarity``), computed once per
    video; ValueError when no frame has a face."""
    from .fsim import face_similarity

    key = id(v)
    if key not in faces.identity:
        faces.identity[key] = face_similarity(net.face_embedder.embed, v.frames, faces(v), ref_emb)
    return faces.identity[key]


def video_motion(v: Video, faces) -> dict:
    """Motion statistics of one video (face-dependent parts only when faces are given)."""
    out = {"flicker": motion.flicker(v.frames)} if v.num_frames >= 3 else {}
    if faces is None:
        return out
    rots, idx = motion.rotations_from_faces(faces)
    if len(idx) >= 2:
        speed = None
        try:  # EMO's speed signal: 5-frame moving average of the geodesic speed
            from emo_core.preprocess.pose import rotation_speed
            speed = np.asarray(rotation_speed(rots), np.float64)
        except ImportError:
            pass
        out["head"] = motion.head_motion_stats(rots, v.fps, speed)
        out["head"]["frames_with_pose"] = int(len(idx))
    opening = mouth_series(faces, v.num_frames)
    out["mouth_opening_mean"] = float(np.nanmean(opening)) if np.isfinite(opening).any() else float("nan")
    if v.audio is not None and np.isfinite(opening).sum() >= 3:
        loud = motion.loudness_per_frame(v.audio, 16000, v.fps, v.num_frames)
        out["mouth_loudness"] = motion.lagged_correlation(opening, loud, max_lag=max(1, int(round(v.fps / 5))))
    return out


MOTION_PROTOCOL = {
    "head_pose": "face-mesh rotations (preprocess.pose), geodesic speed between frames with a face, "
                 "5-frame moving average (preprocess.pose.rotation_speed)",
    "mouth": "inner-lip gap (13-14) / outer eye corners (33-263)",
    "loudness": "RMS dB per 1/fps window",
    "flicker": "grey-level mean |I(t)-I(t-1)| and |I(t+1)-2I(t)+I(t-1)|, 0..255",
}


def _motion(generated, reference, config, net, faces, report, _):
    summary = {}
    for label, videos in (("generated", generated), ("reference", reference)):
        rows = []
        for v in videos:
            f = faces(v)
            if f is None:
                report.skip(v.name, "motion", "face analysis unavailable: only flicker computed")
            m = video_motion(v, f)
            if f is not None and "head" not in m:
                report.skip(v.name, "motion", "fewer than 2 frames with face landmarks")
            report.per_video.setdefault(v.name, {})["motion"] = m
            rows.append(m)
        if rows:
            summary[label] = _mean_nested(rows)
    syncnet_offset = report.metrics.get("lse_d")
    for label, s in summary.items():
        frames = sum(v.num_frames for v in (generated if label == "generated" else reference))
        flat = _flatten(s)
        value = flat.get("head.rotation_speed_mean_deg_per_frame")
        if label == "generated" and syncnet_offset is not None:
            flat["av_offset_frames(syncnet)"] = syncnet_offset.extra.get("av_offset_frames")
        elif "mouth_loudness.best_lag_frames" in flat:
            flat["av_offset_frames(mouth-loudness lag, proxy)"] = flat["mouth_loudness.best_lag_frames"]
        report.add(MetricResult(f"motion_{label}", value, MOTION_PROTOCOL,
                                counts={"videos": len(generated if label == "generated" else reference),
                                        "frames": frames}, extra=flat,
                                skipped_reason="" if value is not None else "no head pose (needs face landmarks)"))


def _long_video(generated, reference, config, net, faces, report, reference_images):
    """Identity and mouth/loudness per window of ``config.window_s`` seconds, their drift (last
    window - first) and, with ``config.clip_frames``, the clip-join ratio of the head yaw; per
    video in ``per_video[name]["long_video"]``, averaged over the generated videos in
    ``identity_drift``, ``mouth_r_drift`` and ``clip_joins``."""
    p = LONG_VIDEO_PROTOCOL
    protocols = {"identity_drift": {k: p[k] for k in ("windows", "identity", "drift")},
                 "mouth_r_drift": {k: p[k] for k in ("windows", "mouth_loudness", "drift")},
                 "clip_joins": {"clip_joins": p["clip_joins"], "clip_frames": config.clip_frames}}
    for name in ("identity_drift", "mouth_r_drift"):
        protocols[name]["window_s"] = config.window_s
    names = ("identity_drift", "mouth_r_drift") + (("clip_joins",) if config.clip_frames else ())
    if net.face_analyzer is None:
        reason = "face analysis unavailable: " + net.unavailable.get("face_analyzer", "")
        for name in names:
            report.add(MetricResult(name, None, protocols[name], skipped_reason=reason))
        return
    refs = {_stem(v): v for v in reference}
    found = {"identity": [], "mouth_loudness_r": [], "join_ratio": []}
    for g in generated:
        identity = None
        if net.face_embedder is not None:
            ref_emb = _portrait_embedding(g, refs, reference_images, net, report, "long_video")
            if ref_emb is not None:
                try:
                    identity = _identity(g, ref_emb, net, faces).per_frame
                except ValueError as err:
                    report.skip(g.name, "long_video", str(err))
        if g.audio is None:
            report.skip(g.name, "long_video", f"no audio ({g.audio_note or 'no audio track'}): no mouth/loudness")
        stats = long_video_stats(g, faces(g), identity=identity, window_s=config.window_s,
                                 clip_frames=config.clip_frames)
        report.per_video.setdefault(g.name, {})["long_video"] = stats
        for key in found:
            if key in stats:
                found[key].append(stats[key])
    for name, key, missing in (
            ("identity_drift", "identity",
             net.unavailable.get("face_embedder", "no generated video with a reference portrait and a face")),
            ("mouth_r_drift", "mouth_loudness_r", "no generated video with audio and face landmarks")):
        rows = [r for r in found[key] if np.isfinite(r["drift"])]  # videos with two windows or more
        if not rows:
            why = missing if not found[key] else f"every video is shorter than two windows of {config.window_s:g} s"
            report.add(MetricResult(name, None, protocols[name], counts={"videos": 0}, skipped_reason=why))
            continue
        report.add(MetricResult(name, float(np.mean([r["drift"] for r in rows])), protocols[name],
                                counts={"videos": len(rows), "windows": int(sum(r["windows"] for r in rows))},
                                extra={"first": float(np.mean([r["first"] for r in rows])),
                                       "last": float(np.mean([r["last"] for r in rows])),
                                       "worst": float(np.min([r["worst"] for r in rows]))}))
    if config.clip_frames:
        ratios = [r for r in found["join_ratio"] if np.isfinite(r)]
        report.add(MetricResult("clip_joins", float(np.mean(ratios)) if ratios else None, protocols["clip_joins"],
                                counts={"videos": len(ratios)},
                                skipped_reason="" if ratios else "no video longer than one clip with head pose"))


def _mean_nested(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        if isinstance(vals[0], dict):
            out[k] = _mean_nested(vals)
        else:
            arr = np.asarray([float(x) for x in vals], np.float64)
            out[k] = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
