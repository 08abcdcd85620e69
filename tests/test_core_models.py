"""The EMO network on tiny configs: shapes, the data flow of reference features, speed layers."""
import math
from dataclasses import replace

import pytest
import torch

from emo_core.config import ConfigError, EmoConfig
from emo_core.models.attention import AttnContext, ReferenceFeatures
from emo_core.models.backbone import Conditioning
from emo_core.models.emo import EmoNet
from emo_core.models.speed import SpeedEncoder, bucket_encode, context_windows
from emo_core.models.temporal import TemporalModule


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replaces every parameter by noise so zero-initialised layers (temporal proj_out,
    face-locator conv_out, audio zero convs, speed attention) are not vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def make_net(family="emo", seed=0) -> EmoNet:
    torch.manual_seed(seed)
    net = EmoNet(EmoConfig.tiny(family=family, speed=family == "emo"))
    return randomize(net, seed).eval().requires_grad_(False)


def conditioning(net: EmoNet, b=1, f=None, size=64, seed=1) -> tuple[torch.Tensor, Conditioning]:
    cfg = net.cfg
    f = f or cfg.clip_frames
    g = torch.Generator().manual_seed(seed)
    h = size // 8
    ref_latent = torch.randn(b, 4, h, h, generator=g)
    motion = torch.randn(b, cfg.motion_frames, 4, h, h, generator=g)
    identity = net.identity_tokens(torch.randn(b, cfg.identity_dim, generator=g) if cfg.identity_dim else None, b)
    a = cfg.audio
    audio = net.audio_tokens(torch.randn(b, f, 2 * a.context + 1, a.feature_blocks, a.feature_dim, generator=g))
    mask = torch.zeros(b, size, size)
    mask[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    region = None
    if a.region_attention:
        region = {k: [torch.rand(b, (h >> lv) ** 2, generator=g) for lv in range(4)] for k in ("full", "face", "lip")}
    cond = Conditioning(reference=net.reference_features(ref_latent, identity, motion), identity=identity, audio=audio,
                        face=net.face_features(mask), speed=net.speed_tokens(torch.rand(b, f, generator=g) * 3),
                        region_masks=region, region_weights=(1.0, 1.0, 1.0) if region else None)
    x = torch.randn(b, 4, f, h, h, generator=g)
    return x, cond


@pytest.mark.parametrize("family", ["emo", "hallo"])
def test_module_shapes(family):
    net = make_net(family)
    cfg = net.cfg
    x, cond = conditioning(net, b=2)
    c0 = cfg.unet.block_out_channels[0]
    assert cond.face.shape == (2, c0, 8, 8)
    assert cond.audio.shape == (2, cfg.clip_frames, cfg.audio.tokens, cfg.audio.token_dim)
    names = net.reference_unet.layer_names()
    assert set(cond.reference.spatial) == set(names) == set(net.denoising_unet.reference_layer_names())
    for name, feats in cond.reference.spatial.items():
        assert feats.ndim == 3 and feats.shape[0] == 2
        assert cond.reference.motion[name].shape[:2] == (2, cfg.motion_frames)
    if family == "emo":
        assert cond.speed.shape == (2, cfg.clip_frames, cfg.speed.token_dim)
        assert cond.identity is None
    else:
        assert cond.identity.shape == (2, cfg.identity_tokens, cfg.unet.cross_attention_dim)
    out = net(x, 500, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_speed_encoding_matches_formula():
    cfg = EmoConfig.tiny().speed
    w = torch.tensor([[0.0, 0.3, 1.7, 9.0]])
    enc = bucket_encode(w, cfg.bucket_centers, cfg.bucket_radii)
    assert enc.shape == (1, 4, len(cfg.bucket_centers))
    for i, wi in enumerate(w[0].tolist()):
        for d, (c, r) in enumerate(zip(cfg.bucket_centers, cfg.bucket_radii)):
            assert enc[0, i, d].item() == pytest.approx(math.tanh((wi - c) / r * 3), abs=1e-6)
    win = context_windows(torch.arange(5.0)[None, :, None], 2)[0, :, :, 0]
    assert win[0].tolist() == [0, 0, 0, 1, 2] and win[4].tolist() == [2, 3, 4, 4, 4]
    assert SpeedEncoder(cfg)(w).shape == (1, 4, cfg.token_dim)


@pytest.mark.parametrize("film", [False, True])
def test_speed_layers_start_as_identity(film):
    torch.manual_seed(0)
    cfg = EmoConfig.tiny()
    net = EmoNet(replace(cfg, speed=replace(cfg.speed, film=film)))
    assert any(".speed_film." in n for n, _ in net.named_parameters()) == film
    # Give every layer but the speed layers' zero-initialised outputs non-trivial weights.
    randomize(net)
    for name, p in net.named_parameters():
        if "speed_attention.to_out" in name or ".speed_film." in name:
            p.data.zero_()
    net.eval()
    x, cond = conditioning(net)
    with torch.no_grad():
        with_speed = net(x, 300, cond)
        without = net(x, 300, Conditioning(**{**cond.__dict__, "speed": None}))
        other = net(x, 300, Conditioning(**{**cond.__dict__, "speed": net.speed_tokens(torch.full((1, 4), 7.0))}))
    torch.testing.assert_close(with_speed, without, rtol=0, atol=0)
    torch.testing.assert_close(other, without, rtol=0, atol=0)
    randomize(net, seed=3)
    with torch.no_grad():
        assert not torch.allclose(net(x, 300, cond), net(x, 300, Conditioning(**{**cond.__dict__, "speed": None})))


def test_motion_frames_join_the_temporal_attention():
    torch.manual_seed(0)
    mod = randomize(TemporalModule(16, heads=2, norm_groups=8)).eval()
    x = torch.randn(2 * 4, 16, 4, 4)
    motion = torch.randn(2, 3, 16, 4, 4)
    with torch.no_grad():
        alone, joined = mod(x, 4), mod(x, 4, motion)
        other = mod(x, 4, torch.randn(2, 3, 16, 4, 4))
    assert joined.shape == x.shape
    assert not torch.allclose(alone, joined) and not torch.allclose(joined, other)


def test_train_and_eval_modes_agree_with_checkpointing():
    net = make_net("hallo")
    x, cond = conditioning(net)
    with torch.no_grad():
        ref_eval = net(x, 700, cond)
    net.train()
    net.denoising_unet.set_gradient_checkpointing(True)
    x.requires_grad_(True)
    out = net(x, 700, cond)
    torch.testing.assert_close(out.detach(), ref_eval, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_reference_dropout_equals_plain_self_attention():
    """A row whose reference is inactive must equal a run with no reference at all."""
    net = make_net("hallo")
    x, cond = conditioning(net)
    ref = cond.reference
    off = ReferenceFeatures(ref.spatial, ref.motion, torch.tensor([False]))
    none = ReferenceFeatures({k: v[:, :0] for k, v in ref.spatial.items()}, ref.motion)
    with torch.no_grad():
        a = net(x, 100, Conditioning(**{**cond.__dict__, "reference": off}))
        b = net(x, 100, Conditioning(**{**cond.__dict__, "reference": none}))
        c = net(x, 100, cond)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, c)


def test_every_attention_gets_the_context():
    """Counts processor calls per layer: each reference-attention layer reads the features once."""
    from emo_core.models.attention import RefReadProcessor

    net = make_net("emo")
    calls = {}

    class Counting(RefReadProcessor):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, ctx=None):
            assert isinstance(ctx, AttnContext) and ctx.reference is not None
            calls[self.name] = calls.get(self.name, 0) + 1
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, ctx)

    for path, m in net.denoising_unet.named_modules():
        if path.endswith(".attn1") and ".attentions." in path:
            m.set_processor(Counting(m.processor.name))
    x, cond = conditioning(net)
    with torch.no_grad():
        net(x, 10, cond)
    assert calls == {name: 1 for name in net.denoising_unet.reference_layer_names()}


def test_config_errors_name_the_values():
    with pytest.raises(ConfigError, match="exceeds the temporal position encoding length"):
        EmoConfig(clip_frames=30, motion_frames=4)
    with pytest.raises(ConfigError, match="prediction_type"):
        EmoConfig(prediction_type="x0")
    cfg = EmoConfig.tiny()
    assert EmoConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown EmoConfig keys"):
        EmoConfig.from_dict({**cfg.to_dict(), "frames": 3})


def test_latent_size_must_fit_the_unet():
    net = make_net("emo")
    x, cond = conditioning(net)
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.randn(1, 4, 4, 12, 12), 10, cond)


def test_every_attention_goes_through_its_processor():
    """Temporal, speed and audio attentions dispatch to their processor too (none reads to_q/k/v
    behind its back), so a swapped processor reaches every attention layer."""
    from diffusers.models.attention_processor import Attention

    from emo_core.models.attention import AttnProcessor

    net = make_net("emo")
    seen = set()

    class Counting(AttnProcessor):
        def __init__(self, path):
            super().__init__()
            self.path = path

        def __call__(self, attn, hidden_states, *args, **kwargs):
            seen.add(self.path)
            return super().__call__(attn, hidden_states, *args, **kwargs)

    wrapped = {path for path, m in net.denoising_unet.named_modules()
               if isinstance(m, Attention) and type(m.processor) is AttnProcessor}
    assert any("motion_modules" in p for p in wrapped) and any("audio_modules" in p for p in wrapped)
    for path, m in net.denoising_unet.named_modules():
        if path in wrapped:
            m.set_processor(Counting(path))
    x, cond = conditioning(net)
    with torch.no_grad():
        net(x, 10, cond)
    assert seen == wrapped
