"""Published-network layouts: files with the same keys / calling convention load and run."""
import numpy as np
import pytest
import torch

from emo_core.eval import weights
from emo_core.eval.i3d import clip_starts, face_clips, load_i3d
from emo_core.eval.inception import FIDInceptionV3, inception_features, load_fid_inception


def test_inception_file_with_published_layout_loads_strictly(tmp_path):
    torch.manual_seed(0)
    src = FIDInceptionV3().eval()
    state = src.state_dict()
    # the real file: every conv/bn of torchvision's Inception3 (no AuxLogits) + fc 2048->1008
    assert state["fc.weight"].shape == (1008, 2048)
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in state
    assert not any(k.startswith("AuxLogits") for k in state)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    model = load_fid_inception(path)
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 40, 3), dtype=np.uint8)
    feats = inception_features(model, frames)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64
    with torch.no_grad():
        ref = src(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(feats.float(), ref, rtol=1e-4, atol=1e-5)
    # a file with a wrong key is refused
    bad = dict(state)
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="extra.weight"):
        load_fid_inception(tmp_path / "bad.pth")


class _TinyI3D(torch.nn.Module):
    """Same calling convention as StyleGAN-V's i3d_torchscript.pt."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=3, stride=2)
        self.fc = torch.nn.Linear(8, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        y = self.fc(self.conv(x).mean(dim=(2, 3, 4)))
        if return_features:
            return y
        return y.softmax(-1)


def test_i3d_torchscript_file_loads_and_gives_400d(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_TinyI3D()).save(str(path))
    extractor = load_i3d(path)
    clips = np.random.default_rng(0).integers(0, 255, (3, 16, 32, 32, 3), dtype=np.uint8)
    feats = extractor(clips)
    assert feats.shape == (3, 400)
    torch.save({"a": torch.zeros(1)}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="TorchScript"):
        load_i3d(tmp_path / "state.pt")


def test_clip_windows_and_crops():
    assert clip_starts(15) == [] and clip_starts(16) == [0] and clip_starts(40) == [0, 16]
    frames = np.zeros((33, 60, 80, 3), np.uint8)
    boxes = [(20, 10, 40, 40)] * 20 + [None] * 13
    clips, rule = face_clips(frames, boxes, size=32)
    assert clips.shape == (2, 16, 32, 32, 3) and "face" in rule
    clips, rule = face_clips(frames, None, size=32)
    assert clips.shape == (2, 16, 32, 32, 3) and rule.startswith("centre")


def test_missing_weights_message_names_file_and_url(tmp_path):
    with pytest.raises(weights.MissingWeightsError) as info:
        weights.resolve_weights("syncnet", tmp_path, download=False)
    msg = str(info.value)
    assert "syncnet_v2.model" in msg and "robots.ox.ac.uk" in msg and str(tmp_path) in msg
    target = weights.weight_path("i3d", tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert weights.resolve_weights("i3d", tmp_path) == target


def test_download_goes_through_hub_and_checks_published_hash(tmp_path, monkeypatch):
    import emo_core.hub as hub

    calls = []

    def fake_ensure_file(url, dest_path, sha256=None, progress_callback=None):
        calls.append(url)
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        dest_path.write_bytes(b"not the published inception file")
        return dest_path

    monkeypatch.setattr(hub, "ensure_file", fake_ensure_file)
    with pytest.raises(ValueError, match="6726825d"):
        weights.resolve_weights("inception", tmp_path, download=True)
    assert calls and calls[0].startswith("https://github.com/mseitzer/pytorch-fid/releases/")
    assert not weights.weight_path("inception", tmp_path).exists()

    def offline(url, dest_path, sha256=None, progress_callback=None):
        raise hub.ModelFileMissing("network unreachable")

    monkeypatch.setattr(hub, "ensure_file", offline)
    with pytest.raises(weights.MissingWeightsError, match="network unreachable"):
        weights.resolve_weights("syncnet", tmp_path, download=True)
