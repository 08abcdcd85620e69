"""Sigma-space samplers (emo_core.sampling.samplers), guidance on an interval, presets, and
their wiring into the pipeline and the command line."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from emo_core.sampling import samplers as S
from emo_core.sampling.ddim import Schedule, sample_ddim
from emo_core.sampling.guidance import guided_on_interval
from emo_core.sampling.presets import PRESETS, Preset, preset
from test_core_models import randomize

REPO = Path(__file__).resolve().parents[1]
SCHEDULES = {
    "hallo": Schedule.hallo(),  # v prediction, zero terminal SNR (sigma = inf first), trailing
    "sd": Schedule(),  # epsilon, leading
    "x0": Schedule(prediction_type="sample", rescale_betas_zero_snr=True, timestep_spacing="trailing"),
}


def noise(seed=0, shape=(1, 4, 2, 8, 8)):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def random_model():
    w = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5
    return lambda x, t: torch.tanh(torch.einsum("ij,bj...->bi...", w, x) + t / 500.0) * 0.8


@pytest.mark.parametrize("name,steps", [("hallo", 40), ("hallo", 10), ("sd", 12), ("sd", 40), ("x0", 20)])
def test_ddim_through_the_sigma_interface_is_sample_ddim(name, steps, monkeypatch):
    schedule, model = SCHEDULES[name], random_model()
    shipped = (sample_ddim(model, noise(), schedule, steps), S.sample("ddim", model, noise(), schedule, steps))
    # The same algorithm: with the schedule in float64 the two runs agree to rounding.
    as_float32 = Schedule.alphas_cumprod
    monkeypatch.setattr(Schedule, "alphas_cumprod", lambda self: as_float32(self).double())
    old, new = sample_ddim(model, noise(), schedule, steps), S.sample("ddim", model, noise(), schedule, steps)
    torch.testing.assert_close(new, old, rtol=0, atol=1e-12)
    # As shipped (float32 schedule, float64 state) DDIM's float32 sqrt(abar) and sqrt(1 - abar) do
    # not square-sum to 1; the sigma-space form moves by that rounding only.
    torch.testing.assert_close(shipped[1], shipped[0], rtol=0, atol=5e-6)


def test_ddim_at_a_step_count_that_does_not_divide_1000_ends_steps_off_the_grid():
    """diffusers' DDIM (trailing) ends a step at t - 1000 // steps, one timestep from the next
    timestep when 1000 / steps is not whole; the sigma list follows the timesteps themselves."""
    ts = SCHEDULES["hallo"].timesteps(7)
    assert [a - 1000 // 7 - b for a, b in zip(ts, ts[1:])] != [0] * 6
    assert all(abs(a - 1000 // 7 - b) <= 1 for a, b in zip(ts, ts[1:]))


def gaussian_model(schedule, mu=0.3, sd=1.0):
    """The exact model output of data x0 ~ N(mu, sd^2): E[x0 | x_t] in closed form, as this
    schedule's prediction type, at integer or fractional timesteps."""
    table = S.sigma_table(schedule)

    def model_fn(x, t):
        s = S.t_to_sigma(table, t)
        a = 0.0 if math.isinf(s) else 1 / (1 + s * s)
        x0 = mu + math.sqrt(a) * sd ** 2 / (a * sd ** 2 + 1 - a) * (x - math.sqrt(a) * mu)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        return {"epsilon": eps, "sample": x0, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}[
            schedule.prediction_type]

    def exact(z, sigmas):
        """The probability-flow ODE's end point from unit noise z (x_t = z at the first sigma)."""
        s0 = float(sigmas[0])
        if math.isinf(s0):
            return mu + sd * z
        return mu + (S.noise_start(z, s0) - mu) * sd / math.sqrt(sd ** 2 + s0 ** 2)

    return model_fn, exact


@pytest.mark.parametrize("name", ["hallo", "sd"])
def test_samplers_converge_on_a_gaussian(name):
    schedule = SCHEDULES[name]
    model_fn, exact = gaussian_model(schedule)
    z = noise(3)
    errors = {}
    for sampler in S.SAMPLERS:
        errors[sampler] = []
        for steps in (5, 10, 20, 40):
            sigmas = S.model_sigmas(schedule, steps)
            out = S.sample(sampler, model_fn, z, schedule, steps)
            errors[sampler].append(float((out - exact(z, sigmas)).abs().max()))
        assert all(a > b for a, b in zip(errors[sampler], errors[sampler][1:])), (sampler, errors[sampler])
    # second order pays: DPM++ 2M and UniPC at 10 steps beat Euler (= DDIM) at 10 steps; on Hallo's
    # schedule (trailing: even steps in log sigma) by 2x. SD's leading spacing ends with one long
    # step in log sigma (t = 101 -> 1 at 10 steps), where all three are first order alike.
    margin = 0.6 if name == "hallo" else 1.0
    assert errors["dpmpp_2m"][1] < margin * errors["euler"][1], errors
    assert errors["unipc"][1] < margin * errors["euler"][1], errors
    assert errors["dpmpp_2m"][3] < 0.05 and errors["unipc"][3] < 0.05, errors


def test_karras_sigmas_use_fractional_timesteps():
    schedule = SCHEDULES["hallo"]
    sigmas = S.karras_sigmas(schedule, 10)
    assert math.isinf(float(sigmas[0])) and float(sigmas[-1]) == 0 and len(sigmas) == 11
    assert bool((sigmas[1:-1][:-1] > sigmas[1:-1][1:]).all())
    seen = []
    model_fn, exact = gaussian_model(schedule)
    out = S.sample("dpmpp_2m", lambda x, t: (seen.append(t), model_fn(x, t))[1], noise(), schedule, 10, sigmas=sigmas)
    assert seen[0] == 999 and any(isinstance(t, float) for t in seen)
    assert float((out - exact(noise(), sigmas)).abs().max()) < 0.2
    table = S.sigma_table(schedule)
    for t in (3, 17.25, 500.5, 997.5):
        assert S.sigma_to_t(table, S.t_to_sigma(table, t)) == pytest.approx(t, abs=1e-9)


def test_zero_snr_first_step_is_ddims():
    """From sigma = inf every sampler takes DDIM's first step: x0 + sigma_1 * noise."""
    schedule = SCHEDULES["hallo"]
    model = random_model()
    for sampler in S.SAMPLERS.values():
        steps = []
        sigmas = S.model_sigmas(schedule, 8)
        sampler(S.Denoiser(model, schedule), noise(), sigmas, callback=steps.append)
        first = steps[0]
        assert math.isinf(first["sigma"])
        torch.testing.assert_close(first["x"], first["denoised"] + first["sigma_next"] * noise())
    with pytest.raises(ValueError, match="epsilon"):
        S.Denoiser(model, Schedule(rescale_betas_zero_snr=True))(noise(), math.inf)


def test_guidance_interval_runs_one_conditional_forward_outside():
    from emo_core.models.backbone import Conditioning

    schedule = SCHEDULES["hallo"]
    calls = []

    def model(x, t, cond):
        calls.append((S.t_to_sigma(S.sigma_table(schedule), t), x.shape[0], cond.audio.shape[0]))
        return x * 0.1 + cond.audio.reshape(-1, 1, 1, 1, 1)

    both = Conditioning(audio=torch.tensor([0.0, 1.0], dtype=torch.float64))
    lo, hi = 0.28, 5.42
    model_fn = guided_on_interval(model, both, 3.5, S.sigma_interval(schedule, lo, hi))
    S.sample("dpmpp_2m", model_fn, noise(), schedule, 12)
    sigmas = [float(s) for s in S.model_sigmas(schedule, 12)[:-1]]
    assert [c[0] for c in calls] == sigmas
    inside = [lo <= s <= hi for s in sigmas]
    assert [(c[1], c[2]) for c in calls] == [(2, 2) if i else (1, 1) for i in inside]
    assert sum(inside) == 8  # the fast preset's interval: 8 of 12 steps guided, 20 forwards of batch 1 in all
    out = model_fn(noise(), 999)  # outside: the conditional half's condition (audio 1)
    torch.testing.assert_close(out, noise() * 0.1 + 1)
    with pytest.raises(ValueError, match="guidance interval"):
        S.sigma_interval(schedule, 2.0, 1.0)


def regions(dtype=torch.float32, generator=None):
    return {k: [torch.rand(1, (8 >> lv) ** 2, generator=generator, dtype=dtype) for lv in range(4)]
            for k in ("full", "face", "lip")}


def tiny_pipeline(family="hallo", dtype=torch.float32, rule=None):
    from emo_core.pipeline import EmoPipeline

    tiny = EmoPipeline.tiny(seed=4, family=family)
    return EmoPipeline(tiny.net, tiny.vae, tiny.schedule, dtype=dtype, reference_rule=rule)


@pytest.mark.parametrize("rule", ["hallo", "clean"])
def test_conditional_forward_is_the_guided_batchs_conditional_half(rule):
    """Outside the interval the single forward gives what the guided batch's conditional half
    gives, under Hallo's reference rule (per-frame portrait rows, motion rows per half) too."""
    from emo_core.conditioning import clip_conditioning, denoiser

    pipe = tiny_pipeline(dtype=torch.float64, rule=rule)
    randomize(pipe.net)
    g = torch.Generator().manual_seed(0)
    ref = pipe.encode_reference(torch.rand(64, 64, 3, generator=g), torch.randn(pipe.cfg.identity_dim, generator=g))
    a, f, n = pipe.cfg.audio, pipe.cfg.clip_frames, pipe.cfg.motion_frames
    windows = torch.randn(f, a.window, a.feature_blocks, a.feature_dim, generator=g, dtype=torch.float64)
    region = regions(torch.float64, g)
    mask = torch.zeros(64, 64, dtype=torch.float64)
    mask[8:56, 8:56] = 1
    cond = clip_conditioning(pipe.net, ref, audio_windows=windows, face_mask=mask, region_masks=region)
    motion = torch.randn(n, 4, 8, 8, generator=g, dtype=torch.float64)
    outs = []

    def spy(x, t, c):
        outs.append(pipe.net(x, t, c))
        return outs[-1]

    x = torch.randn(1, 4, f, 8, 8, generator=g, dtype=torch.float64)
    for inside in (True, False):
        denoiser(pipe.net, ref, cond, pipe.rule, motion, frames=f, guidance=3.5, model=spy,
                 interval=lambda t: inside)(x, 600)
    assert outs[0].shape[0] == 2 and outs[1].shape[0] == 1
    torch.testing.assert_close(outs[1], outs[0][1:], rtol=0, atol=1e-10)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc", "euler"])
def test_pipeline_runs_every_sampler_with_a_guidance_interval(sampler):
    pipe = tiny_pipeline()
    ref = pipe.encode_reference(torch.rand(64, 64, 3), torch.randn(pipe.cfg.identity_dim))
    a = pipe.cfg.audio
    total = pipe.cfg.clip_frames + 3  # two clips: the second reads the first's motion frames
    windows = torch.randn(total, a.window, a.feature_blocks, a.feature_dim)
    batches, progress = [], []
    original = pipe.net.denoising_unet.forward
    pipe.net.denoising_unet.forward = lambda x, t, c: (batches.append(x.shape[0]), original(x, t, c))[1]
    frames = torch.cat(list(pipe.generate(ref, windows, region_masks=regions(), steps=4, guidance=3.5, sampler=sampler,
                                          guidance_interval=(0.28, 5.42), callback=progress.append)))
    assert frames.shape == (total, 64, 64, 3) and bool(torch.isfinite(frames).all())
    sigmas = [float(s) for s in S.model_sigmas(pipe.schedule, 4)[:-1]]
    assert batches == [2 if 0.28 <= s <= 5.42 else 1 for s in sigmas] * 2
    last = progress[-1]
    assert (last["clip"], last["step"], last["steps"]) == (2, 4, 4)
    assert last["x"].shape == last["x0"].shape == last["output"].shape == (1, 4, pipe.cfg.clip_frames, 8, 8)


def test_pipeline_default_is_unchanged_and_bad_samplers_are_named():
    pipe = tiny_pipeline()
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    a = pipe.cfg.audio
    windows = torch.randn(pipe.cfg.clip_frames, a.window, a.feature_blocks, a.feature_dim)
    region = regions()
    runs = [torch.cat(list(pipe.generate(ref, windows, region_masks=region, steps=2, seed=1, **kw)))
            for kw in ({}, {"sampler": "ddim"})]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="sampler: expected one of ddim, euler, dpmpp_2m, unipc, got 'nope'"):
        list(pipe.generate(ref, windows, sampler="nope"))
    echo = tiny_pipeline("echomimic")
    ref = echo.encode_reference(torch.rand(64, 64, 3))
    a = echo.cfg.audio
    with pytest.raises(ValueError, match="context windows"):
        list(echo.generate(ref, torch.randn(4, a.window, a.feature_blocks, a.feature_dim), sampler="dpmpp_2m"))


def test_presets_resolve():
    assert preset("quality") == Preset("ddim", 40, 3.5, None)
    fast = preset("fast")
    assert fast.sampler in S.SAMPLERS and fast.steps < 40 and fast.guidance_interval is not None
    assert set(PRESETS) == {"quality", "fast"}
    with pytest.raises(ValueError, match="--preset: expected one of quality, fast, got 'turbo'"):
        preset("turbo", "--preset")


def test_cli_preset_fast_and_bad_sampler(tmp_path, capsys):
    from emo_core.__main__ import main

    image, speech = REPO / "samples" / "portrait.png", REPO / "samples" / "speech.wav"
    base = ["generate", "--image", str(image), "--audio", str(speech), "--tiny", "--framing", "center"]
    assert main([*base, "-o", str(tmp_path / "bad.mp4"), "--sampler", "nope"]) == 2
    assert "error: --sampler: expected one of ddim, euler, dpmpp_2m, unipc, got 'nope'" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "bad.mp4"), "--preset", "turbo"]) == 2
    assert "error: --preset: expected one of quality, fast" in capsys.readouterr().err
    out = tmp_path / "fast.mp4"
    assert main([*base, "-o", str(out), "--preset", "fast", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "2 steps, cfg 3.5" in err and "sampler dpmpp_2m, guidance at sigmas 0.28 to 5.42" in err
    assert out.is_file() and not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize("family", ["emo", "hallo"])
def test_deep_cache_shallow_branch_rebuilds_the_full_forward(family):
    """Reusing the deep features of the same input gives the full forward's output: the shallow
    branch wires conv_in, the first down block's skips and the last up block as the full one."""
    from emo_core.models.backbone import DeepCache
    from test_core_models import conditioning, make_net

    net = make_net(family)
    x, cond = conditioning(net)
    unet = net.denoising_unet
    mids = []
    original = unet.mid_block.mid
    unet.mid_block.mid = lambda *a: (mids.append(1), original(*a))[1]
    cache = DeepCache(3)
    with torch.no_grad():
        plain = net(x, 400, cond)
        outs = [unet(x, 400, cond, cache=cache) for _ in range(4)]
    assert len(mids) == 1 + 2  # plain, then full, shallow, shallow, full
    for out in outs:
        torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="deep_cache"):
        DeepCache(0)


def test_pipeline_deep_cache():
    pipe = tiny_pipeline()
    randomize(pipe.net)
    ref = pipe.encode_reference(torch.rand(64, 64, 3), torch.randn(pipe.cfg.identity_dim))
    a = pipe.cfg.audio
    windows = torch.randn(pipe.cfg.clip_frames, a.window, a.feature_blocks, a.feature_dim)
    region = regions()
    run = lambda **kw: torch.cat(list(pipe.generate(ref, windows, region_masks=region, steps=6, seed=2, **kw)))
    plain = run(sampler="dpmpp_2m")
    torch.testing.assert_close(run(sampler="dpmpp_2m", deep_cache=1), plain, rtol=0, atol=0)
    mids = []
    original = pipe.net.denoising_unet.mid_block.mid
    pipe.net.denoising_unet.mid_block.mid = lambda *a: (mids.append(1), original(*a))[1]
    cached = run(sampler="dpmpp_2m", deep_cache=2, guidance=1.0)
    assert len(mids) == 3 and cached.shape == plain.shape and bool(torch.isfinite(cached).all())


@pytest.mark.parametrize("name,steps", [("hallo", 20), ("x0", 20), ("sd", 12)])
def test_a_clip_started_from_its_join_runs_the_schedule_from_there(name, steps, monkeypatch):
    """``chaining.join_timestep`` / ``join_start``: a later clip starts from the previous clip's last
    frame noised to the join's level and runs only the steps from it on, with DDIM and through the
    sigma samplers alike (Euler over the model's sigmas is DDIM)."""
    from emo_core.chaining import join_start, join_timestep

    schedule, model = SCHEDULES[name], random_model()
    t0 = join_timestep(schedule, steps, 0.7)
    assert t0 <= 0.7 * schedule.num_train_timesteps - 1 and t0 in schedule.timesteps(steps)
    assert join_timestep(schedule, steps, 1.0) is None
    last = noise(5, (1, 4, 8, 8))
    x = join_start(noise(), last, schedule, t0)
    a = schedule.alphas_cumprod()[t0].double()
    torch.testing.assert_close(x[:, :, 1], a.sqrt() * last + (1 - a).sqrt() * noise()[:, :, 1])
    seen = []
    spy = lambda x, t: (seen.append(int(t)), model(x, t))[1]
    ddim = sample_ddim(spy, x, schedule, steps, start_t=t0)
    assert seen == [t for t in schedule.timesteps(steps) if t <= t0]
    as_float32 = Schedule.alphas_cumprod
    monkeypatch.setattr(Schedule, "alphas_cumprod", lambda self: as_float32(self).double())
    torch.testing.assert_close(S.sample("ddim", model, x, schedule, steps, start_t=t0),
                               sample_ddim(model, x, schedule, steps, start_t=t0), rtol=0, atol=1e-10)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="join_denoise"):
            join_timestep(schedule, steps, bad)
    assert join_timestep(SCHEDULES["hallo"], 1, 0.5) is None  # one step (t = 999): from noise
