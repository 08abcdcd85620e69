"""``python -m emo_core evaluate --generated DIR [--reference DIR] [--out report.json]``

Writes the report as JSON (every number with its protocol, counts and skips) and prints a
readable table. Network files are looked up in ``<models-dir>/eval`` and
``<models-dir>/face``; add ``--download`` to fetch missing ones (otherwise the metric is
skipped and the report says which file to put where). Long videos: ``long_video`` reports
identity and mouth/loudness correlation per ``--window-seconds`` (default a minute) and their
drift; with ``--clip-frames`` (the generator's clip length) also how visible the clip joins are.
"""
from __future__ import annotations

from pathlib import Path

from .pipeline import ALL_METRICS, EvalConfig, evaluate


def add_arguments(parser) -> None:
    parser.add_argument("--generated", required=True, help="folder of generated videos")
    parser.add_argument("--reference", help="folder of ground-truth videos (same file stems pair up)")
    parser.add_argument("--reference-images", help="folder of reference portraits for F-SIM (same stems)")
    parser.add_argument("--out", default=None, help="JSON report path (default: <generated>/emo_eval.json)")
    parser.add_argument("--metrics", default=",".join(ALL_METRICS),
                        help=f"comma-separated subset of {','.join(ALL_METRICS)}")
    parser.add_argument("--models-dir", default=None, help="models folder (default: $EMO_MODELS_DIR or ~/.cache/emo_portrait/models)")
    parser.add_argument("--download", action="store_true", help="download missing network files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--expression", default="auto", choices=["auto", "blendshapes", "landmarks"],
                        help="E-FID expression extractor (3D face models: use the Python API)")
    parser.add_argument("--fid-frame-stride", type=int, default=1)
    parser.add_argument("--reference-stats", action="append", default=[], metavar="METRIC=NPZ",
                        help="reuse saved reference statistics, e.g. fid=hdtf_fid.npz (repeatable)")
    parser.add_argument("--save-stats", default=None, help="folder to save feature statistics to")
    parser.add_argument("--max-frames", type=int, default=None, help="read at most this many frames per video")
    parser.add_argument("--window-seconds", type=float, default=60.0,
                        help="long_video: identity and mouth/loudness correlation per window of this many seconds "
                             "(default 60: per minute), and their drift, last window minus first")
    parser.add_argument("--clip-frames", type=int, default=None,
                        help="long_video: the generator's clip length in frames; adds the clip-join statistic "
                             "(|d yaw| across joins / inside clips, about 1 = seamless)")


def _load_folder(folder, max_frames, report_skips):
    from .video_io import IMAGE_EXTENSIONS, VideoInputError, list_media, read_video

    videos = []
    for path in list_media(folder):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            continue
        try:
            videos.append(read_video(path, max_frames=max_frames))
        except VideoInputError as err:
            report_skips.append({"video": path.name, "metric": "all", "reason": str(err)})
    return videos


def main(args) -> int:
    from .video_io import IMAGE_EXTENSIONS, list_media, read_image

    skips = []
    generated = _load_folder(args.generated, args.max_frames, skips)
    if not generated:
        raise SystemExit(f"no readable videos in {args.generated}")
    reference = _load_folder(args.reference, args.max_frames, skips) if args.reference else []
    images = {}
    if args.reference_images:
        images = {p.stem: read_image(p) for p in list_media(args.reference_images)
                  if p.suffix.lower() in IMAGE_EXTENSIONS}
    stats = {}
    for item in args.reference_stats:
        metric, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--reference-stats expects METRIC=PATH, got {item!r}")
        stats[metric] = path
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if not args.window_seconds > 0:
        raise SystemExit(f"--window-seconds: expected a number of seconds > 0, got {args.window_seconds:g}")
    if args.clip_frames is not None and args.clip_frames < 1:
        raise SystemExit(f"--clip-frames: expected a clip length >= 1 frame, got {args.clip_frames}")
    config = EvalConfig(metrics=metrics, models_dir=args.models_dir, download=args.download, device=args.device,
                        expression=args.expression, fid_frame_stride=args.fid_frame_stride,
                        reference_stats=stats, save_stats_dir=args.save_stats, window_s=args.window_seconds,
                        clip_frames=args.clip_frames)
    report = evaluate(generated, reference, config, reference_images=images)
    report.skips[:0] = skips
    report.inputs.update(generated_dir=str(args.generated), reference_dir=str(args.reference or ""))
    out = Path(args.out) if args.out else Path(args.generated) / "emo_eval.json"
    report.save_json(out)
    table = report.format_table()
    out.with_suffix(".txt").write_text(table + "\n")
    print(table)
    print(f"\nreport: {out}")
    return 0
