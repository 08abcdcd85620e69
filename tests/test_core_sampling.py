"""DDIM against diffusers' scheduler, classifier-free guidance batching, clip chaining."""
import pytest
import torch
from diffusers import DDIMScheduler

from emo_core import families
from emo_core.chaining import chain_clips, first_motion_frames, mask_box, move_face, plan_clips
from emo_core.pipeline import EmoPipeline
from emo_core.sampling.ddim import Schedule, sample_ddim
from emo_core.sampling.guidance import batch_conditions, guided, guided_speed, unconditional, without_speed
from test_core_models import conditioning, make_net, randomize


def toy_model(x, t):
    return torch.sin(x * 1.3 + t / 200.0) * 0.7


@pytest.mark.parametrize("schedule", [
    Schedule(),
    Schedule.hallo(),
    Schedule(prediction_type="v_prediction", timestep_spacing="linspace"),
])
@pytest.mark.parametrize("steps", [3, 7, 40])
def test_ddim_matches_diffusers(schedule, steps):
    ref = DDIMScheduler(**{k: getattr(schedule, k) for k in (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
        "rescale_betas_zero_snr", "timestep_spacing", "steps_offset", "set_alpha_to_one", "clip_sample")})
    ref.set_timesteps(steps)
    x0 = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x0.clone()
    for t in ref.timesteps:
        x = ref.step(toy_model(x, int(t)), t, x).prev_sample
    assert [int(t) for t in ref.timesteps] == schedule.timesteps(steps)
    ours = sample_ddim(toy_model, x0.clone(), schedule, steps)
    torch.testing.assert_close(ours, x, rtol=1e-12, atol=1e-12)


def test_ddim_stochastic_needs_noise_and_is_seeded():
    s = Schedule()
    x = torch.randn(1, 4, 2, 4, 4)
    a = sample_ddim(toy_model, x, s, 5, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = sample_ddim(toy_model, x, s, 5, eta=1.0, generator=torch.Generator().manual_seed(3))
    c = sample_ddim(toy_model, x, s, 5, eta=0.0)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_cfg_batching_equals_two_passes():
    net = make_net("hallo")
    x, cond = conditioning(net)
    null = net.identity_tokens(None, 1)
    with torch.no_grad():
        batched = guided(net, cond, null, 3.5)(x, 400)
        u = net(x, 400, unconditional(cond, null))
        c = net(x, 400, cond)
    torch.testing.assert_close(batched, u + 3.5 * (c - u), rtol=1e-5, atol=1e-5)
    # The unconditional half really drops audio, face, identity and the reference.
    unc = unconditional(cond, null)
    assert torch.all(unc.audio == 0) and torch.all(unc.face == 0) and not unc.reference.active.any()
    both = batch_conditions(unc, cond)
    assert both.audio.shape[0] == 2 and both.reference.active.tolist() == [False, True]


def test_speed_guidance_equals_three_passes():
    """guided_speed: one batched forward on [uncond, baseline, cond], the baseline being cond with
    a head held still (speed-0 tokens) or with no speed; its own scale on the speed; with the
    speed's scale equal to the guidance scale, plain CFG."""
    from dataclasses import replace

    net = make_net("emo")
    x, cond = conditioning(net)
    assert cond.speed is not None
    null = net.identity_tokens(None, 1)
    still_tokens = net.speed_tokens(torch.zeros(cond.speed.shape[:2]))
    with torch.no_grad():
        u = net(x, 400, unconditional(cond, null))
        c = net(x, 400, cond)
        for tokens, baseline in ((None, without_speed(cond)), (still_tokens, replace(cond, speed=still_tokens))):
            b = net(x, 400, baseline)
            assert not torch.allclose(b, c)  # the speed changes the prediction
            out = guided_speed(net, cond, null, 2.0, 5.0, tokens)(x, 400)
            torch.testing.assert_close(out, u + 2.0 * (b - u) + 5.0 * (c - b), rtol=1e-5, atol=1e-5)
            plain = guided_speed(net, cond, null, 2.0, 2.0, tokens)(x, 400)
            torch.testing.assert_close(plain, guided(net, cond, null, 2.0)(x, 400), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="speed guidance"):
        guided_speed(net, cond, null, 2.0, float("nan"))
    with pytest.raises(ValueError, match="needs classifier-free guidance"):
        guided_speed(net, cond, null, 1.0, 5.0)


@pytest.mark.parametrize("seconds,fps", [(3.37, 25), (3.37, 30), (0.04, 25), (1.0, 24), (2.5, 29.97)])
def test_chaining_gives_exact_frame_counts(seconds, fps):
    total = int(seconds * fps + 0.5)
    f, n = 12, 4
    seen = []

    def make_clip(index, frames, motion):
        seen.append((index, frames, None if motion is None else motion[:, 0].tolist()))
        return torch.arange(frames.start, frames.stop, dtype=torch.float32)[:, None]

    out = torch.cat(list(chain_clips(total, f, n, make_clip, torch.full((n, 1), -1.0))))
    assert out.shape[0] == total
    assert out[:, 0].tolist() == list(range(total))
    assert seen[0][2] == [-1.0] * n  # first clip: the initial motion (reference copies)
    for (_, prev, _), (_, frames, motion) in zip(seen, seen[1:]):
        assert motion == list(range(prev.stop - n, prev.stop))  # the previous clip's last n frames
    assert len(plan_clips(total, f)) == -(-total // f)


def test_pipeline_chains_motion_frames_and_frame_indices():
    """EmoPipeline.generate as chain_clips promises: clip k+1 gets the last n frames that clip k
    decoded as its motion frames (clip 1: copies of the portrait), and its frames (audio rows,
    speed values) continue where clip k's stopped; the padded last clip repeats the last frame."""
    pipe = EmoPipeline.tiny(seed=4, family="emo")
    f, n, a = pipe.cfg.clip_frames, pipe.cfg.motion_frames, pipe.cfg.audio
    assert 0 < n < f
    portrait = torch.rand(64, 64, 3)
    ref = pipe.encode_reference(portrait)
    total = 3 * f - 1  # three clips, the last one padded by a frame
    # every row of the audio windows and every speed value carries its frame index
    index = torch.arange(total, dtype=torch.float32)
    windows = index[:, None, None, None].expand(total, a.window, a.feature_blocks, a.feature_dim).contiguous()
    motion_pixels, clip_rows, clip_speeds = [], [], []
    encode, sample_clip = pipe.vae.encode_images, pipe.sample_clip

    def spy_encode(images):
        motion_pixels.append(images.clone())
        return encode(images)

    def spy_sample(ref, audio_windows, motion_latents, **kw):
        clip_rows.append(audio_windows[:, 0, 0, 0].tolist())
        clip_speeds.append(kw["speed"].tolist())
        return sample_clip(ref, audio_windows, motion_latents, **kw)

    pipe.vae.encode_images, pipe.sample_clip = spy_encode, spy_sample
    region = {k: [torch.ones(1, (8 >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}
    clips = list(pipe.generate(ref, windows, region_masks=region, speed=index * 0.5, steps=1, seed=3))
    assert [c.shape[0] for c in clips] == [f, f, f - 1]
    assert len(motion_pixels) == len(clip_rows) == 3
    torch.testing.assert_close(motion_pixels[0], pipe.check_image(portrait)[None].expand(n, -1, -1, -1))
    decoded = [clips[0], clips[1]]
    for k in (1, 2):
        torch.testing.assert_close(motion_pixels[k], decoded[k - 1][-n:], rtol=0, atol=0)
    for k in range(3):
        expected = [min(i, total - 1) for i in range(k * f, (k + 1) * f)]
        assert clip_rows[k] == expected and clip_speeds[k] == [0.5 * i for i in expected]
    for prev, nxt in zip(clip_rows, clip_rows[1:]):
        assert nxt[0] == prev[-1] + 1  # no frame is skipped or repeated at a join


def _box_mask(box, h=64, w=64):
    m = torch.zeros(h, w)
    m[box[1]:box[3], box[0]:box[2]] = 1
    return m


def test_first_motion_frames_move_a_face_outside_its_mask_into_it():
    image = torch.zeros(3, 64, 64)
    image[:, 20:30, 4:14] = torch.arange(10.0)  # the "face": a ramp in x, at the left
    face = (4, 20, 14, 30)
    assert mask_box(_box_mask((40, 10, 60, 40))) == (40, 10, 60, 40)
    assert mask_box(torch.zeros(8, 8)) is None
    moved = first_motion_frames(image, 2, face, _box_mask((40, 10, 60, 40)))
    assert moved.shape == (2, 3, 64, 64)
    # the face's centre (9, 25) lands on the mask's (50, 25): 41 pixels right, the ramp intact
    torch.testing.assert_close(moved[0, :, 20:30, 45:55], image[:, 20:30, 4:14])
    assert float(moved[0, :, 20:30, 4:14].abs().sum()) == 0
    # the uncovered side repeats the image's edge; moving back restores what stayed inside
    torch.testing.assert_close(move_face(moved[0], (45, 20, 55, 30), face)[:, :, :23], image[:, :, :23])
    # a face inside its mask, or no mask / no box: plain copies of the portrait
    for box, mask in ((face, _box_mask((0, 10, 30, 40))), (None, _box_mask((40, 10, 60, 40))), (face, None)):
        torch.testing.assert_close(first_motion_frames(image, 2, box, mask), image[None].expand(2, -1, -1, -1))


@pytest.mark.parametrize("family", ["emo", "hallo"])
def test_pipeline_places_the_first_motion_frames_in_the_face_mask_for_emo(family):
    """EmoPipeline.generate's first clip: EMO's motion frames show the reference's face inside the
    face-locator mask (the CLI and nodes pass the face box they found); Hallo's stay copies, as
    Hallo's own code has them."""
    pipe = EmoPipeline.tiny(seed=4, family=family)
    n, a = pipe.cfg.motion_frames, pipe.cfg.audio
    portrait = torch.rand(64, 64, 3)
    ref = pipe.encode_reference(portrait)
    windows = torch.randn(pipe.cfg.clip_frames, 2 * a.context + 1, a.feature_blocks, a.feature_dim)
    seen = []
    encode = pipe.vae.encode_images
    pipe.vae.encode_images = lambda images: seen.append(images.clone()) or encode(images)
    face, mask = (4, 20, 14, 30), _box_mask((40, 10, 60, 40))
    region = {k: [torch.ones(1, (8 >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}
    list(pipe.generate(ref, windows, face_mask=mask, region_masks=region if pipe.cfg.audio.region_attention else None,
                       steps=1, seed=0, reference_box=face))
    image = pipe.check_image(portrait)
    expected = image[None].expand(n, -1, -1, -1)
    if family == "emo":
        expected = first_motion_frames(image.permute(2, 0, 1), n, face, mask).permute(0, 2, 3, 1)
        assert not torch.equal(expected, image[None].expand(n, -1, -1, -1))
    torch.testing.assert_close(seen[0], expected)


@pytest.mark.parametrize("fps", [25, 30])
def test_pipeline_video_length_matches_audio(fps):
    pipe = EmoPipeline.tiny(seed=0)
    ref = pipe.encode_reference(torch.rand(64, 64, 3), torch.randn(pipe.cfg.identity_dim))
    a = pipe.cfg.audio
    total = int(3.37 * fps + 0.5)
    windows = torch.randn(total, 2 * a.context + 1, a.feature_blocks, a.feature_dim)
    region = {k: [torch.rand(1, (8 >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}
    progress = []
    clips = list(pipe.generate(ref, windows, region_masks=region, steps=1, guidance=2.0,
                               callback=lambda s: progress.append(s)))
    frames = torch.cat(clips)
    assert frames.shape == (total, 64, 64, 3) and 0 <= frames.min() and frames.max() <= 1
    n_clips = -(-total // pipe.cfg.clip_frames)
    last = progress[-1]
    assert len(clips) == n_clips and {k: last[k] for k in ("clip", "clips", "step", "steps")} == {
        "clip": n_clips, "clips": n_clips, "step": 1, "steps": 1}
    # previews: the step's latents and x0 estimate travel with the progress
    assert last["x"].shape == last["x0"].shape == (1, 4, pipe.cfg.clip_frames, 8, 8)


def test_reference_caching_matches_recomputing():
    pipe = EmoPipeline.tiny(seed=1)
    img = torch.rand(64, 64, 3)
    emb = torch.randn(pipe.cfg.identity_dim)
    a = pipe.cfg.audio
    windows = torch.randn(6, 2 * a.context + 1, a.feature_blocks, a.feature_dim)
    region = {k: [torch.rand(1, (8 >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}
    runs = []
    for cache in (True, False):
        ref = pipe.encode_reference(img, emb, cache=cache)
        runs.append(torch.cat(list(pipe.generate(ref, windows, region_masks=region, steps=2, seed=5))))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_bad_inputs_name_the_input():
    pipe = EmoPipeline.tiny()
    with pytest.raises(ValueError, match="multiples of 64"):
        pipe.encode_reference(torch.rand(100, 64, 3))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        pipe.encode_reference(torch.rand(3, 64, 64))
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    a = pipe.cfg.audio
    with pytest.raises(ValueError, match="shorter than one frame"):
        list(pipe.generate(ref, torch.zeros(0, 2 * a.context + 1, a.feature_blocks, a.feature_dim)))
    with pytest.raises(ValueError, match="audio features must be"):
        list(pipe.generate(ref, torch.zeros(5, 3, 2, 2)))
    windows = torch.zeros(5, 2 * a.context + 1, a.feature_blocks, a.feature_dim)
    with pytest.raises(ValueError, match="speed covers 4 frames but the audio covers 5"):
        list(pipe.generate(ref, windows, speed=torch.zeros(4)))
    with pytest.raises(ValueError, match="face mask is"):
        list(pipe.generate(ref, windows, face_mask=torch.ones(32, 32), steps=1))


def test_interrupt_stops_cleanly():
    pipe = EmoPipeline.tiny()
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    a = pipe.cfg.audio
    windows = torch.zeros(9, 2 * a.context + 1, a.feature_blocks, a.feature_dim)
    region = {k: [torch.ones(1, (8 >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}

    class Stop(Exception):
        pass

    def cb(state):
        if state["clip"] == 2:
            raise Stop()

    got = []
    with pytest.raises(Stop):
        for clip in pipe.generate(ref, windows, region_masks=region, steps=2, callback=cb):
            got.append(clip)
    assert len(got) == 1


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_context_window_family_gives_exact_frame_counts(guidance):
    """EchoMimic-family models chain with context windows instead of motion frames."""
    pipe = EmoPipeline.tiny(family="echomimic")
    assert pipe.cfg.chaining == "context_windows"
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    a = pipe.cfg.audio
    windows = torch.randn(11, a.window, a.feature_blocks, a.feature_dim)
    mask = torch.zeros(64, 64)
    mask[8:56, 8:56] = 1
    frames = torch.cat(list(pipe.generate(ref, windows, face_mask=mask, steps=2, guidance=guidance)))
    assert frames.shape == (11, 64, 64, 3)


def test_zero_start_uses_zero_motion_maps():
    """The paper's first clip: n zero feature maps join the temporal attention (not zero frames)."""
    pipe = EmoPipeline.tiny(seed=2)
    randomize(pipe.net)  # temporal modules start as identity: give them weights so motion frames matter
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    a = pipe.cfg.audio
    windows = torch.randn(pipe.cfg.clip_frames, a.window, a.feature_blocks, a.feature_dim)
    region = {k: [torch.ones(1, (8 >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}
    seen = []
    original = pipe.net.denoising_unet.forward

    def spy(sample, t, cond):
        seen.append({k: v.clone() for k, v in cond.reference.motion.items()})
        return original(sample, t, cond)

    pipe.net.denoising_unet.forward = spy
    zeros = torch.cat(list(pipe.generate(ref, windows, region_masks=region, steps=1, motion_start="zeros")))
    copies = torch.cat(list(pipe.generate(ref, windows, region_masks=region, steps=1, motion_start="reference")))
    n = pipe.cfg.motion_frames
    first = seen[0]
    assert all(v.shape[1] == n and not v.any() for v in first.values())
    assert any(v.any() for v in seen[-1].values())
    assert not torch.allclose(zeros, copies)


@pytest.mark.parametrize("family", ["hallo", "emo", "echomimic"])
def test_bfloat16_weights_run_every_family(family):
    """GPUs run the network in fp16/bf16; the DDIM math stays in float32 (CPU has bf16 kernels)."""
    tiny = EmoPipeline.tiny(family=family)
    pipe = EmoPipeline(tiny.net, tiny.vae, tiny.schedule, dtype=torch.bfloat16)
    cfg = pipe.cfg
    ref = pipe.encode_reference(torch.rand(64, 64, 3), torch.randn(cfg.identity_dim) if cfg.identity_dim else None)
    a = cfg.audio
    regions = None
    if a.region_attention:
        regions = {k: [torch.rand(1, (8 >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}
    mask = torch.zeros(64, 64)
    mask[8:40, 8:40] = 1
    speed = torch.full((6,), 2.0) if cfg.speed else None
    frames = torch.cat(list(pipe.generate(ref, torch.randn(6, a.window, a.feature_blocks, a.feature_dim),
                                          face_mask=mask, region_masks=regions, speed=speed, steps=2)))
    assert pipe.net.dtype == torch.bfloat16
    assert frames.shape == (6, 64, 64, 3) and torch.isfinite(frames).all()


def test_per_frame_features_equal_precomputed_windows():
    """wav2vec-family models take [T, blocks, size] features and cut each clip's ±m windows
    themselves (5x less memory for long audio); the video is the same as with full windows."""
    from emo_core.preprocess.audio_features import window_features

    pipe = EmoPipeline.tiny(seed=3)
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    a = pipe.cfg.audio
    feats = torch.randn(11, a.feature_blocks, a.feature_dim)
    region = {k: [torch.rand(1, (8 >> lv) ** 2) for lv in range(4)] for k in ("full", "face", "lip")}
    runs = [torch.cat(list(pipe.generate(ref, audio, region_masks=region, steps=1, seed=1)))
            for audio in (feats, window_features(feats, a.context))]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert runs[0].shape[0] == 11


def test_x0_prediction_schedule_and_ddim_round_trip():
    from emo_core.sampling.ddim import predicted_x0_and_eps

    s = Schedule.for_prediction("sample")
    assert s.prediction_type == "sample" and s.rescale_betas_zero_snr and s.timestep_spacing == "trailing"
    assert Schedule.for_prediction("epsilon") == Schedule() and Schedule.for_prediction("v_prediction") == Schedule.hallo()
    with pytest.raises(ValueError, match="prediction_type"):
        Schedule(prediction_type="x0")
    # x0 and eps read back from an x0 output are the ones that made x_t
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 8, generator=g, dtype=torch.float64), torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    a = s.alphas_cumprod().double()[300]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    got_x0, got_eps = predicted_x0_and_eps(x0, xt, a, "sample")
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)
    # a model that always answers the clean sample: deterministic DDIM ends exactly on it (with a
    # step count dividing 1000 the last step lands on alpha = 1, as in diffusers)
    target = torch.randn(1, 4, 2, 4, 4, generator=g, dtype=torch.float64)
    out = sample_ddim(lambda x, t: target, torch.randn(target.shape, generator=g, dtype=torch.float64), s, 20)
    torch.testing.assert_close(out, target)


def test_one_window_edge_rule():
    """Audio windows read across clip borders (the whole video is the sequence), speed windows
    stop at the clip edge, rows past the video's end repeat the last frame: one helper, one rule."""
    from emo_core.models.speed import context_windows
    from emo_core.windows import frame_windows, take_padded

    video = torch.arange(10.0)
    clip2 = frame_windows(video, 2, range(4, 8))  # the second clip of 4 frames
    assert clip2[0].tolist() == [2, 3, 4, 5, 6] and clip2[-1].tolist() == [5, 6, 7, 8, 9]
    last = frame_windows(video, 2, range(8, 12))  # padded last clip
    assert last[0].tolist() == [6, 7, 8, 9, 9] and torch.equal(last[2], last[1]) and torch.equal(last[3], last[1])
    assert take_padded(video, range(8, 12)).tolist() == [8, 9, 9, 9]
    speed = context_windows(video[4:8][None], 2)[0]  # the same clip's speed values only
    assert speed[0].tolist() == [4, 4, 4, 5, 6] and speed[-1].tolist() == [5, 6, 7, 7, 7]


def test_later_clips_start_from_the_previous_clips_last_frame(monkeypatch):
    """EMO family: clip k+1's sampling starts at ``join_timestep`` from the last motion frame (the
    last decoded frame of clip k, encoded) held still and noised (``join_start``); the first
    clip starts from pure noise; ``join_denoise=1`` (Hallo's and EchoMimic's default) never does."""
    import emo_core.pipeline as P
    from emo_core.chaining import join_start, join_timestep
    from emo_core.sampling.ddim import frame_noise

    pipe = EmoPipeline.tiny(seed=4, family="emo")
    f, a = pipe.cfg.clip_frames, pipe.cfg.audio
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    windows = torch.randn(2 * f, a.window, a.feature_blocks, a.feature_dim)
    starts, encoded = [], []
    real_ddim, encode = P.sample_ddim, pipe.vae.encode_images
    monkeypatch.setattr(P, "sample_ddim", lambda fn, x, *a, **kw: (starts.append((x.clone(), kw.get("start_t"))),
                                                                    real_ddim(fn, x, *a, **kw))[1])
    pipe.vae.encode_images = lambda images: (encoded.append(encode(images)), encoded[-1])[1]
    steps, seed = 5, 2
    list(pipe.generate(ref, windows, steps=steps, guidance=1.0, seed=seed))
    t0 = join_timestep(pipe.schedule, steps, families.FAMILIES["emo"].join_denoise)
    assert t0 is not None and [s[1] for s in starts] == [None, t0]
    g = torch.Generator().manual_seed(seed)
    rho = families.FAMILIES["emo"].noise_correlation
    noises = [frame_noise(starts[0][0].shape, rho, g) for _ in range(2)]
    torch.testing.assert_close(starts[0][0], noises[0])
    torch.testing.assert_close(starts[1][0], join_start(noises[1], encoded[1][-1:], pipe.schedule, t0))
    starts.clear()
    list(pipe.generate(ref, windows, steps=steps, guidance=1.0, seed=seed, join_denoise=1.0))
    assert [s[1] for s in starts] == [None, None]


def test_frame_noise_shares_the_asked_part_between_frames():
    """ddim.frame_noise: correlation 0 is exactly torch.randn; otherwise every frame stays unit
    normal and any two frames of a clip correlate by the asked share; bad shares are refused."""
    from emo_core.sampling.ddim import frame_noise

    shape = (2, 4, 6, 16, 16)
    torch.testing.assert_close(frame_noise(shape, 0.0, torch.Generator().manual_seed(3)),
                               torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    for rho in (0.3, 0.8):
        x = frame_noise(shape, rho, torch.Generator().manual_seed(5))
        assert x.shape == shape
        per_frame = x.transpose(1, 2).reshape(2 * 6, -1)
        assert torch.allclose(per_frame.std(1), torch.ones(12), atol=0.06)
        a, b = x[:, :, 1].flatten(), x[:, :, 4].flatten()
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) - rho) < 0.06
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="noise_correlation"):
            frame_noise(shape, bad)


def test_pipeline_noise_correlation_is_checked_before_any_clip():
    pipe = EmoPipeline.tiny(seed=4, family="emo")
    a = pipe.cfg.audio
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    windows = torch.randn(pipe.cfg.clip_frames, a.window, a.feature_blocks, a.feature_dim)
    with pytest.raises(ValueError, match="noise_correlation"):
        next(pipe.generate(ref, windows, steps=2, guidance=1.0, noise_correlation=1.5))


def test_pipeline_speed_guidance(monkeypatch):
    """EmoPipeline.generate(speed_guidance=): the speed's own scale over three rows; equal to the
    guidance scale it gives plain CFG's video; the EMO family's default applies when none is
    given and CFG is on; without CFG it is refused before any clip; without a speed it is unused."""
    pipe = EmoPipeline.tiny(seed=4, family="emo")
    randomize(pipe.net, 5)  # speed layers that change the output
    f, a = pipe.cfg.clip_frames, pipe.cfg.audio
    ref = pipe.encode_reference(torch.rand(64, 64, 3))
    windows = torch.randn(f + 2, a.window, a.feature_blocks, a.feature_dim)
    speed = torch.linspace(0.5, 6.0, f + 2)

    def video(**kw):
        return torch.cat(list(pipe.generate(ref, windows, steps=3, guidance=2.5, seed=3, **kw)))

    from dataclasses import replace

    emo = families.FAMILIES["emo"]
    assert emo.speed_guidance is not None and emo.speed_guidance > emo.guidance
    monkeypatch.setitem(families.FAMILIES, "emo", replace(emo, speed_guidance=None))
    plain = video(speed=speed)
    torch.testing.assert_close(video(speed=speed, speed_guidance=2.5), plain, rtol=0, atol=1e-4)
    strong = video(speed=speed, speed_guidance=8.0)
    assert (strong - plain).abs().max() > 1e-3
    monkeypatch.setitem(families.FAMILIES, "emo", replace(emo, speed_guidance=8.0))
    torch.testing.assert_close(video(speed=speed), strong, rtol=0, atol=0)  # the family's default
    torch.testing.assert_close(video(), video(speed_guidance=8.0), rtol=0, atol=0)  # no speed: unused
    with pytest.raises(ValueError, match="speed guidance 5 needs classifier-free guidance"):
        next(pipe.generate(ref, windows, steps=3, guidance=1.0, speed=speed, speed_guidance=5.0))
