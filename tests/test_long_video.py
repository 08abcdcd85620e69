"""Long videos (emo_core.eval.long_video): the clip-join ratio on rendered head motion, windows,
and identity / mouth-loudness per window through ``evaluate`` on a synthetic talking face."""
import numpy as np
import pytest

from emo_core.eval import motion
from emo_core.eval.long_video import drift, join_changes, join_jump, join_ratio, per_window, window_ranges
from emo_core.train import synthetic as S

SIZE = 64


def _measured_yaw(identity, yaw, mouth=0.3):
    """Renders a centred head at each yaw and reads the yaw back from the pixels."""
    frames = [S.render(identity, SIZE / 2, SIZE / 2, y, mouth, SIZE) for y in yaw]
    return np.array([S.measure_frame(f, identity)["yaw"] for f in frames])


def test_join_ratio_is_one_for_constant_motion_and_grows_with_jumps_at_the_joins():
    identity = S.Identity.random(np.random.default_rng(7))
    speed, clip, clips = 1.0, 6, 10  # 1 degree per frame, 10 clips of 6 frames: yaw -29.5 .. 29.5, no turn back
    t = np.arange(clip * clips)
    smooth = speed * (t - t.mean())
    jump = 3 * speed  # every clip starts 3 degrees further than the motion carries it
    jumpy = smooth + jump * (t // clip)
    jumpy -= jumpy.mean()
    # the definition on exact series: 1 for constant motion, (speed + jump) / speed with the jumps
    assert join_ratio(smooth, clip) == pytest.approx(1.0, abs=1e-12)
    assert join_ratio(jumpy, clip) == pytest.approx((speed + jump) / speed, rel=1e-12)
    assert join_jump(smooth, clip) == pytest.approx(speed, rel=1e-12)
    assert join_jump([jumpy, smooth], clip) == pytest.approx(speed + jump / 2, rel=1e-12)  # pooled joins
    wobbly = jumpy + 4 * speed * (-1.0) ** t  # a head wobbling inside its clips hides the jump from the ratio
    assert join_ratio(wobbly, clip) < join_ratio(jumpy, clip) and join_jump(wobbly, clip) > speed + jump

    # cut into clips and chained, as rendered and measured from the frames
    seamless = _measured_yaw(identity, smooth)
    across, inside = join_changes(seamless, clip)
    assert across.size == clips - 1 and inside.size == clips * (clip - 1)
    ratio = join_ratio(seamless, clip)
    # Tolerance: the video is seamless by construction, so the |changes| across the 9 joins are
    # draws from the same distribution as those inside (pixel-level measurement jitter); their
    # mean differs from the inside mean by about std(inside) / sqrt(joins). Allow 3 such errors.
    tol = 3 * inside.std() / np.sqrt(across.size) / inside.mean()
    assert abs(ratio - 1) <= tol, (ratio, tol)
    with_jumps = join_ratio(_measured_yaw(identity, jumpy), clip)
    assert with_jumps > 1 + tol and with_jumps >= 1 + 0.5 * jump / speed  # at least half the jump is seen


def test_join_ratio_is_the_learning_benchmarks_definition_pooled_over_videos():
    """bench/learning.py's measure: seams d[clip-1::clip] of d = |diff(yaw)| over the rest,
    pooled over all videos; NaN (frames without a measurement) changes are left out."""
    rng = np.random.default_rng(0)
    clip = 5
    videos = [np.cumsum(rng.normal(0, 1, clip * k)) for k in (3, 4)]
    seam, inner = [], []
    for yaw in videos:  # the benchmark's lines, verbatim
        d = np.abs(np.diff(yaw))
        joins = np.arange(clip - 1, len(d), clip)
        seam += list(d[joins])
        inner += list(np.delete(d, joins))
    expected = float(np.mean(seam) / max(np.mean(inner), 1e-6))
    assert join_ratio(videos, clip) == pytest.approx(expected, rel=1e-12)
    holed = videos[0].copy()
    holed[clip] = np.nan  # the first frame of clip 2: its join and the change after it are unknown
    across, inside = join_changes(holed, clip)
    full_across, full_inside = join_changes(videos[0], clip)
    assert across.size == full_across.size - 1 and inside.size == full_inside.size - 1
    assert np.isnan(join_ratio(np.arange(clip, dtype=float), clip))  # one clip: no join
    with pytest.raises(ValueError, match="clip_frames"):
        join_ratio(videos[0], 0)


def test_windows_and_drift():
    fps, window = 8.0, 1.0
    assert window_ranges(32, fps, window) == [range(0, 8), range(8, 16), range(16, 24), range(24, 32)]
    # a remainder under half a window joins the last window; from half a window on it is its own
    assert window_ranges(35, fps, window)[-1] == range(24, 35)
    assert window_ranges(36, fps, window)[-1] == range(32, 36)
    assert window_ranges(5, fps, window) == [range(0, 5)]
    rows = per_window(fps, identity=np.r_[np.ones(16), np.full(16, 0.5)], window_s=window)
    assert [r["start_s"] for r in rows] == [0.0, 1.0, 2.0, 3.0] and [r["frames"] for r in rows] == [8] * 4
    d = drift(rows, "identity")
    assert (d["first"], d["last"], d["drift"], d["worst"], d["windows"]) == (1.0, 0.5, -0.5, 0.5, 4)
    assert np.isnan(drift(rows[:1], "identity")["drift"])  # one window: no drift to speak of
    with pytest.raises(ValueError, match="one value per frame"):
        per_window(fps, mouth=np.zeros(32), loudness=np.zeros(31), window_s=window)


# ---- identity and mouth/loudness per window through evaluate() ----------------------------
class _RenderedFaces:
    """Face analysis that knows what each rendered frame shows (its mouth opening and yaw, by
    the frame's bytes; 0 for any other image, e.g. the portrait): the face box from the pixels,
    landmarks whose inner-lip gap over the eye-corner distance is the mouth opening, and a pose
    matrix of the yaw."""

    def __init__(self, identity, frames, mouth, yaw):
        self.identity = identity
        self.truth = {f.tobytes(): (m, y) for f, m, y in zip(frames, mouth, yaw)}

    def analyze_video(self, frames):
        from emo_core.preprocess.face import Face

        out = []
        for f in frames:
            found = S.measure_frame(f, self.identity)
            mouth, yaw = self.truth.get(f.tobytes(), (0.0, 0.0))
            lm = np.zeros((478, 3))
            lm[263, 0] = 1.0  # eye corners one unit apart (33 at the origin)
            lm[14, 1] = mouth  # inner lips: 13 at the origin
            pose = np.eye(4)
            pose[:3, :3] = S.yaw_rotation(np.array([yaw]))[0]
            (cx, cy), r = found["centre"], self.identity.radius * f.shape[0]
            out.append(Face(np.array([cx - r, cy - r, cx + r, cy + r]), 1.0, landmarks=lm, transformation_matrix=pose))
        return out


def test_identity_and_mouth_per_window_show_drift(tmp_path):
    """Four 1-second windows at 12 fps: in the first two the face keeps its colour and the mouth
    follows the loudness; in the last two the face colour drifts away and the mouth moves
    against the loudness. The per-window numbers and their drift must show both."""
    from emo_core.eval.pipeline import EvalConfig, Networks, evaluate
    from emo_core.eval.video_io import Video

    rng = np.random.default_rng(3)
    identity = S.Identity.random(rng)
    fps, window, clip = 12, 1.0, 4
    n = 4 * fps
    env = np.clip(S.syllable_envelope(rng, n) + 0.2 * rng.uniform(0, 1, n), 0, 1)
    wave = S.voice(rng, env, fps=fps)
    mouth = np.where(np.arange(n) < n // 2, env, 1 - env)  # second half: open when quiet
    other = S.Identity.random(rng)
    faded = S.Identity(face=(identity.face + other.face) / 2, background=identity.background, eyes=identity.eyes,
                       aspect=identity.aspect, radius=identity.radius)
    yaw = np.linspace(-20, 20, n)
    frames = np.stack([S.render(identity if i < n // 2 else faded, SIZE / 2, SIZE / 2, yaw[i], mouth[i], SIZE)
                       for i in range(n)])
    portrait = S.render(identity, SIZE / 2, SIZE / 2, 0.0, 0.0, SIZE)

    def embed(image, face):  # identity stand-in: the face colour seen from the background
        return S.measure_frame(image, identity)["colour"] - identity.background

    net = Networks(face_analyzer=_RenderedFaces(identity, frames, mouth, yaw),
                   face_embedder=type("E", (), {"embed": staticmethod(embed)})())
    video = Video(frames, float(fps), wave, name="long.mp4")
    config = EvalConfig(metrics=("fsim", "long_video"), window_s=window, clip_frames=clip)
    report = evaluate([video], None, config, net, reference_images={"long": portrait})
    stats = report.per_video["long.mp4"]["long_video"]
    rows = stats["windows"]
    assert [r["start_s"] for r in rows] == [0.0, 1.0, 2.0, 3.0] and all(r["frames"] == fps for r in rows)

    # identity: the frame-weighted mean of the windows is F-SIM; the faded windows score lower
    ident = [r["identity"] for r in rows]
    assert np.average(ident, weights=[r["identity_frames"] for r in rows]) == pytest.approx(report.value("fsim"))
    assert min(ident[:2]) > max(ident[2:])
    assert report.value("identity_drift") == pytest.approx(ident[-1] - ident[0]) and ident[-1] < ident[0]
    assert report.metrics["identity_drift"].extra["worst"] == pytest.approx(min(ident))

    # mouth vs loudness: each window's r is the evaluation's lagged correlation over that window;
    # positive where the mouth follows the loudness, negative where it moves against it
    loud = motion.loudness_per_frame(wave, 16000, fps, n)
    for r, span in zip(rows, window_ranges(n, fps, window)):
        c = motion.lagged_correlation(mouth[span.start:span.stop], loud[span.start:span.stop],
                                      max_lag=round(fps / 5))
        assert r["mouth_loudness_r"] == pytest.approx(c["corr_lag0"], abs=1e-9)
    r = [row["mouth_loudness_r"] for row in rows]
    assert min(r[:2]) > 0 > max(r[2:])
    assert report.value("mouth_r_drift") == pytest.approx(r[-1] - r[0]) and r[-1] < r[0]

    # clip joins from the head pose of the face analysis: smooth yaw, so about 1
    assert report.value("clip_joins") == pytest.approx(join_ratio(yaw, clip), rel=1e-6)
    assert report.value("clip_joins") == pytest.approx(1.0, rel=1e-6)  # constant speed, no jump
    assert stats["join_ratio"] == report.value("clip_joins")
    report.save_json(tmp_path / "r.json")  # serialisable
    assert "identity_drift" in report.format_table()


def test_long_video_without_faces_or_long_enough_video_says_why():
    from emo_core.eval.pipeline import EvalConfig, Networks, evaluate
    from emo_core.eval.video_io import Video

    frames = np.full((10, 32, 32, 3), 128, np.uint8)
    video = Video(frames, 10.0, np.zeros(16000, np.float32), name="short.mp4")
    config = EvalConfig(metrics=("long_video",), clip_frames=4)
    report = evaluate([video], None, config, Networks(unavailable={"face_analyzer": "mediapipe missing"}))
    assert all("mediapipe missing" in report.metrics[k].skipped_reason
               for k in ("identity_drift", "mouth_r_drift", "clip_joins"))
    identity = S.Identity.random(np.random.default_rng(1))
    frames = np.stack([S.render(identity, 16, 16, 0.0, 0.2, 32)] * 10)
    video = Video(frames, 10.0, np.zeros(16000, np.float32), name="short.mp4")
    net = Networks(face_analyzer=_RenderedFaces(identity, frames, np.zeros(10), np.zeros(10)),
                   unavailable={"face_embedder": "glintr100.onnx not found"})
    report = evaluate([video], None, config, net)  # 1 s of video, windows of 60 s
    assert "shorter than two windows of 60 s" in report.metrics["mouth_r_drift"].skipped_reason
    assert "glintr100.onnx" in report.metrics["identity_drift"].skipped_reason
    assert len(report.per_video["short.mp4"]["long_video"]["windows"]) == 1
