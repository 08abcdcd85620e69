"""Core's sigma convention for an EMO schedule (emo_core.sampling.discrete), the EMO Guider's
model_wrap under core's sampler interface, DDIM through core's Euler, and the nodes (EMO
Guider, EMO Scheduler, EMO Generate with SAMPLER + SIGMAS) with tiny weights, without ComfyUI."""
from __future__ import annotations

import math
import os

import pytest
import torch

from comfy_executor import _KSampler
from emo_core.sampling import samplers as S
from emo_core.sampling.ddim import Schedule, sample_ddim
from emo_core.sampling.discrete import (ZSNR_TERMINAL_SIGMA, ModelSampling, SigmaDenoiser, core_model_sigmas,
                                        percent_interval)
from nodes.guider import CoreModelWrap, core_sample_fn

SCHEDULES = {
    "hallo": Schedule.hallo(),  # v prediction, zero terminal SNR, trailing
    "sd": Schedule(),  # epsilon, leading
    "x0": Schedule(prediction_type="sample", rescale_betas_zero_snr=True, timestep_spacing="trailing"),
}


def random_model():
    w = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5
    return lambda x, t: (torch.tanh(torch.einsum("ij,bj...->bi...", w, x.double()) + t / 500.0) * 0.8).to(x.dtype)


def unit_noise(shape=(1, 4, 3, 8, 8), seed=0, dtype=torch.float64):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def test_model_sampling_follows_cores_zero_snr_convention():
    ms = ModelSampling(Schedule.hallo())
    # core's rescale_zero_terminal_snr_sigmas: alpha_bar of the last timestep 4.8973451890853435e-08
    assert float(ms.sigma_max) == pytest.approx(ZSNR_TERMINAL_SIGMA, rel=1e-6) and 4518 < ZSNR_TERMINAL_SIGMA < 4519
    table = S.sigma_table(Schedule.hallo())
    assert torch.allclose(ms.sigmas[:-1].double(), table[:-1], rtol=1e-6)
    assert int(ms.timestep(ms.sigma_max.reshape(1))) == 999 and int(ms.timestep(ms.sigmas[500].reshape(1))) == 500
    assert ms.percent_to_sigma(0.0) > ms.sigma_max and ms.percent_to_sigma(1.0) == 0.0
    sig = core_model_sigmas(Schedule.hallo(), 40)
    assert sig.dtype == torch.float32 and len(sig) == 41 and float(sig[0]) == pytest.approx(ZSNR_TERMINAL_SIGMA)
    assert float(sig[-1]) == 0.0 and torch.all(sig[:-1] > sig[1:])
    # max_denoise noise scaling: the network's input at the terminal sigma is the unit noise itself
    n = unit_noise(dtype=torch.float32)
    x = ms.noise_scaling(sig[0], n, torch.zeros_like(n), max_denoise=True)
    assert torch.allclose(ms.calculate_input(sig[0], x), n, atol=1e-6)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_sigma_denoiser_is_the_librarys_denoiser(name):
    schedule, model = SCHEDULES[name], random_model()
    ours, lib = SigmaDenoiser(model, schedule), S.Denoiser(model, schedule)
    table = S.sigma_table(schedule)
    x = unit_noise()
    for t in (0, 1, 250, 674, 998):  # training timesteps: the same timestep and alpha_bar
        s = float(table[t])
        assert ours.timestep(s) == t
        assert torch.allclose(ours(x * s, s), lib(x * s, s), rtol=1e-12, atol=1e-12)
        # a float32 SIGMAS entry of that timestep maps to it too
        assert ours.timestep(float(torch.tensor(s, dtype=torch.float32))) == t
    s = math.exp(0.5 * (math.log(float(table[300])) + math.log(float(table[301]))))  # between two timesteps
    assert ours.timestep(s) == pytest.approx(300.5, abs=1e-9)
    assert torch.allclose(ours(x * s, s), lib(x * s, s), rtol=1e-12, atol=1e-12)
    if schedule.rescale_betas_zero_snr:  # core's terminal sigma is the library's inf
        big = ZSNR_TERMINAL_SIGMA
        state = x * math.sqrt(1 + big * big)
        assert torch.allclose(ours(state, big), lib(x, math.inf), rtol=1e-9, atol=1e-9)
        assert ours.timestep(big) == 999


@pytest.mark.parametrize("name,steps", [("hallo", 40), ("hallo", 20), ("hallo", 10), ("sd", 40), ("x0", 20)])
def test_ddim_through_cores_euler_and_the_guider_wrap_is_sample_ddim(name, steps):
    """Core's KSAMPLER + k-diffusion Euler (the executor's stand-in, written as core's code) with
    the EMO model_wrap over core_model_sigmas gives sample_ddim's result: float32 rounding, and
    at zero terminal SNR the first step's x0 * sigma_next / 4518.8 term. SD's leading spacing
    starts below sigma_max (t = 976), where core starts from noise * sigma, DDIM from
    noise * sqrt(1 + sigma^2): 0.3 % apart."""
    schedule, model = SCHEDULES[name], random_model()
    n5 = unit_noise()
    ref = sample_ddim(model, n5, schedule, steps)
    wrap = CoreModelWrap(model, schedule, torch.device("cpu"))
    noise = n5[0].transpose(0, 1).float()  # core's layout: frames in the batch
    out = _KSampler("euler").sample(wrap, core_model_sigmas(schedule, steps), {}, None, noise, torch.zeros_like(noise))
    got = out.double().transpose(0, 1)[None]
    err = (got - ref).abs().max().item() / ref.abs().max().item()
    assert err < (2e-3 if name != "sd" else 5e-3), err


def test_core_sample_fn_returns_the_network_space_latents_and_reports_steps():
    schedule, model = Schedule.hallo(), random_model()
    steps, seen = 10, []
    fn = core_sample_fn(_KSampler("dpmpp_2m"), core_model_sigmas(schedule, steps), schedule)
    out = fn(model, unit_noise(dtype=torch.float32), seen.append)
    assert out.shape == (1, 4, 3, 8, 8) and torch.isfinite(out).all()
    assert [s["step"] for s in seen] == list(range(1, steps + 1)) and seen[-1]["steps"] == steps


def test_guidance_interval_in_cores_percent_convention():
    schedule = Schedule.hallo()
    assert percent_interval(schedule, 0.0, 1.0) is None
    inside = percent_interval(schedule, 0.0, 0.5)
    assert inside(999) and inside(600) and not inside(300) and not inside(0)
    late = percent_interval(schedule, 0.5, 1.0)
    assert not late(999) and late(300) and late(0)
    with pytest.raises(ValueError):
        percent_interval(schedule, 0.6, 0.2)


# ---- nodes, tiny weights -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_inputs():
    from nodes.loader import EmoModelLoader, TINY_FAMILIES

    choice = {f: c for c, f in TINY_FAMILIES.items()}["hallo"]
    (emo_model,) = EmoModelLoader().load(choice, "float32", False)[:1]
    pipe = emo_model.pipe
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    from nodes.reference import EmoReferenceEncode
    from nodes.audio import EmoAudioEncode

    reference = EmoReferenceEncode().encode(emo_model, image, 64, "center")[0]
    wave = torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    audio = {"waveform": wave, "sample_rate": 16000}
    emo_audio = EmoAudioEncode().encode(emo_model, 25.0, audio=audio)[0]
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    return emo_model, reference, emo_audio, audio, mask, pipe


def test_emo_guider_under_cores_sampler_interface(tiny_inputs):
    from comfy_executor import RandomNoise, SamplerCustomAdvanced
    from nodes.guider import EmoGuider, EmoScheduler
    from nodes.sampler import EmoDecodeClip

    emo_model, reference, emo_audio, _audio, mask, _pipe = tiny_inputs
    guider, latent, clips = EmoGuider().guider(emo_model, reference, emo_audio, 0, 2.0, face_mask=mask,
                                               guidance_start=0.0, guidance_end=0.6)
    f = emo_model.cfg.clip_frames
    assert latent["samples"].shape == (f, 4, 8, 8) and clips >= 1
    (sigmas,) = EmoScheduler().sigmas(emo_model, "emo", 4, 1.0)
    assert torch.equal(sigmas, core_model_sigmas(emo_model.pipe.schedule, 4))
    (partial,) = EmoScheduler().sigmas(emo_model, "emo", 4, 0.5)
    assert len(partial) == 5 and float(partial[0]) < float(sigmas[0])
    (noise,) = RandomNoise().execute(3)
    out, den = SamplerCustomAdvanced().execute(noise, guider, _KSampler("euler"), sigmas, latent)
    assert out["samples"].shape == latent["samples"].shape and torch.isfinite(out["samples"]).all()
    (images,) = EmoDecodeClip().decode(emo_model, out)
    assert images.shape == (f, 64, 64, 3)
    with pytest.raises(ValueError, match="latent must be this clip"):
        guider.sample(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), _KSampler("euler"), sigmas)


def test_emo_generate_with_core_sampler_is_ddim_with_euler_over_emo_sigmas(tiny_inputs, tmp_path, monkeypatch):
    """EMO Generate with SAMPLER (euler) + SIGMAS ('emo') chains clips through core's sampler
    interface; the same noise is drawn per clip, so the frames are DDIM's but for core's start:
    the tiny model's schedule is SD's (leading: t = 751 first, below sigma_max), where core starts
    from noise * sigma and DDIM from noise * sqrt(1 + sigma^2) (3 % apart at sigma 4.1)."""
    from nodes.chain import EmoGenerate
    from nodes.guider import EmoScheduler

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    emo_model, reference, emo_audio, audio, mask, _pipe = tiny_inputs
    ddim = EmoGenerate().generate(emo_model, reference, emo_audio, audio, 4, 2.0, 7, face_mask=mask)[0]
    (sigmas,) = EmoScheduler().sigmas(emo_model, "emo", 4, 1.0)
    core = EmoGenerate().generate(emo_model, reference, emo_audio, audio, 40, 2.0, 7, face_mask=mask,
                                  sampler=_KSampler("euler"), sigmas=sigmas)[0]
    assert core.shape == ddim.shape and ddim.shape[0] == emo_audio["frames"]
    assert (core - ddim).abs().max() < 5e-2 and (core - ddim).abs().mean() < 5e-3
    with pytest.raises(ValueError, match="both 'sampler' and 'sigmas'"):
        EmoGenerate().generate(emo_model, reference, emo_audio, audio, 3, 2.0, 7, face_mask=mask,
                               sampler=_KSampler("euler"))


def test_emo_sample_clip_latent_is_cores_unscaled_layout(tiny_inputs):
    """EMO Sample Clip's LATENT is core's: the library's clip latents [1, 4, f, h, w] as
    [f, 4, h, w], divided by the SD1.5 scale. EMO Decode Clip gives the library's frames from it
    and from the old 5-D scaled layout, and decodes it after a core latent node (LatentUpscaleBy's
    nearest-exact x2 on the batch of frames)."""
    from nodes.comfy_env import latent_format
    from nodes.sampler import ClipInputs, EmoDecodeClip, EmoSampleClip

    emo_model, reference, emo_audio, _audio, mask, pipe = tiny_inputs
    latent, clips = EmoSampleClip().sample(emo_model, reference, emo_audio, 0, 3, 2.0, 5, face_mask=mask)
    with emo_model.loaded() as loaded:
        lib = ClipInputs(emo_model, reference, emo_audio, 0, mask).sample(
            loaded, steps=3, guidance=2.0, generator=torch.Generator().manual_seed(5)).float().cpu()
    f = emo_model.cfg.clip_frames
    assert latent["samples"].shape == (f, 4, 8, 8) and latent["samples"].is_contiguous() and clips >= 1
    assert latent["emo_clip"]["index"] == 0 and latent["emo_clip"]["frames"] == min(f, emo_audio["frames"])
    assert torch.allclose(latent["samples"] * latent_format().scale_factor, lib[0].transpose(0, 1), atol=1e-6)
    (frames,) = EmoDecodeClip().decode(emo_model, latent)
    (old,) = EmoDecodeClip().decode(emo_model, {"samples": lib, "emo_clip": latent["emo_clip"]})
    with emo_model.loaded() as loaded:
        expected = loaded.decode(lib).float().cpu()[:latent["emo_clip"]["frames"]]
    assert frames.shape == (latent["emo_clip"]["frames"], 64, 64, 3)
    assert torch.allclose(frames, expected, atol=1e-5) and torch.allclose(old, expected, atol=1e-6)
    up = {**latent, "samples": torch.nn.functional.interpolate(latent["samples"], scale_factor=2.0,
                                                               mode="nearest-exact")}
    (big,) = EmoDecodeClip().decode(emo_model, up)
    assert big.shape == (frames.shape[0], 128, 128, 3)
    with pytest.raises(ValueError, match="expected core's LATENT"):
        EmoDecodeClip().decode(emo_model, {"samples": torch.zeros(2, 8, 8)})


def test_emo_sample_clip_presets_are_the_librarys(tiny_inputs):
    """preset quality / fast give what emo_core.sampling.presets (the CLI's --preset) gives the
    library's sample_clip, whatever the steps / cfg widgets say; custom uses the widgets."""
    from emo_core.sampling.presets import PRESETS
    from nodes.sampler import ClipInputs, EmoSampleClip

    emo_model, reference, emo_audio, _audio, mask, _pipe = tiny_inputs
    clip = ClipInputs(emo_model, reference, emo_audio, 0, mask)
    got = {}
    for name, p in PRESETS.items():
        got[name] = EmoSampleClip().sample(emo_model, reference, emo_audio, 0, 1, 1.0, 5, preset=name,
                                           face_mask=mask)[0]["samples"]
        with emo_model.loaded() as loaded:
            lib = clip.sample(loaded, steps=p.steps, guidance=p.guidance, sampler=p.sampler,
                              guidance_interval=p.guidance_interval, generator=torch.Generator().manual_seed(5))
        assert torch.allclose(got[name] * 0.18215, lib.float().cpu()[0].transpose(0, 1), atol=1e-6), name
    custom = EmoSampleClip().sample(emo_model, reference, emo_audio, 0, 1, 1.0, 5, preset="custom",
                                    face_mask=mask)[0]["samples"]
    assert not torch.allclose(custom, got["fast"], atol=1e-3) and not torch.allclose(got["quality"], got["fast"],
                                                                                    atol=1e-3)


CORE_CHECK = """
import sys, torch
sys.path[:0] = [{repo!r}, {comfy!r}]
import comfy.options
comfy.options.enable_args_parsing()  # reads --cpu
import comfy.model_management as mm
import comfy.samplers
from emo_core.sampling.ddim import Schedule, sample_ddim
from emo_core.sampling.discrete import ModelSampling, core_model_sigmas
from nodes.guider import CoreModelWrap
schedule = Schedule.hallo()
w = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5
model = lambda x, t: (torch.tanh(torch.einsum("ij,bj...->bi...", w, x.double()) + t / 500.0) * 0.8).to(x.dtype)
n5 = torch.randn((1, 4, 3, 8, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
ref = sample_ddim(model, n5, schedule, 20)
noise = n5[0].transpose(0, 1).float()
for name in ("euler", "ddim"):
    out = comfy.samplers.sampler_object(name).sample(CoreModelWrap(model, schedule, torch.device("cpu")),
                                                     core_model_sigmas(schedule, 20), {{"seed": 0}}, None, noise,
                                                     torch.zeros_like(noise), disable_pbar=True)
    print(name, ((out.double().transpose(0, 1)[None] - ref).abs().max() / ref.abs().max()).item())
for name in comfy.samplers.SCHEDULER_NAMES:
    sig = comfy.samplers.calculate_sigmas(ModelSampling(schedule), name, 10)
    assert torch.isfinite(sig).all() and float(sig[-1]) == 0.0, name
print("schedulers ok")
"""


@pytest.mark.skipif(not (os.environ.get("EMO_COMFYUI_DIR") and os.environ.get("EMO_COMFYUI_PYTHON")),
                    reason="needs a ComfyUI checkout and its Python (EMO_COMFYUI_DIR, EMO_COMFYUI_PYTHON)")
def test_cores_own_samplers_and_schedulers_on_the_emo_schedule():
    """ComfyUI's own KSAMPLER euler / ddim through the EMO model_wrap give sample_ddim; every core
    scheduler runs on the EMO schedule (in ComfyUI's Python, in a subprocess)."""
    import subprocess
    from pathlib import Path

    comfy_dir = os.environ["EMO_COMFYUI_DIR"]
    code = CORE_CHECK.format(repo=str(Path(__file__).resolve().parents[1]), comfy=comfy_dir)
    out = subprocess.run([os.environ["EMO_COMFYUI_PYTHON"], "-c", code, "--cpu"], cwd=comfy_dir, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    errs = dict(line.split() for line in out.stdout.splitlines() if line.startswith(("euler", "ddim")))
    assert all(float(v) < 2e-3 for v in errs.values()) and len(errs) == 2, out.stdout
    assert "schedulers ok" in out.stdout


CORE_NODES_CHECK = """
import importlib.util, os, sys, tempfile, torch
sys.path[:0] = [{comfy!r}]
import comfy.options
comfy.options.enable_args_parsing()  # reads --cpu --preview-method latent2rgb
import comfy.samplers, comfy.utils, folder_paths
import nodes as core_nodes  # ComfyUI's own nodes.py, imported before the pack as in ComfyUI
from PIL import Image
folder_paths.set_temp_directory(tempfile.mkdtemp())
spec = importlib.util.spec_from_file_location("emo_portrait", os.path.join({repo!r}, "__init__.py"),
                                              submodule_search_locations=[{repo!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["emo_portrait"] = pack
spec.loader.exec_module(pack)  # as ComfyUI loads a custom node package
N = pack.NODE_CLASS_MAPPINGS
from emo_core.sampling.presets import PRESETS
from emo_portrait.nodes.loader import TINY_CHOICE
torch.set_num_threads(1)
sent = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: sent.append((value, total, preview)))
model = N["EmoModelLoader"]().load(TINY_CHOICE, "float32", False)[0]
image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
reference = N["EmoReferenceEncode"]().encode(model, image, 64, "center")[0]
audio = {{"waveform": torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(1)) * 0.1, "sample_rate": 16000}}
emo_audio = N["EmoAudioEncode"]().encode(model, 25.0, audio=audio)[0]
mask = torch.zeros(1, 64, 64)
mask[:, 16:48, 16:48] = 1
latent, clips = N["EmoSampleClip"]().sample(model, reference, emo_audio, 0, 1, 1.0, 0, preset="fast", face_mask=mask)
steps = PRESETS["fast"].steps
shown = [p for v, t, p in sent if p is not None]
assert len(shown) == steps and all(p[0] == "JPEG" and isinstance(p[1], Image.Image) and p[1].size == (8, 8)
                                   for p in shown), sent
print("sample clip previews", len(shown))
(up,) = core_nodes.LatentUpscaleBy().upscale(latent, "nearest-exact", 2.0)
(frames,) = N["EmoDecodeClip"]().decode(model, up)
assert up["emo_clip"] == latent["emo_clip"] and tuple(frames.shape) == (latent["emo_clip"]["frames"], 128, 128, 3)
print("latent upscale decoded", tuple(frames.shape))
sent.clear()
(sigmas,) = N["EmoScheduler"]().sigmas(model, "karras", 3, 1.0)
out = N["EmoGenerate"]().generate(model, reference, emo_audio, audio, 40, 2.0, 0, face_mask=mask,
                                  sampler=comfy.samplers.sampler_object("euler"), sigmas=sigmas)
shown = [(v, t) for v, t, p in sent if p is not None]
assert shown == [(i, 3 * clips) for i in range(1, 3 * clips + 1)] and out[0].shape[0] == emo_audio["frames"], sent
print("generate previews", len(shown), "clips", clips)
"""


@pytest.mark.skipif(not (os.environ.get("EMO_COMFYUI_DIR") and os.environ.get("EMO_COMFYUI_PYTHON")),
                    reason="needs a ComfyUI checkout and its Python (EMO_COMFYUI_DIR, EMO_COMFYUI_PYTHON)")
def test_previews_and_core_latent_nodes_in_comfyui():
    """In ComfyUI's Python with latent2rgb previews on, the pack loaded as ComfyUI loads it: EMO
    Sample Clip (fast preset) and EMO Generate (core's euler over core's karras sigmas) send a
    preview image with every step through core's latent_preview and progress bar; core's
    LatentUpscaleBy takes EMO Sample Clip's LATENT and EMO Decode Clip decodes the result."""
    import subprocess
    from pathlib import Path

    comfy_dir = os.environ["EMO_COMFYUI_DIR"]
    code = CORE_NODES_CHECK.format(repo=str(Path(__file__).resolve().parents[1]), comfy=comfy_dir)
    out = subprocess.run([os.environ["EMO_COMFYUI_PYTHON"], "-c", code, "--cpu", "--preview-method", "latent2rgb"],
                         cwd=comfy_dir, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sample clip previews" in out.stdout and "generate previews" in out.stdout, out.stdout
