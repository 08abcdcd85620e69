"""F-SIM, expression features, head motion, mouth/loudness, flicker: closed forms and
synthetic data with known answers."""

import numpy as np
import pytest

from emo_core.eval import motion
from emo_core.eval.expression import (EXPRESSION_POINTS, LEFT_BROW, LIPS, RIGHT_BROW,
                                      LandmarkExpressionProxy, make_expression_extractor)
from emo_core.eval.fsim import cosine_similarity, face_similarity
from emo_core.preprocess.face import Face



def _identity_embed(image, face):
    x0, y0, x1, y1 = [int(v) for v in face.box_xyxy]
    return image[y0:y1, x0:x1].astype(np.float64).ravel()


def test_fsim_identical_frames_is_one_and_skips_counted():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    face = Face(np.array([4, 4, 28, 28]), 1.0)
    ref = _identity_embed(frame, face)
    r = face_similarity(_identity_embed, [frame, frame, frame], [face, None, face], ref)
    assert r.mean == pytest.approx(1.0, abs=1e-12)
    assert r.frames_with_face == 2 and r.skipped_frames == 1 and np.isnan(r.per_frame[1])
    other = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert face_similarity(_identity_embed, [other], [face], ref).mean < 0.9
    with pytest.raises(ValueError, match="no face"):
        face_similarity(_identity_embed, [frame], [None], ref)
    assert cosine_similarity([1, 0], [0, 2]) == 0.0


def _rot(yaw_deg, pitch_deg=0.0, roll_deg=0.0):
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def test_head_motion_closed_form():
    rots = np.stack([_rot(2.0 * t) for t in range(11)])  # 2 degrees/frame about the vertical axis
    s = motion.head_motion_stats(rots, fps=25)
    assert s["rotation_speed_mean_deg_per_frame"] == pytest.approx(2.0, abs=1e-6)
    assert s["rotation_speed_std_deg_per_frame"] == pytest.approx(0.0, abs=1e-6)
    assert s["rotation_speed_mean_deg_per_s"] == pytest.approx(50.0, abs=1e-4)
    assert s["yaw_std_deg"] == pytest.approx(np.std(2.0 * np.arange(11)), abs=1e-6)
    assert s["pitch_std_deg"] == pytest.approx(0.0, abs=1e-6)
    ypr = motion.euler_yaw_pitch_roll(np.stack([_rot(10, -5, 3)]))
    np.testing.assert_allclose(ypr[0], [10, -5, 3], atol=1e-9)


def test_mouth_loudness_correlation_finds_lag():
    rng = np.random.default_rng(0)
    loud = np.convolve(rng.standard_normal(120), np.ones(5) / 5, mode="same")
    mouth = np.roll(loud, 2) + 0.01 * rng.standard_normal(120)   # mouth follows audio by 2 frames
    r = motion.lagged_correlation(mouth, loud, max_lag=5)
    assert r["best_lag_frames"] == 2 and r["corr_best"] > 0.95


def test_loudness_per_frame_levels():
    sr, fps = 16000, 25
    audio = np.concatenate([np.zeros(sr), 0.5 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr)])
    db = motion.loudness_per_frame(audio, sr, fps, 50)
    assert db[5] == -80.0
    assert db[40] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1)


def test_flicker_separates_smooth_motion_from_flicker():
    t = np.arange(20)
    ramp = np.broadcast_to((t * 5)[:, None, None, None], (20, 8, 8, 3)).astype(np.uint8)
    flick = np.broadcast_to(((t % 2) * 20 + 100)[:, None, None, None], (20, 8, 8, 3)).astype(np.uint8)
    a, b = motion.flicker(ramp), motion.flicker(flick)
    assert a["mean_abs_diff"] == pytest.approx(5.0, abs=0.01) and a["mean_abs_second_diff"] < 0.01
    assert b["mean_abs_second_diff"] == pytest.approx(40.0, abs=0.1)


def _mesh(rng, n=478):
    return rng.uniform(0, 100, (n, 3))


def test_landmark_proxy_removes_pose_and_identity():
    rng = np.random.default_rng(0)
    base = _mesh(rng)
    faces, faces_posed = [], []
    for k in range(6):
        lm = base.copy()
        lm[EXPRESSION_POINTS[:40]] += [0, k, 0]   # lips move with k
        faces.append(Face(np.zeros(4), 1.0, landmarks=lm))
        # same expression under a head rotation, scale change and shift
        posed = 1.7 * lm @ _rot(15 * k, 5, -3).T + [10, -4, 2]
        faces_posed.append(Face(np.zeros(4), 1.0, landmarks=posed))
    proxy = LandmarkExpressionProxy()
    f1, skipped = proxy([None] * 6, faces)
    f2, _ = proxy([None] * 6, faces_posed)
    assert f1.shape == (6, len(EXPRESSION_POINTS) * 3) and skipped == 0
    np.testing.assert_allclose(f1, f2, atol=1e-8)
    # another identity (different face shape) with the same expressions gives the same features
    # (its lips and brows are shaped differently; eye corners and rigid points set the scale)
    other = base.copy()
    changed = LIPS + LEFT_BROW + RIGHT_BROW
    other[changed] += rng.normal(0, 2.0, (len(changed), 3))
    faces_other = [Face(np.zeros(4), 1.0, landmarks=other + (f.landmarks - base)) for f in faces]
    f3, _ = proxy([None] * 6, faces_other)
    np.testing.assert_allclose(f1, f3, atol=1e-8)
    _, skipped = proxy([None] * 3, [faces[0], None, Face(np.zeros(4), 1.0)])
    assert skipped == 2


def test_expression_extractor_choice():
    assert isinstance(make_expression_extractor("auto"), LandmarkExpressionProxy)
    with pytest.raises(ValueError, match="3D face model"):
        make_expression_extractor("3dmm")
    ex = make_expression_extractor("auto", model=lambda crops: np.ones((len(crops), 257)))
    feats, skipped = ex([np.zeros((40, 40, 3), np.uint8)] * 2, [Face(np.array([5, 5, 30, 30]), 1.0), None])
    assert feats.shape == (1, 64) and skipped == 1
