"""Strict loading with readable errors, our checkpoint format, SD1.5 / AnimateDiff initialisation."""
import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from emo_core.checkpoints import (CheckpointError, detect_format, init_from_sd15, init_motion_modules, load_model,
                                  load_sd15_unet, load_state_dict, save_model)
from emo_core.config import EmoConfig
from emo_core.models.emo import EmoNet


def tiny_net(**kw):
    torch.manual_seed(0)
    return EmoNet(EmoConfig.tiny(**kw))


def test_save_and_load_roundtrip(tmp_path):
    net = tiny_net()
    save_model(net, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "emo.safetensors"]
    assert detect_format(tmp_path / "m") == "emo"
    loaded = load_model(tmp_path / "m")
    assert loaded.cfg == net.cfg
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_hallo_checkpoint_loads_strictly(tmp_path, hallo_golden):
    sd = load_state_dict(hallo_golden / "net.safetensors")
    torch.save(sd, tmp_path / "net.pth")
    assert detect_format(tmp_path) == "hallo"
    cfg = EmoConfig.from_hallo_folder(hallo_golden, clip_frames=4, motion_frames=2)
    net = load_model(tmp_path / "net.pth", config=cfg)
    assert torch.equal(net.state_dict()["face_locator.conv_out.weight"], sd["face_locator.conv_out.weight"])


def test_strict_load_errors_name_the_bad_keys(tmp_path, hallo_golden):
    cfg = EmoConfig.from_hallo_folder(hallo_golden, clip_frames=4, motion_frames=2)
    sd = load_state_dict(hallo_golden / "net.safetensors")
    del sd["audioproj.proj1.weight"]
    sd["denoising_unet.extra.weight"] = torch.zeros(1)
    sd["imageproj.proj.weight"] = torch.zeros(3, 3)
    save_file(sd, str(tmp_path / "net.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "net.safetensors", config=cfg)
    msg = str(err.value)
    assert "1 missing keys: audioproj.proj1.weight" in msg
    assert "1 unexpected keys: denoising_unet.extra.weight" in msg
    assert "imageproj.proj.weight (3, 3) vs model (128, 64)" in msg


def test_mismatched_config_and_checkpoint(hallo_golden):
    # A model of other widths cannot take these weights: the error says which keys differ.
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(hallo_golden / "net.safetensors", config=EmoConfig.tiny(family="hallo"))


class NotATensor:
    pass


def test_pickle_needing_more_than_weights_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="needs more than plain tensors"):
        load_state_dict(tmp_path / "bad.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.pth")


def test_init_from_sd15_folder(tmp_path):
    net = tiny_net()
    torch.manual_seed(1)
    unet = UNet2DConditionModel(**{k: v for k, v in net.cfg.unet.to_diffusers().items() if k != "center_input_sample"})
    unet.save_pretrained(tmp_path / "sd15" / "unet")
    sd = load_sd15_unet(tmp_path / "sd15")
    fresh = init_from_sd15(net, sd)
    ref = net.reference_unet.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in sd.items() if k in ref)
    backbone = net.denoising_unet.state_dict()
    assert torch.equal(backbone["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
                       sd["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"])
    # What stays fresh is exactly the new EMO layers.
    assert fresh and all(any(s in k for s in (".audio_modules.", ".motion_modules.")) for k in fresh)


def test_init_motion_modules_and_errors():
    net = tiny_net(speed=False)
    donor = tiny_net(speed=False)
    torch.nn.init.normal_(donor.denoising_unet.down_blocks[0].motion_modules[0].temporal_transformer.proj_out.weight)
    mm = {k: v for k, v in donor.denoising_unet.state_dict().items() if ".motion_modules." in k}
    init_motion_modules(net, mm)
    key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_out.weight"
    assert torch.equal(net.denoising_unet.state_dict()[key], mm[key])
    bad = dict(mm)
    bad.pop(key)
    with pytest.raises(CheckpointError, match="missing keys: " + key.replace(".", r"\.")):
        init_motion_modules(net, bad)


def test_detect_format_explains(tmp_path):
    with pytest.raises(CheckpointError, match="no model found"):
        detect_format(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other"}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "emo.safetensors"))
    with pytest.raises(CheckpointError, match="not an emo-portrait config"):
        load_model(tmp_path)


def test_corrupt_safetensors_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: not a readable safetensors file") as err:
        detect_format(bad)
    assert err.value.__cause__ is not None  # the reason from safetensors is kept
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")  # shorter than the header length
    with pytest.raises(CheckpointError, match="tiny.safetensors"):
        detect_format(tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_model(bad)


def test_accelerated_only_echomimic_folder_is_detected(tmp_path):
    torch.save({}, tmp_path / "denoising_unet_acc.pth")
    assert detect_format(tmp_path) == "echomimic"


def layout_fingerprint(state_dict) -> tuple[int, str]:
    """(number of tensors, sha256 of the sorted "key:shape" lines)."""
    import hashlib

    lines = "\n".join(f"{k}:{'x'.join(map(str, v.shape))}" for k, v in sorted(state_dict.items()))
    return len(state_dict), hashlib.sha256(lines.encode()).hexdigest()


def test_hallo_preset_has_the_released_layout():
    """EmoConfig.hallo() builds exactly the tensors of Hallo's released net.pth: the key and
    shape list of Hallo's own Net (SD1.5 UNets + configs/unet/unet.yaml, built on the meta
    device) has this fingerprint, so the real file loads strictly."""
    with torch.device("meta"):
        net = EmoNet(EmoConfig.hallo())
    assert layout_fingerprint(net.state_dict()) == (2656, "5b14f0e0efad562943e704f50db50f9891ca210ae58dcbce8988e8b6df53a421")


def test_emo_preset_takes_animatediff_v2_motion_modules():
    """EMO's temporal modules (speed layers aside) have AnimateDiff v2's layout (mm_sd_v15_v2,
    the same tensors as Hallo's motion modules), so init_motion_modules loads it strictly."""
    with torch.device("meta"):
        net = EmoNet(EmoConfig.emo())
    mm = {k: v for k, v in net.denoising_unet.state_dict().items() if ".motion_modules." in k and ".speed_" not in k}
    assert layout_fingerprint(mm) == (
        588, "8b6a50983db9f7f0509c65fec0897e723db95bad46b07b4ff2fb93f6c860ac2f")
    assert any(".speed_attention." in k for k in net.denoising_unet.state_dict())


# ---- refusing bad files before the work --------------------------------------------------------
@pytest.fixture()
def build_guard(monkeypatch):
    """EmoNet may only be built on the meta device (names and shapes) until the file is checked."""
    real = EmoNet.__init__
    built = []

    def guarded(self, cfg):
        if torch.empty(0).device.type != "meta":
            raise AssertionError("the network was built before the checkpoint's header was checked")
        built.append(cfg)
        real(self, cfg)

    monkeypatch.setattr(EmoNet, "__init__", guarded)
    return built


def test_foreign_hallo_net_pth_is_refused_from_its_header(tmp_path, build_guard):
    import time

    (tmp_path / "hallo").mkdir()
    ckpt = tmp_path / "hallo" / "net.pth"
    torch.save({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3),
                "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77)}, ckpt)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)  # Hallo's folder layout, full Hallo config
    assert time.perf_counter() - t0 < 1.0
    assert str(err.value).startswith(f"{ckpt}: not an EMO or Hallo checkpoint: expected the keys of Hallo's net.pth")
    assert "found 2 tensors under cond_stage_model, model" in str(err.value)
    assert build_guard == []


def test_hallo_keyed_file_of_other_shapes_is_refused_before_the_build(tmp_path, build_guard):
    """Hallo's names with the wrong shapes (another model size): the report names the keys, and
    only a meta-device network (no memory) was built to know the expected shapes."""
    ckpt = tmp_path / "net.safetensors"
    sd = {k: torch.zeros(1) for k in ("denoising_unet.conv_in.weight", "reference_unet.conv_in.weight")}
    save_file(sd, str(ckpt))
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt)
    msg = str(err.value)
    assert msg.startswith(f"hallo checkpoint {ckpt}: the checkpoint does not fit the model")
    assert "2654 missing keys" in msg and "denoising_unet.conv_in.weight (1,) vs model (320, 4, 3, 3)" in msg
    assert len(build_guard) == 1  # the meta one


def test_read_header_reads_names_and_shapes_only(tmp_path):
    from emo_core.checkpoints import read_header

    torch.save({"state_dict": {"a.weight": torch.zeros(3, 5), "b": torch.zeros(2)}}, tmp_path / "x.pth")
    save_file({"a.weight": torch.zeros(3, 5)}, str(tmp_path / "x.safetensors"))
    assert read_header(tmp_path / "x.pth") == {"a.weight": (3, 5), "b": (2,)}
    assert read_header(tmp_path / "x.safetensors") == {"a.weight": (3, 5)}
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="needs pickle globals .it refers to .*NotATensor.*use the model's "
                                              r"\.safetensors file"):
        read_header(tmp_path / "bad.pth")


def test_every_loader_refuses_with_one_readable_error(tmp_path):
    """wav2vec2, whisper, VAE, ArcFace: a bad file is a CheckpointError naming it and what was
    expected; a pickle that needs globals never runs code and says to use safetensors."""
    from emo_core.models.whisper import load_whisper_encoder
    from emo_core.preprocess.audio_features import load_wav2vec
    from emo_core.preprocess.identity import FaceEmbedder
    from emo_core.vae import TINY_VAE, load_vae

    w2v = tmp_path / "wav2vec2-base-960h"
    w2v.mkdir()
    (w2v / "config.json").write_text("{}")
    torch.save({"wav2vec2.feature_projection.projection.weight": torch.zeros(2), "extra": NotATensor()},
               w2v / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="needs pickle globals") as err:
        load_wav2vec(w2v)
    assert str(err.value).startswith(str(w2v / "pytorch_model.bin")) and "safetensors" in str(err.value)

    torch.save({"dims": {}, "model_state_dict": {}, "extra": NotATensor()}, tmp_path / "whisper_tiny.pt")
    with pytest.raises(CheckpointError, match="needs pickle globals"):
        load_whisper_encoder(tmp_path / "whisper_tiny.pt")

    vae = tmp_path / "sd-vae-ft-mse"
    vae.mkdir()
    (vae / "config.json").write_text("[1, 2]")
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(vae / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match="config.json: not usable, expected a diffusers AutoencoderKL config"):
        load_vae(vae)
    (vae / "config.json").write_text(json.dumps(TINY_VAE))
    with pytest.raises(CheckpointError, match=r"VAE .*diffusion_pytorch_model.safetensors: the checkpoint does "
                                              "not fit"):
        load_vae(vae)

    (tmp_path / "glintr100.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(CheckpointError, match=r"glintr100.onnx: not a usable ONNX model, expected insightface's "
                                              "ArcFace"):
        FaceEmbedder(models_dir=tmp_path).embed_aligned(torch.zeros(112, 112, 3).numpy())


def test_echomimic_files_are_checked_before_the_build(tmp_path, monkeypatch):
    """A foreign reference_unet.pth in an EchoMimic folder: refused from the headers, naming the file."""
    from test_echomimic import _write_echomimic_folder

    from emo_core.families.echomimic import load_echomimic

    cfg = EmoConfig.tiny(family="echomimic")
    _write_echomimic_folder(EmoNet(cfg), tmp_path)
    torch.save({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)}, tmp_path / "reference_unet.pth")
    real, built = EmoNet.__init__, []

    def guarded(self, c):
        assert torch.empty(0).device.type == "meta", "the network was built before the files were checked"
        built.append(c)
        real(self, c)

    monkeypatch.setattr(EmoNet, "__init__", guarded)
    with pytest.raises(CheckpointError) as err:
        load_echomimic(tmp_path, config=cfg)
    msg = str(err.value)
    assert msg.startswith("EchoMimic reference_unet.pth: the checkpoint does not fit the model")
    assert "1 unexpected keys: model.diffusion_model.out.2.weight" in msg and len(built) == 1
