"""evaluate(), the command and the report with small stand-in networks: numbers, protocols,
pairing, skips and bad input."""
import json

import numpy as np
import pytest
import torch

from emo_core.eval.pipeline import EvalConfig, Networks, evaluate
from emo_core.eval.syncnet import SyncNetS
from emo_core.eval.video_io import Video, VideoInputError
from emo_core.preprocess.face import Face



class FakeAnalyzer:
    """A face in the middle of every frame whose mean brightness is above 20 (dark = no face)."""

    def __init__(self):
        self.calls = 0

    def analyze_video(self, frames):
        self.calls += 1
        out = []
        rng = np.random.default_rng(0)
        base = rng.uniform(0, 40, (478, 3))
        for i, f in enumerate(frames):
            if f.mean() <= 20:
                out.append(None)
                continue
            h, w = f.shape[:2]
            lm = base + [w / 2 - 20, h / 2 - 20, 0]
            lm[14, 1] += (i % 4)  # mouth opens and closes
            out.append(Face(np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4]), 1.0, landmarks=lm))
        return out


class MeanColour(torch.nn.Module):
    """Stand-in for Inception: per-channel means and squares (so Gaussians differ by colour)."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), (x ** 2).mean(dim=(2, 3))], 1)


def _i3d(clips):
    return np.asarray(clips, np.float64).reshape(len(clips), clips.shape[1], -1, 3).mean(2).reshape(len(clips), -1)


def _embed(image, face):
    return image.reshape(-1, 3).mean(0).astype(np.float64) + 1.0


def _video(name, seed, n=20, size=48, bright=100, audio=True):
    rng = np.random.default_rng(seed)
    frames = np.clip(rng.normal(bright, 30, (n, size, size, 3)), 0, 255).astype(np.uint8)
    wav = (0.1 * rng.standard_normal(int(n / 25 * 16000))).astype(np.float32) if audio else None
    return Video(frames, 25.0, wav, name=name, audio_note="" if audio else "no audio track")


def _networks(syncnet=None):
    from emo_core.eval.expression import LandmarkExpressionProxy

    return Networks(inception=MeanColour(), i3d=_i3d, syncnet=syncnet, face_analyzer=FakeAnalyzer(),
                    face_embedder=type("E", (), {"embed": staticmethod(_embed)})(),
                    expression=LandmarkExpressionProxy(),
                    unavailable={"syncnet": "syncnet_v2.model missing"} if syncnet is None else {})


def test_identical_sets_give_zero_and_protocols_are_written():
    gen = [_video("a.mp4", 0), _video("b.mp4", 1)]
    ref = [_video("a.mp4", 0), _video("b.mp4", 1)]
    r = evaluate(gen, ref, EvalConfig(metrics=("fid", "fvd", "efid", "fsim", "syncnet", "motion")), _networks())
    assert r.value("fid") == pytest.approx(0.0, abs=1e-9)
    assert r.value("fvd") == pytest.approx(0.0, abs=1e-9)
    assert r.value("efid") == pytest.approx(0.0, abs=1e-9)
    assert r.value("fsim") == pytest.approx(1.0, abs=1e-3)  # first frame vs its own video: near 1
    d = r.to_dict()
    assert d["metrics"]["fid"]["protocol"]["input_size"] == 299
    assert d["metrics"]["fvd"]["protocol"]["clip_frames"] == 16 and d["metrics"]["fvd"]["protocol"]["fps"] == 25.0
    assert "face union box" in d["metrics"]["fvd"]["protocol"]["crop"]
    assert "proxy" in d["metrics"]["efid"]["protocol"]["network"]
    assert d["metrics"]["fvd"]["counts"] == {"generated_samples": 2, "reference_samples": 2}
    assert d["metrics"]["lse"]["value"] is None and "syncnet_v2.model" in d["metrics"]["lse"]["skipped_reason"]
    assert "fsim_ground_truth" in d["metrics"]["fsim"]["extra"]
    assert d["metrics"]["motion_generated"]["extra"]["head.rotation_speed_mean_deg_per_frame"] == pytest.approx(0, abs=1e-6)
    json.dumps(d)  # serialisable
    table = r.format_table()
    assert "fid" in table and "skipped" in table


def test_different_sets_and_saved_reference_stats(tmp_path):
    gen = [_video("a.mp4", 0, bright=100), _video("b.mp4", 1, bright=110)]
    ref = [_video("a.mp4", 2, bright=150), _video("b.mp4", 3, bright=160)]
    cfg = EvalConfig(metrics=("fid",), save_stats_dir=tmp_path)
    r1 = evaluate(gen, ref, cfg, _networks())
    assert r1.value("fid") > 0.01
    cfg2 = EvalConfig(metrics=("fid",), reference_stats={"fid": tmp_path / "fid_reference_stats.npz"})
    r2 = evaluate(gen, None, cfg2, _networks())
    assert r2.value("fid") == pytest.approx(r1.value("fid"), rel=1e-9)
    # swapping the sets gives the same number
    r3 = evaluate(ref, gen, EvalConfig(metrics=("fid",)), _networks())
    assert r3.value("fid") == pytest.approx(r1.value("fid"), rel=1e-6)


def test_bad_input_is_counted_not_fatal():
    gen = [_video("short.mp4", 0, n=10), _video("dark.mp4", 1, bright=5, audio=False), _video("ok.mp4", 2, n=40)]
    ref = [_video("short.mp4", 3, n=12, size=64), _video("ok.mp4", 4, n=40)]
    model = SyncNetS().eval()
    r = evaluate(gen, ref, EvalConfig(metrics=("fvd", "syncnet", "fsim")), _networks(model))
    reasons = {(s["video"], s["metric"]): s["reason"] for s in r.skips}
    assert "shorter than one 16-frame clip" in reasons[("short.mp4", "fvd")]
    assert "no audio" in reasons[("dark.mp4", "syncnet")]
    assert "no face" in reasons[("dark.mp4", "fsim")] or "no reference" in reasons[("dark.mp4", "fsim")]
    assert any("48x48" in w and "64x64" in w for w in r.warnings)
    assert any("10 generated frames vs 12" in w for w in r.warnings)
    assert r.value("fvd") is not None          # 'ok' clips + 'dark' clips remain
    assert r.value("lse_d") is not None and r.metrics["lse_d"].counts["windows"] > 0
    assert r.to_dict()["skipped"]["count_by_metric"]["syncnet"] >= 1


def test_unknown_metric_and_empty_input():
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate([_video("a.mp4", 0)], None, EvalConfig(metrics=("psnr",)), _networks())
    with pytest.raises(ValueError, match="no generated"):
        evaluate([], None, EvalConfig(), _networks())
    with pytest.raises(VideoInputError, match="uint8"):
        Video(np.zeros((2, 4, 4, 3), np.float32), 25.0)
    r = evaluate([_video("a.mp4", 0)], None, EvalConfig(metrics=("fid",)), _networks())
    assert "needs reference" in r.metrics["fid"].skipped_reason
