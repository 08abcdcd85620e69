"""The nodes with ComfyUI stubbed by small fake modules: progress, Cancel, folders, devices,
core types (FACE_LANDMARKS, AUDIO_ENCODER_OUTPUT, VAE), and every bad input the issue names."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from face_models import face_mirror, face_model_files  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]


class Interrupted(BaseException):
    """Stands in for comfy.model_management.InterruptProcessingException."""


@pytest.fixture()
def comfy(tmp_path, monkeypatch, face_mirror):
    """Fake comfy.utils / comfy.model_management / comfy.model_patcher / folder_paths; the face
    model files come from a loopback mirror (downloaded on first use, as for a new user)."""
    state = {"bars": [], "interrupt_after": None, "checks": 0, "emptied": 0, "loaded": 0, "folders": {}}

    class ProgressBar:
        def __init__(self, total):
            self.total, self.values, self.previews = total, [], []
            state["bars"].append(self)

        def update(self, n):
            self.values.append((self.values[-1] if self.values else 0) + n)

        def update_absolute(self, v, total=None, preview=None):
            self.values.append(v)
            self.previews.append(preview)

    mm = types.ModuleType("comfy.model_management")

    def throw():
        state["checks"] += 1
        if state["interrupt_after"] is not None and state["checks"] > state["interrupt_after"]:
            raise Interrupted()

    mm.throw_exception_if_processing_interrupted = throw
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda force=False: state.__setitem__("emptied", state["emptied"] + 1)
    mm.module_size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())

    def load_models_gpu(models, **kw):
        state["loaded"] += 1
        for m in models:
            m.model.to(m.load_device)

    mm.load_models_gpu = load_models_gpu

    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0):
            self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
            model.device = offload_device  # what ModelPatcher does; EmoNet's read-only device must not be hit

    mp.ModelPatcher = ModelPatcher
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    pkg = types.ModuleType("comfy")
    pkg.utils, pkg.model_management, pkg.model_patcher = utils, mm, mp

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {}

    def add(name, path, is_default=False):
        fp.folder_names_and_paths.setdefault(name, ([], set()))[0].append(path)

    fp.add_model_folder_path = add
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])
    fp.get_temp_directory = lambda: str(tmp_path / "temp")
    for name, mod in (("comfy", pkg), ("comfy.utils", utils), ("comfy.model_management", mm),
                      ("comfy.model_patcher", mp), ("folder_paths", fp)):
        monkeypatch.setitem(sys.modules, name, mod)
    return state


@pytest.fixture()
def portrait():
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(REPO / "samples" / "portrait.png").convert("RGB"), np.float32) / 255)[None]


@pytest.fixture()
def speech():
    import soundfile as sf

    data, sr = sf.read(str(REPO / "samples" / "speech.wav"), dtype="float32", always_2d=True)
    return {"waveform": torch.from_numpy(data.T.copy())[None][..., : sr // 2 + 1000], "sample_rate": sr}  # ~0.56 s


def _model(choice="hallo"):
    from nodes.loader import TINY_CHOICE, TINY_EMO_CHOICE, EmoModelLoader

    return EmoModelLoader().load(TINY_CHOICE if choice == "hallo" else TINY_EMO_CHOICE)[0]


def _prepare(model, portrait, audio):
    from nodes.audio import EmoAudioEncode
    from nodes.face_mask import EmoFaceMask
    from nodes.reference import EmoReferenceEncode

    ref, image, _ = EmoReferenceEncode().encode(model, portrait, size=64)
    emo_audio, frames = EmoAudioEncode().encode(model, 25.0, audio=audio)
    mask, regions = EmoFaceMask().mask(image)
    return ref, image, emo_audio, frames, mask, regions


def test_generate_reports_progress_and_uses_model_management(comfy, portrait, speech):
    from nodes.chain import EmoGenerate

    model = _model()
    ref, image, emo_audio, frames, mask, regions = _prepare(model, portrait, speech)
    images, audio, video, fps = EmoGenerate().generate(model, ref, emo_audio, speech, 2, 3.5, 0, face_mask=mask,
                                                       regions=regions)
    assert images.shape[0] == frames == 14 and audio is speech
    bar = comfy["bars"][-1]
    clips = -(-frames // model.cfg.clip_frames)
    assert bar.total == 2 * clips and bar.values[-1] == 2 * clips and bar.values == sorted(bar.values)
    assert comfy["checks"] >= 2 * clips and comfy["loaded"] >= 1 and comfy["emptied"] >= 1
    assert Path(video.get_stream_source()).parent == Path(sys.modules["folder_paths"].get_temp_directory())
    # the inputs are not changed
    assert ref["state"].latent.device.type == "cpu" and speech["waveform"].shape[-1] == 9000


def test_interrupt_mid_sampling_stops_cleanly(comfy, portrait, speech):
    from nodes.chain import EmoGenerate

    model = _model()
    ref, image, emo_audio, frames, mask, regions = _prepare(model, portrait, speech)
    comfy["checks"], comfy["interrupt_after"] = 0, 3
    temp = Path(sys.modules["folder_paths"].get_temp_directory())
    before = set(temp.iterdir()) if temp.exists() else set()
    emptied = comfy["emptied"]
    with pytest.raises(Interrupted):
        EmoGenerate().generate(model, ref, emo_audio, speech, 2, 3.5, 0, face_mask=mask, regions=regions)
    assert set(temp.iterdir()) == before, "no partial mp4 may remain"
    assert comfy["emptied"] > emptied
    comfy["interrupt_after"] = None  # and the model still works afterwards
    from nodes.sampler import EmoDecodeClip, EmoSampleClip

    latent, clips = EmoSampleClip().sample(model, ref, emo_audio, 0, 1, 1.0, 0, face_mask=mask, regions=regions)
    assert EmoDecodeClip().decode(model, latent)[0].shape == (model.cfg.clip_frames, 64, 64, 3)


def test_clip_by_clip_chaining_and_its_errors(comfy, portrait, speech):
    from nodes.common import EmoNodeError
    from nodes.sampler import EmoDecodeClip, EmoSampleClip

    model = _model("emo")
    ref, image, emo_audio, frames, mask, regions = _prepare(model, portrait, speech)
    latent, clips = EmoSampleClip().sample(model, ref, emo_audio, 0, 1, 2.0, 0, face_mask=mask)
    first = EmoDecodeClip().decode(model, latent)[0]
    with pytest.raises(EmoNodeError, match="previous clip"):
        EmoSampleClip().sample(model, ref, emo_audio, 1, 1, 2.0, 0, face_mask=mask)
    last, _ = EmoSampleClip().sample(model, ref, emo_audio, clips - 1, 1, 2.0, 0, face_mask=mask, motion_frames=first)
    assert EmoDecodeClip().decode(model, last)[0].shape[0] == frames - (clips - 1) * model.cfg.clip_frames
    with pytest.raises(EmoNodeError, match="past the end"):
        EmoSampleClip().sample(model, ref, emo_audio, clips, 1, 2.0, 0)


def test_mismatched_inputs_between_nodes(comfy, portrait, speech):
    from nodes.audio import EmoAudioEncode
    from nodes.chain import EmoGenerate
    from nodes.common import EmoNodeError

    model = _model()
    ref, image, emo_audio, frames, mask, regions = _prepare(model, portrait, speech)
    longer = {"waveform": torch.cat([speech["waveform"]] * 2, -1), "sample_rate": speech["sample_rate"]}
    with pytest.raises(EmoNodeError, match="same AUDIO"):
        EmoGenerate().generate(model, ref, emo_audio, longer, 1, 1.0, 0, face_mask=mask, regions=regions)
    with pytest.raises(EmoNodeError, match="3 frames but the audio gives 14"):
        EmoGenerate().generate(model, ref, emo_audio, speech, 1, 1.0, 0, face_mask=mask.expand(3, -1, -1))
    with pytest.raises(EmoNodeError, match="portrait is 64x64"):
        EmoGenerate().generate(model, ref, emo_audio, speech, 1, 1.0, 0, face_mask=torch.ones(1, 32, 32))
    other = _model()
    with pytest.raises(EmoNodeError, match="different EMO model"):
        EmoGenerate().generate(other, ref, emo_audio, speech, 1, 1.0, 0, face_mask=mask)
    emo = _model("emo")
    with pytest.raises(EmoNodeError, match="same EMO model|different EMO model"):
        EmoGenerate().generate(emo, ref, EmoAudioEncode().encode(emo, 25.0, audio=speech)[0], speech, 1, 1.0, 0)
    with pytest.raises(ValueError, match="exactly one"):
        EmoAudioEncode().encode(model, 25.0)


def test_missing_model_files_explain_where_they_go(comfy):
    from emo_core.hub import ModelFileMissing
    from nodes.loader import HALLO_CHOICE, EmoModelLoader

    with pytest.raises(ModelFileMissing) as err:
        EmoModelLoader().load(HALLO_CHOICE, "auto", download=False)
    msg = str(err.value)
    assert str(Path(sys.modules["folder_paths"].models_dir) / "emo" / "hallo" / "hallo" / "net.pth") in msg
    assert "wav2vec/wav2vec2-base-960h/model.safetensors" in msg and "resolve/main" in msg


def test_wrong_checkpoint_in_the_loader(comfy):
    from emo_core.checkpoints import CheckpointError
    from nodes.loader import EmoModelLoader

    folder = Path(sys.modules["folder_paths"].models_dir) / "emo"
    folder.mkdir(parents=True)
    torch.save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, folder / "sd15.pth")
    (folder / "broken.safetensors").write_bytes(b"not a checkpoint")
    choices = EmoModelLoader.INPUT_TYPES()["required"]["model"][0]
    assert "sd15.pth" in choices and "broken.safetensors" in choices
    with pytest.raises(CheckpointError, match="not an EMO or Hallo checkpoint"):
        EmoModelLoader().load("sd15.pth")
    with pytest.raises(CheckpointError):
        EmoModelLoader().load("broken.safetensors")


def test_image_without_a_face(comfy):
    from emo_core.preprocess.face import NoFaceError
    from nodes.face_mask import EmoFaceMask

    wall = torch.full((1, 64, 64, 3), 0.5)
    with pytest.raises(NoFaceError, match="no face found"):
        EmoFaceMask().mask(wall)
    mask, regions = EmoFaceMask().mask(wall, if_no_face="full_frame")
    assert mask.shape == (1, 64, 64) and bool((mask == 1).all())


def test_core_face_landmarks_and_mask_passthrough(comfy):
    from nodes.face_mask import EmoFaceMask
    from nodes.speed import EmoSpeed

    rng = np.random.default_rng(0)
    base = rng.uniform(20, 44, (478, 2)).astype(np.float32)

    def face(angle):
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        m = np.eye(4, dtype=np.float32)
        m[:2, :2] = [[c, -s], [s, c]]
        return {"bbox_xyxy": np.array([20, 20, 44, 44], np.float32), "landmarks_xy": base,
                "landmarks_3d": np.concatenate([base, np.zeros((478, 1), np.float32)], 1), "score": 0.9,
                "transformation_matrix": m}

    lm = {"frames": [[face(2.0 * i)] for i in range(10)], "image_size": (64, 64)}
    mask, regions = EmoFaceMask().mask(torch.zeros(10, 64, 64, 3), face_landmarks=lm)
    assert mask.shape == (10, 64, 64) and mask[0, 32, 32] == 1 and mask[0, 0, 0] == 0
    speed, mean = EmoSpeed().speed(1.0, 25.0, face_landmarks=lm, driving_fps=25.0, smooth=0)
    assert mean == pytest.approx(2.0, abs=0.05)
    user = torch.zeros(1, 64, 64)
    user[:, 10:30, 10:30] = 1
    out, _ = EmoFaceMask().mask(torch.zeros(1, 64, 64, 3), mask=user)
    assert torch.equal(out, user) and out is not user


def test_core_audio_encoder_output_is_accepted(comfy):
    from nodes.audio import EmoAudioEncode

    model = _model()
    a = model.cfg.audio
    layers = tuple(torch.randn(1, 50, a.feature_dim) for _ in range(a.feature_blocks + 1))  # 1 s at 50 Hz
    out, frames = EmoAudioEncode().encode(model, 25.0, audio_encoder_output={
        "encoded_audio": layers[-1], "encoded_audio_all_layers": layers, "audio_samples": 16000})
    # per-frame features; the sampler cuts the ±m windows clip by clip
    assert frames == 25 and out["windows"].shape == (25, a.feature_blocks, a.feature_dim)
    assert torch.allclose(out["windows"][0, 0], layers[1][0, 0])
    with pytest.raises(ValueError, match="blocks"):
        EmoAudioEncode().encode(model, 25.0, audio_encoder_output={
            "encoded_audio_all_layers": layers[:2], "audio_samples": 16000})


def test_comfy_vae_converts_to_scaled_latents(comfy):
    from nodes.model import SD15_SCALE, ComfyVae

    class FakeVae:  # ComfyUI's VAE: IMAGE-layout pixels in, unscaled latents out
        latent_channels = 4

        def encode(self, pixels):
            assert pixels.shape[-1] == 3
            return torch.ones(pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8)

        def decode(self, latents):
            return (latents.mean(1, keepdim=True).repeat_interleave(8, 2).repeat_interleave(8, 3)
                    .movedim(1, -1).expand(-1, -1, -1, 3))

    vae = ComfyVae(FakeVae())
    lat = vae.encode_images(torch.rand(2, 16, 16, 4))
    assert lat.shape == (2, 4, 2, 2) and torch.allclose(lat, torch.full_like(lat, SD15_SCALE))
    img = vae.decode_latents(torch.full((1, 4, 2, 2), 0.5 * SD15_SCALE))
    assert img.shape == (1, 16, 16, 3) and torch.allclose(img, torch.full_like(img, 0.5))
    bad = FakeVae()
    bad.latent_channels = 16
    with pytest.raises(ValueError, match="SD1.5"):
        ComfyVae(bad)


def test_pack_imports_cheaply_without_comfyui():
    import subprocess

    code = ("import sys, time; t=time.time(); import nodes; "
            "heavy=[m for m in sys.modules if m.split('.')[0] in ('comfy','folder_paths','diffusers','transformers','mediapipe')]; "
            "print(len(nodes.NODE_CLASS_MAPPINGS), heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "12 []"  # nine stage nodes + EMO Paste Back + EMO Guider, EMO Scheduler


def test_widgets_are_checked_in_the_node_body(comfy, portrait, speech):
    """Saved workflows, the API and other nodes' outputs bypass the UI's limits: each node checks
    its widgets and names the bad one (EmoNodeError) before any work."""
    from nodes.audio import EmoAudioEncode
    from nodes.chain import EmoGenerate
    from nodes.common import EmoNodeError, speed_for
    from nodes.face_mask import EmoFaceMask
    from nodes.reference import EmoReferenceEncode
    from nodes.sampler import EmoSampleClip
    from nodes.speed import EmoSpeed

    model = _model("emo")
    ref, image, emo_audio, frames, mask, regions = _prepare(model, portrait, speech)
    checks = comfy["checks"]
    temp = Path(sys.modules["folder_paths"].get_temp_directory())
    before = set(temp.iterdir()) if temp.exists() else set()
    nan, inf = float("nan"), float("inf")
    cases = [
        (lambda: EmoSampleClip().sample(model, ref, emo_audio, 0, 0, 2.0, 0),
         "steps: expected an integer from 1 to 1000, got 0"),
        (lambda: EmoSampleClip().sample(model, ref, emo_audio, -1, 2, 2.0, 0), "clip_index: expected an integer >= 0"),
        (lambda: EmoGenerate().generate(model, ref, emo_audio, speech, 2, nan, 0),
         "cfg: expected a finite number >= 0, got nan"),
        (lambda: EmoGenerate().generate(model, ref, emo_audio, speech, 2, 2.0, -1),
         "seed: expected an integer from 0 to 18446744073709551615, got -1"),
        (lambda: EmoGenerate().generate(model, ref, emo_audio, speech, 2, 2.0, 0, motion_start="sideways"),
         "motion_start: expected one of reference, zeros, got 'sideways'"),
        (lambda: EmoAudioEncode().encode(model, 0.0, audio=speech), "fps: expected a finite number > 0, got 0"),
        (lambda: EmoAudioEncode().encode(model, nan, audio=speech), "fps: expected a finite number > 0, got nan"),
        (lambda: EmoReferenceEncode().encode(model, portrait, size=100),
         "size: expected a positive multiple of 64 (the model's size multiple), got 100"),
        (lambda: EmoReferenceEncode().encode(model, portrait, size=64, margin=nan), "margin: expected a number from"),
        (lambda: EmoFaceMask().mask(image, expand=nan), "expand: expected a finite number > 0, got nan"),
        (lambda: EmoSpeed().speed(nan, 25.0), "target_speed: expected a finite number >= 0, got nan"),
        (lambda: EmoSpeed().speed(inf, 25.0), "target_speed: expected a finite number >= 0, got inf"),
        (lambda: EmoSpeed().speed(-1.0, 25.0), "target_speed: expected a finite number >= 0, got -1"),
        (lambda: EmoSpeed().speed(1.0, 0.0), "fps: expected a finite number > 0, got 0"),
        (lambda: speed_for({"speed": None, "constant": nan, "fps": 25.0}, 4, 25.0),
         "speed (EMO_SPEED): expected a finite number >= 0, got nan"),
        (lambda: EmoGenerate().generate(model, ref, emo_audio, speech, 2, 2.0, 0, speed_guidance=nan),
         "speed_guidance: expected 0 (the model's default) or a guidance scale > 0, got nan"),
        (lambda: EmoGenerate().generate(model, ref, emo_audio, speech, 2, 1.0, 0, speed=EmoSpeed().speed(2.0, 25.0)[0],
                                        speed_guidance=5.0),
         "speed_guidance 5 needs cfg > 1 (got 1)"),
    ]
    for call, message in cases:
        with pytest.raises(EmoNodeError) as err:
            call()
        assert str(err.value).startswith(message), (message, str(err.value))
    assert comfy["checks"] == checks, "no sampling step may run"
    assert (set(temp.iterdir()) if temp.exists() else set()) == before


def test_generate_checks_its_video_file_before_sampling(comfy, portrait, speech, monkeypatch):
    from emo_core import video_out
    from nodes.chain import EmoGenerate
    from nodes.common import EmoNodeError

    model = _model()
    ref, image, emo_audio, frames, mask, regions = _prepare(model, portrait, speech)
    checks = comfy["checks"]

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(video_out.tempfile, "mkstemp", refuse)
    with pytest.raises(EmoNodeError, match="cannot write the video to ComfyUI's temp folder: cannot write in the "
                                           r"folder .*\(Permission denied\)"):
        EmoGenerate().generate(model, ref, emo_audio, speech, 2, 3.5, 0, face_mask=mask, regions=regions)
    assert comfy["checks"] == checks, "no sampling step may run"


@pytest.fixture()
def previews(monkeypatch):
    """A fake core ``latent_preview``: get_previewer(device, latent_format) returns a previewer that
    records each x0 it is given and returns a numbered preview image."""
    seen = {"x0": [], "formats": []}

    class Previewer:
        def decode_latent_to_preview_image(self, preview_format, x0):
            seen["x0"].append(x0.clone())
            return (preview_format, len(seen["x0"]), 512)

    def get_previewer(device, latent_format):
        seen["formats"].append((device, latent_format))
        return Previewer()

    lp = types.ModuleType("latent_preview")
    lp.get_previewer = get_previewer
    monkeypatch.setitem(sys.modules, "latent_preview", lp)
    return seen


def test_latent_previews_through_cores_latent_preview(comfy, previews, portrait, speech, caplog):
    """EMO Generate with a core SAMPLER + SIGMAS and EMO Sample Clip hand core's previewer the first
    frame's x0 (SD1.5 latent format, model space) at every step, and the progress bar shows it; at
    the last step of a sampler that ends at sigma 0, that x0 is the clip's output. EMO Generate
    logs the time left after every clip but the last."""
    import logging

    from comfy_executor import _KSampler
    from emo_core.sampling.presets import PRESETS
    from nodes.chain import EmoGenerate
    from nodes.comfy_env import latent_format
    from nodes.guider import EmoScheduler
    from nodes.sampler import EmoSampleClip

    model = _model()
    ref, image, emo_audio, frames, mask, regions = _prepare(model, portrait, speech)
    clips = -(-frames // model.cfg.clip_frames)
    (sigmas,) = EmoScheduler().sigmas(model, "emo", 3, 1.0)
    with caplog.at_level(logging.INFO, logger="nodes.common"):
        EmoGenerate().generate(model, ref, emo_audio, speech, 40, 2.0, 0, face_mask=mask, regions=regions,
                               sampler=_KSampler("euler"), sigmas=sigmas)
    bar = comfy["bars"][-1]
    assert bar.total == 3 * clips and bar.values == list(range(1, 3 * clips + 1))
    assert bar.previews == [("JPEG", i, 512) for i in range(1, 3 * clips + 1)]
    assert [tuple(x.shape) for x in previews["x0"]] == [(1, 4, 8, 8)] * (3 * clips)
    device, fmt = previews["formats"][-1]
    assert device == torch.device("cpu") and fmt.scale_factor == pytest.approx(0.18215)
    left = [r.getMessage() for r in caplog.records if "left" in r.getMessage()]
    assert len(left) == clips - 1 and left[0].startswith(f"EMO Generate: clip 1/{clips} done")

    previews["x0"].clear()
    latent, _ = EmoSampleClip().sample(model, ref, emo_audio, 0, 1, 1.0, 0, preset="fast", face_mask=mask,
                                       regions=regions)
    steps = PRESETS["fast"].steps
    bar = comfy["bars"][-1]
    assert bar.total == steps and bar.values == list(range(1, steps + 1)) and None not in bar.previews
    assert len(previews["x0"]) == steps and not torch.equal(previews["x0"][0], previews["x0"][-1])
    first = latent_format().process_in(latent["samples"][:1])
    assert torch.allclose(previews["x0"][-1], first, atol=1e-5)


def test_preset_widget(comfy, portrait, speech):
    """The preset widget resolves through emo_core.sampling.presets: a named preset sets the steps
    (the progress bar's length) whatever the widgets say; a connected SAMPLER + SIGMAS needs
    'custom'; EchoMimic's context windows take DDIM presets only. Refusals come before any step."""
    from comfy_executor import _KSampler
    from emo_core.sampling.presets import PRESETS
    from nodes.chain import EmoGenerate
    from nodes.common import EmoNodeError
    from nodes.guider import EmoScheduler
    from nodes.loader import TINY_ECHOMIMIC_CHOICE, EmoModelLoader

    model = _model()
    ref, image, emo_audio, frames, mask, regions = _prepare(model, portrait, speech)
    clips = -(-frames // model.cfg.clip_frames)
    EmoGenerate().generate(model, ref, emo_audio, speech, 1, 1.0, 0, face_mask=mask, regions=regions, preset="fast")
    assert comfy["bars"][-1].total == PRESETS["fast"].steps * clips
    assert comfy["bars"][-1].values[-1] == PRESETS["fast"].steps * clips
    echo = EmoModelLoader().load(TINY_ECHOMIMIC_CHOICE)[0]
    e_ref, _e_image, e_audio, _f, e_mask, _r = _prepare(echo, portrait, speech)
    checks = comfy["checks"]
    (sigmas,) = EmoScheduler().sigmas(model, "emo", 2, 1.0)
    with pytest.raises(EmoNodeError, match="preset 'quality' chooses its own sampler and steps.*set preset to custom"):
        EmoGenerate().generate(model, ref, emo_audio, speech, 2, 2.0, 0, preset="quality", face_mask=mask,
                               regions=regions, sampler=_KSampler("euler"), sigmas=sigmas)
    with pytest.raises(EmoNodeError, match="preset: expected one of custom, quality, fast, got 'turbo'"):
        EmoGenerate().generate(model, ref, emo_audio, speech, 2, 2.0, 0, preset="turbo", face_mask=mask)
    with pytest.raises(EmoNodeError, match="context windows with DDIM only: use preset custom or quality"):
        EmoGenerate().generate(echo, e_ref, e_audio, speech, 2, 2.0, 0, preset="fast", face_mask=e_mask)
    assert comfy["checks"] == checks, "no sampling step may run"
