"""SyncNet: published layout loads strictly (with and without the ``__S__.`` prefix), the MFCC
front end equals python_speech_features, the offset search finds a known shift, and bad input
gives clear errors."""
import numpy as np
import pytest
import torch

from emo_core.eval.syncnet import (SyncNetS, evaluate_sync, face_tracks, load_syncnet, mfcc,
                                   offset_search)


def _chirp():
    t = np.arange(8000) / 16000
    return np.round(8000 * np.sin(2 * np.pi * (200 + 1500 * t) * t)).astype(np.int16)


def test_mfcc_matches_python_speech_features():
    got = mfcc(_chirp())
    assert got.shape == (49, 13)
    # values printed by python_speech_features 0.6: mfcc(signal, 16000)[[0, 10, 40], :5]
    expected = np.array([
        [17.9022549108, 24.8435443464, 16.0174798554, 9.2437017116, 1.5865611247],
        [19.4533444879, 19.8385571453, -1.2070188192, -20.6673966197, -32.2761454439],
        [21.3817843718, 5.7157465746, -32.6636932551, -17.5759625935, 23.7606120342]])
    np.testing.assert_allclose(got[[0, 10, 40], :5], expected, rtol=1e-8, atol=1e-8)
    psf = pytest.importorskip("python_speech_features", reason="optional cross-check")
    np.testing.assert_allclose(mfcc(_chirp()), psf.mfcc(_chirp(), 16000), atol=1e-8)


@pytest.mark.parametrize("shift", [-7, 0, 4, 15])
def test_offset_search_finds_known_shift(shift):
    rng = np.random.default_rng(abs(shift))
    n, d = 80, 32
    stream = rng.standard_normal((n + 40, d))
    video = stream[20:20 + n]
    audio = stream[20 + shift:20 + shift + n] + 0.05 * rng.standard_normal((n, d))
    # audio[i] = video[i + shift]: the audio shows each event ``shift`` frames early (audio leads)
    r = offset_search(video, audio, vshift=15)
    assert r.offset == shift
    assert r.mean_dists.shape == (31,)
    assert r.confidence > 1.0 and r.min_dist < 2.0  # edge windows meet the zero padding


def test_offset_search_shape_error():
    with pytest.raises(ValueError, match="same shape"):
        offset_search(np.zeros((4, 8)), np.zeros((5, 8)))


@pytest.mark.parametrize("prefix", ["", "__S__."])
def test_published_layout_loads_strictly_and_scores(tmp_path, prefix):
    torch.manual_seed(0)
    src = SyncNetS().eval()
    path = tmp_path / "syncnet_v2.model"
    torch.save({prefix + k: v for k, v in src.state_dict().items()}, path)
    model = load_syncnet(path)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 224, 224, 3), dtype=np.uint8)  # already face crops
    audio = rng.standard_normal(16000 * 12 // 25).astype(np.float32) * 0.1
    r = evaluate_sync(model, frames, 25.0, audio, boxes=None)
    assert r.num_windows == 7 and np.isfinite(r.min_dist) and r.confidence >= 0
    assert -15 <= r.offset <= 15
    # a file with a missing tower is refused by the strict load
    torch.save({k: v for k, v in src.state_dict().items() if not k.startswith("netfclip")}, path)
    with pytest.raises(RuntimeError, match="netfclip"):
        load_syncnet(path)


def test_bad_input_errors_and_tracks():
    model = SyncNetS().eval()
    frames = np.zeros((10, 224, 224, 3), np.uint8)
    with pytest.raises(ValueError, match="no audio"):
        evaluate_sync(model, frames, 25.0, None, boxes=None)
    with pytest.raises(ValueError, match="no face track"):
        evaluate_sync(model, frames, 25.0, np.zeros(16000, np.float32), boxes=[None] * 10)
    box = (0, 0, 10, 10)
    tracks, dropped = face_tracks([box] * 8 + [None] + [box] * 3 + [None] + [box] * 6)
    assert tracks == [(0, 8), (13, 19)] and dropped == 2 + 3
