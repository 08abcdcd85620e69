"""CI-sized training: all three stages on the synthetic set (loss falls; each stage trains
exactly its parameters), condition dropout = CFG's null inputs, initialisation sources and
clear errors for bad configs/checkpoints."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from emo_core.__main__ import main as cli
from emo_core.models.attention import ReferenceFeatures
from emo_core.sampling.guidance import unconditional
from emo_core.train import data as D
from emo_core.train import synthetic
from emo_core.train.init import InitError, init_animatediff, init_hallo, init_sd15, initialise
from emo_core.train.latents import build_codec
from emo_core.train.loop import (TrainConfigError, TrainStep, build_net, conditioning, drop_conditions, load_config,
                                 schedule_for, train, _dataset)
from emo_core.train.stages import StageError, apply_stage

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "emo_core" / "train" / "configs"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("syn")
    synthetic.make_dataset(d, 12, 16, 64, seed=5)
    return d


def _cfg(stage: int, shards: Path, out: Path, steps: int, **init) -> dict:
    cfg = load_config(CONFIGS / f"tiny_stage{stage}.json", [
        f"data.shards={json.dumps([str(shards)])}", f"output.dir={json.dumps(str(out))}", "output.progress=false",
        f"train.max_steps={steps}", f"output.checkpoint_every={steps}", "output.log_every=5", "optim.lr=0.001",
        "optim.warmup_steps=0", "train.batch_size=4"])
    cfg["init"] = {k: str(v) for k, v in init.items()}
    cfg["model"]["overrides"]["clip_frames"] = 4
    return cfg


def _fixed_batch(cfg, net, n=8):
    codec = build_codec(cfg["latents"])
    ds = _dataset(cfg, net.cfg, D.list_shards(cfg["data"]["shards"]), codec.channels)
    batch = D.collate([ds[10_000 + i] for i in range(n)])
    lat = codec.encode(batch["pixels"].flatten(0, 1)).unflatten(0, batch["pixels"].shape[:2])
    g = torch.Generator().manual_seed(0)
    clip = lat[:, ds.motion:].permute(0, 2, 1, 3, 4)
    return {"clip": clip, "ref": codec.encode(batch["reference"]), "motion": lat[:, :ds.motion] if ds.motion else None,
            "mask": batch["mask"], "audio": batch["audio"] if cfg["stage"] >= 2 else None,
            "speed": batch["speed"] if cfg["stage"] == 3 else None,
            "noise": torch.randn(clip.shape, generator=g), "t": torch.linspace(50, 950, n).long()}


def _loss(cfg, net, b) -> float:
    step = TrainStep(net, schedule_for(cfg, net.cfg), cfg["stage"])
    none = torch.zeros(b["clip"].shape[0], dtype=torch.bool)
    with torch.no_grad():
        return float(step(b["clip"], b["ref"], b["motion"], b["mask"], b["audio"], b["speed"], b["noise"], b["t"],
                          {"reference": none, "audio": none, "face": none, "identity": none}))


def _net_at(cfg, ckpt):
    net, _, _ = build_net({**cfg, "init": {"checkpoint": str(ckpt)}})
    return net


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_gradients_reach_exactly_the_trained_parameters(stage, shards, tmp_path):
    cfg = _cfg(stage, shards, tmp_path / "o", 1)
    net, _, _ = build_net(cfg)
    names = set(apply_stage(net, stage))
    b = _fixed_batch(cfg, net, n=2)
    step = TrainStep(net, schedule_for(cfg, net.cfg), stage)
    none = torch.zeros(2, dtype=torch.bool)
    step(b["clip"], b["ref"], b["motion"], b["mask"], b["audio"], b["speed"], b["noise"], b["t"],
         {"reference": none, "audio": none, "face": none, "identity": none}).backward()
    got = {n for n, p in net.named_parameters() if p.grad is not None}
    assert got == names  # every trained tensor gets a gradient (DDP needs no find_unused_parameters)
    assert all(not p.requires_grad for n, p in net.named_parameters() if n not in names)
    if stage == 1:
        assert not any(re.search(r"motion_modules|audio|speed", n) for n in names)
        assert any(n.startswith("reference_unet.") for n in names) and any(n.startswith("face_locator.") for n in names)
    if stage == 2:
        assert any(".audio_modules." in n for n in names) and any(".motion_modules." in n for n in names)
        assert not any("speed" in n for n in names)
    if stage == 3:
        assert all(".motion_modules." in n or n.startswith("speed_encoder.") for n in names)
        assert any(".speed_attention." in n for n in names)
        assert not any(".audio_modules." in n for n in names)


def test_three_stages_learn_and_freeze(shards, tmp_path):
    prev = None
    for stage, steps in ((1, 40), (2, 25), (3, 20)):
        cfg = _cfg(stage, shards, tmp_path / f"s{stage}", steps, **({"checkpoint": prev} if prev else {}))
        start, _, _ = build_net(cfg)
        b = _fixed_batch(cfg, start)
        before = _loss(cfg, start, b)
        r = train(cfg, log=lambda s: None)
        after_net = _net_at(cfg, r.final)
        after = _loss(cfg, after_net, b)
        assert after < before, f"stage {stage}: fixed-batch loss {before:.4f} -> {after:.4f}"
        trained = set(apply_stage(start, stage))
        s0, s1 = start.state_dict(), after_net.state_dict()
        frozen_changed = [k for k in s0 if k not in trained and not torch.equal(s0[k], s1[k])]
        assert frozen_changed == []
        changed = [k for k in trained if not torch.equal(s0[k], s1[k])]
        assert len(changed) > 0.9 * len(trained)
        log = [json.loads(x) for x in (tmp_path / f"s{stage}" / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == steps
        prev = r.final
    assert (tmp_path / "s3" / f"checkpoint-{20:06d}" / "optimizer.safetensors").is_file()
    from emo_core.checkpoints import load_model

    loaded = load_model(prev)  # a training checkpoint is an inference model folder
    assert torch.equal(loaded.state_dict()["speed_encoder.mlp.0.weight"],
                       _net_at(cfg, prev).state_dict()["speed_encoder.mlp.0.weight"])


def test_stage3_adds_speed_film_to_a_stage2_checkpoint(shards, tmp_path):
    """model.overrides.speed.film (a --set on a key the config file does not spell out): stage 3
    from a FiLM-free stage-2 checkpoint starts the FiLM layers fresh at zero (the same output),
    trains them, and the checkpoint loads back with them."""
    r1 = train(_cfg(1, shards, tmp_path / "s1", 2), log=lambda s: None)
    r2 = train(_cfg(2, shards, tmp_path / "s2", 2, checkpoint=r1.final), log=lambda s: None)
    plain = _cfg(3, shards, tmp_path / "p", 2, checkpoint=r2.final)
    film = load_config(plain, ["model.overrides.speed.film=true"])
    film["init"] = plain["init"]
    net, ec, report = build_net(film)
    assert ec.speed.film and "left fresh" in report[0]
    names = [n for n, _ in net.named_parameters() if ".speed_film." in n]
    assert names and set(names) <= set(apply_stage(net, 3))
    assert all(torch.count_nonzero(p) == 0 for n, p in net.named_parameters() if ".speed_film." in n)
    b = _fixed_batch(film, net)
    base, _, _ = build_net(plain)
    assert _loss(film, net, b) == pytest.approx(_loss(plain, base, b), abs=1e-6)
    r3 = train(film, log=lambda s: None)
    state = _net_at(film, r3.final).state_dict()
    assert any(torch.count_nonzero(state[n]) for n in names)  # trained
    with pytest.raises(TrainConfigError, match="overridez"):
        load_config(plain, ["model.overridez.speed.film=true"])


def test_condition_dropout_uses_the_cfg_null_inputs():
    from emo_core.config import EmoConfig
    from emo_core.models.emo import EmoNet

    torch.manual_seed(0)
    net = EmoNet(EmoConfig.tiny(family="hallo"))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ref = torch.randn(2, 4, 8, 8)
    cond, null = conditioning(net, ref, None, torch.rand(2, 64, 64), torch.randn(2, 4, 5, 2, 8), None,
                              identity_embedding=torch.randn(2, 8))
    unc = unconditional(cond, null)
    drop = drop_conditions(cond, null, {"reference": torch.tensor([True, False]), "audio": torch.tensor([True, False]),
                                        "face": torch.tensor([True, False]), "identity": torch.tensor([True, False])})
    assert torch.equal(drop.audio[0], unc.audio[0]) and torch.equal(drop.audio[1], cond.audio[1])
    assert torch.equal(drop.face[0], unc.face[0]) and torch.equal(drop.face[1], cond.face[1])
    assert torch.equal(drop.identity[0], unc.identity[0]) and torch.equal(drop.identity[1], cond.identity[1])
    assert drop.reference.active.tolist() == [False, True]
    assert isinstance(drop.reference, ReferenceFeatures)


def test_speed_dropout_gives_guidance_the_null_speed():
    """Guidance amplifies the asked speed only if its unconditional half lacks it, and training
    shows the network that null speed (``dropout.speed``): the same zero tokens in both."""
    from emo_core.config import EmoConfig
    from emo_core.models.emo import EmoNet

    torch.manual_seed(0)
    net = EmoNet(EmoConfig.tiny())
    ref = torch.randn(2, 4, 8, 8)
    f = net.cfg.clip_frames
    speed = torch.tensor([[1.0] * f, [6.0] * f])
    cond, null = conditioning(net, ref, None, torch.rand(2, 64, 64), None, speed)
    unc = unconditional(cond, null)
    assert cond.speed.abs().sum() > 0 and torch.equal(unc.speed, torch.zeros_like(cond.speed))
    drop = drop_conditions(cond, null, {"speed": torch.tensor([False, True])})
    assert torch.equal(drop.speed[0], cond.speed[0]) and torch.equal(drop.speed[1], unc.speed[1])


def test_timestep_shift_moves_training_towards_the_noisy_end():
    from emo_core.train.loop import sample_timesteps

    g = lambda: torch.Generator().manual_seed(4)
    assert torch.equal(sample_timesteps(1000, 64, 1.0, g()), torch.randint(0, 1000, (64,), generator=g()))
    plain, shifted = sample_timesteps(1000, 4000, 1.0, g()), sample_timesteps(1000, 4000, 3.0, g())
    assert shifted.min() >= 0 and shifted.max() <= 999
    # u -> 3u / (1 + 2u): the median noise level moves from 1/2 to 3/4 of the schedule
    assert abs(float(plain.float().median()) - 500) < 40 and abs(float(shifted.float().median()) - 750) < 40
    with pytest.raises(TrainConfigError, match="timestep_shift"):
        sample_timesteps(1000, 4, 0.0, g())


def test_frame_change_error_sees_the_join_and_the_wobble():
    from emo_core.sampling.ddim import Schedule
    from emo_core.train.loop import frame_change_error

    torch.manual_seed(1)
    b, c, f, h = 2, 3, 5, 4
    motion = torch.randn(b, 2, c, h, h)
    # a clip continuing the last motion frame with a constant change per frame
    step = 0.1 * torch.randn(b, c, 1, h, h)
    clip = motion[:, -1, :, None] + step * torch.arange(1, f + 1).view(1, 1, f, 1, 1)
    assert torch.allclose(frame_change_error(clip, clip, motion[:, -1]), torch.zeros(b))
    # the same clip moved by a constant offset (a jump at the join only): one of f changes is off
    off = frame_change_error(clip + 0.5, clip, motion[:, -1])
    assert torch.allclose(off, torch.full((b,), 0.5 ** 2 / f))
    # the plain MSE cannot tell the jump from a slow wobble of the same size; this error can
    wobble = clip + 0.5 * torch.tensor([1.0, -1, 1, -1, 1]).view(1, 1, f, 1, 1)
    assert bool((frame_change_error(wobble, clip, motion[:, -1]) > off).all())
    from emo_core.config import EmoConfig
    from emo_core.models.emo import EmoNet

    with pytest.raises(TrainConfigError, match="motion_loss"):
        TrainStep(EmoNet(EmoConfig.tiny()), Schedule(prediction_type="epsilon"), 3, motion_loss=1.0)


def test_join_rows_train_the_first_step_of_a_later_clip():
    """``train.join_prob``: chosen rows see what a later clip's first step sees at inference
    (``chaining.join_start``: the last motion frame held still, noised to the join's timestep) and
    learn the true clip from it; the other rows are the usual forward process."""
    from emo_core.chaining import join_start
    from emo_core.config import EmoConfig
    from emo_core.models.emo import EmoNet
    from emo_core.sampling.ddim import Schedule

    torch.manual_seed(2)
    net = EmoNet(EmoConfig.tiny())
    sched = Schedule(prediction_type="sample", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    step = TrainStep(net, sched, 3)
    f, n = net.cfg.clip_frames, net.cfg.motion_frames
    clip, motion, noise = torch.randn(2, 4, f, 8, 8), torch.randn(2, n, 4, 8, 8), torch.randn(2, 4, f, 8, 8)
    seen = {}
    forward = net.forward
    net.forward = lambda x, t, c: (seen.setdefault("x", x), forward(x, t, c))[1]
    none = torch.zeros(2, dtype=torch.bool)
    t = torch.tensor([699, 699])
    step(clip, torch.randn(2, 4, 8, 8), motion, torch.rand(2, 64, 64), None, torch.ones(2, n + f), noise, t,
         {"reference": none, "audio": none, "face": none, "identity": none}, None, torch.tensor([True, False]))
    a = sched.alphas_cumprod()[699]
    torch.testing.assert_close(seen["x"][0], join_start(noise[:1], motion[:1, -1], sched, 699)[0])
    torch.testing.assert_close(seen["x"][1], a.sqrt() * clip[1] + (1 - a).sqrt() * noise[1])


def test_init_from_sd15_animatediff_and_hallo(tmp_path):
    from diffusers import UNet2DConditionModel

    from emo_core.config import EmoConfig
    from emo_core.models.emo import EmoNet

    cfg = EmoConfig.tiny()
    sd = UNet2DConditionModel(**{k: v for k, v in cfg.unet.to_diffusers().items() if k != "center_input_sample"})
    (tmp_path / "unet").mkdir()
    save_file(sd.state_dict(), str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    net = EmoNet(cfg)
    init_sd15(net, tmp_path)
    w = sd.state_dict()["down_blocks.0.attentions.0.proj_in.weight"]
    assert torch.equal(net.denoising_unet.state_dict()["down_blocks.0.attentions.0.proj_in.weight"], w)
    assert torch.equal(net.reference_unet.state_dict()["down_blocks.0.attentions.0.proj_in.weight"], w)

    donor = EmoNet(cfg)
    mm = {k: v + 1 for k, v in donor.denoising_unet.state_dict().items()
          if ".motion_modules." in k and "speed" not in k}
    torch.save(mm, tmp_path / "mm.ckpt")
    report = init_animatediff(net, tmp_path / "mm.ckpt")
    assert "speed-layer tensors left fresh" in report[0]
    k = next(iter(mm))
    assert torch.equal(net.denoising_unet.state_dict()[k], mm[k])
    torch.save({"down_blocks.0.motion_modules.0.bogus": torch.zeros(1)}, tmp_path / "bad.ckpt")
    with pytest.raises(InitError, match="no temporal module"):
        init_animatediff(net, tmp_path / "bad.ckpt")

    hallo = EmoNet(EmoConfig.tiny(speed=False, family="hallo"))
    torch.save(hallo.state_dict(), tmp_path / "net.pth")
    with_speed = EmoNet(EmoConfig.tiny(speed=True, family="hallo"))
    report = init_hallo(with_speed, tmp_path / "net.pth")
    assert "speed-layer tensors left fresh" in report[0]
    with pytest.raises(InitError, match="Hallo-family"):
        init_hallo(EmoNet(cfg), tmp_path / "net.pth")
    with pytest.raises(InitError, match="shape mismatches|lacks|does not have"):
        init_sd15(EmoNet(cfg), tmp_path / "net.pth")  # a Hallo file is not an SD1.5 UNet


def test_random_init_starts_referencenet_as_a_copy_of_the_backbone(shards, tmp_path):
    cfg = _cfg(1, shards, tmp_path, 1)
    net, _, report = build_net(cfg)
    assert "copy of the backbone" in report[0]
    ref, backbone = net.reference_unet.state_dict(), net.denoising_unet.state_dict()
    assert ref.keys() <= backbone.keys()
    assert all(torch.equal(v, backbone[k]) for k, v in ref.items())
    w = "down_blocks.0.attentions.0.proj_in.weight"
    assert ref[w].data_ptr() != backbone[w].data_ptr()  # a copy: training one leaves the other
    other, _, _ = build_net({**cfg, "train": {**cfg["train"], "seed": 9}})
    assert not torch.equal(other.reference_unet.state_dict()[w], ref[w])  # still random per seed


def test_bad_configs_and_checkpoints_fail_clearly(shards, tmp_path, capsys):
    # a config naming a missing checkpoint: clear error from the command, nothing written
    cfg = _cfg(2, shards, tmp_path / "o2", 2, checkpoint=tmp_path / "missing")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    assert cli(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "not found" in err
    assert not (tmp_path / "o2").exists()

    # unknown keys / bad stage
    with pytest.raises(TrainConfigError, match="unknown config key 'train.lr'"):
        load_config({"stage": 1, "train": {"lr": 1}})
    with pytest.raises(TrainConfigError, match="stage must be"):
        load_config({"stage": 4, "data": {"shards": ["x"]}, "output": {"dir": "y"}})

    # stage 3 from a stage-1 checkpoint: incompatible
    r1 = train(_cfg(1, shards, tmp_path / "s1", 2), log=lambda s: None)
    with pytest.raises(InitError, match="stage-2 checkpoint"):
        build_net(_cfg(3, shards, tmp_path / "s3", 2, checkpoint=r1.final))
    # a checkpoint of another architecture
    other = _cfg(2, shards, tmp_path / "x", 2, checkpoint=r1.final)
    other["model"] = {"preset": "tiny", "with_speed": None, "overrides": {}, "file": None}
    with pytest.raises(InitError, match="differs"):
        build_net(other)
    # stage 3 on a model without speed layers
    nospeed = _cfg(3, shards, tmp_path / "y", 2)
    nospeed["model"]["overrides"]["speed"] = None
    net, _, _ = build_net(nospeed)
    with pytest.raises(StageError, match="speed"):
        apply_stage(net, 3)
    # a corrupt checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "emo.safetensors").write_bytes(b"nonsense")
    with pytest.raises(InitError, match="not a readable"):
        initialise(net, {"checkpoint": str(bad)}, 2)

    # an output folder with checkpoints: resume=never refuses and deletes nothing; a changed
    # config cannot resume it
    before = sorted(p.name for p in (tmp_path / "s1").iterdir())
    with pytest.raises(TrainConfigError, match="already holds checkpoints"):
        train(_cfg(1, shards, tmp_path / "s1", 4), resume="never", log=lambda s: None)
    changed = _cfg(1, shards, tmp_path / "s1", 4)
    changed["optim"]["lr"] = 0.5
    with pytest.raises(TrainConfigError, match="different config"):
        train(changed, log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / "s1").iterdir()) == before


def test_stage3_on_hallo_golden_weights_adds_speed(hallo_golden):
    """Hallo's real key layout (tiny golden net.safetensors): loads strictly with fresh speed
    layers, and a stage-3 step (region audio attention, speed tokens) trains only temporal+speed."""
    from dataclasses import replace

    from emo_core.config import EmoConfig, SpeedConfig
    from emo_core.models.emo import EmoNet
    from emo_core.sampling.ddim import Schedule

    cfg = EmoConfig.from_hallo_folder(hallo_golden, clip_frames=2, motion_frames=1)
    cfg = replace(cfg, speed=SpeedConfig(hidden_dim=16, token_dim=cfg.unet.cross_attention_dim))
    net = EmoNet(cfg)
    report = initialise(net, {"hallo": str(hallo_golden / "net.safetensors")}, 3)
    assert "speed-layer tensors left fresh" in report[0]
    names = set(apply_stage(net, 3))
    from emo_core.train.loop import region_masks_for

    s = cfg.size_multiple
    h = s // 8
    mask = torch.zeros(1, s, s)
    mask[:, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
    region = region_masks_for(mask, len(cfg.unet.block_out_channels))
    step = TrainStep(net, Schedule.hallo(), 3)
    none = torch.zeros(1, dtype=torch.bool)
    a = cfg.audio
    loss = step(torch.randn(1, 4, 2, h, h), torch.randn(1, 4, h, h), torch.randn(1, 1, 4, h, h), mask,
                torch.randn(1, 2, 2 * a.context + 1, a.feature_blocks, a.feature_dim), torch.full((1, 3), 2.0),
                torch.randn(1, 4, 2, h, h), torch.tensor([500]),
                {"reference": none, "audio": none, "face": none, "identity": none}, region)
    loss.backward()
    assert {n for n, p in net.named_parameters() if p.grad is not None} == names


def test_speed_layers_get_their_own_learning_rate_and_resume(shards, tmp_path):
    from safetensors import safe_open

    cfg = _cfg(3, shards, tmp_path / "s", 2)
    cfg["optim"]["speed_lr_scale"] = 10.0
    net, _, _ = build_net(cfg)
    names = apply_stage(net, 3)
    r = train(cfg, log=lambda s: None)
    with safe_open(str(r.final / "optimizer.safetensors"), framework="pt") as fh:
        meta = json.loads(fh.metadata()["state"])
    groups = meta["param_groups"]
    assert [g["lr"] for g in groups] == [pytest.approx(0.001), pytest.approx(0.01)]
    speed = meta["names"][len(groups[0]["params"]):]
    assert speed and all(n.startswith("speed_encoder.") or ".speed_" in n for n in speed)
    assert sorted(meta["names"]) == sorted(names)  # the same trained set, only grouped
    cfg["train"]["max_steps"] = 3
    r = train(cfg, log=lambda s: None)  # resumes with the grouped optimizer state
    assert r.steps == 3


def test_weight_average_warms_up_and_lerps_towards_the_weights():
    from emo_core.train.ema import WeightAverage

    lin = torch.nn.Linear(3, 2)
    avg = WeightAverage(dict(lin.named_parameters()), 0.99)
    start = lin.weight.detach().clone()
    assert avg.decay_at(0) == pytest.approx(0.1) and avg.decay_at(10_000) == 0.99  # (1+s)/(10+s), capped
    with torch.no_grad():
        lin.weight.add_(1.0)
    avg.update(0)
    assert torch.allclose(avg.average["weight"], 0.1 * start + 0.9 * lin.weight)
    with pytest.raises(ValueError, match="train.ema_decay"):
        WeightAverage(dict(lin.named_parameters()), 1.0)


def test_weight_average_is_the_checkpoint_and_resumes_exactly(shards, tmp_path):
    from safetensors.torch import load_file

    from emo_core.train.ema import RAW_FILE

    def run(out, steps):
        cfg = _cfg(3, shards, out, steps)
        cfg["train"]["ema_decay"] = 0.9
        cfg["output"]["checkpoint_every"] = 2
        return train(cfg, log=lambda s: None)

    full = run(tmp_path / "full", 4)
    avg, raw = load_file(str(full.final / "emo.safetensors")), load_file(str(full.final / RAW_FILE))
    trained = sorted(raw)
    assert trained == sorted(apply_stage(build_net(_cfg(3, shards, tmp_path / "x", 1))[0], 3))  # stage 3's weights
    assert any(not torch.equal(avg[n], raw[n]) for n in trained)  # the model holds the average, not the last step
    assert all(torch.equal(avg[n], v) for n, v in load_file(str(full.final.parent / "checkpoint-000002" / "emo.safetensors")).items()
               if n not in raw)  # frozen weights untouched

    run(tmp_path / "part", 2)
    part = run(tmp_path / "part", 4)  # resumed from step 2: raw weights back in, average continued
    for name in ("emo.safetensors", RAW_FILE):
        a, b = load_file(str(full.final / name)), load_file(str(part.final / name))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_reference_shift_moves_the_reference_face_inside_the_frame(shards):
    import random

    ds = D.ClipDataset(D.list_shards([str(shards)]), frames=2, motion=1, reference_shift=1.0,
                       motion_reference_prob=1.0, with_audio=False)
    for key in range(6):
        it = ds[key]
        assert torch.equal(it["pixels"][0], it["reference"])  # motion copies are the shifted reference
    img = torch.full((3, 64, 64), -1.0)
    img[:, 10:20, 30:40] = 1.0
    out = D.shift_face(img, (30, 10, 40, 20), random.Random(0))
    ys, xs = torch.nonzero(out[0] > 0, as_tuple=True)
    assert len(ys) == 100 and xs.max() - xs.min() == 9 and ys.max() - ys.min() == 9
    assert float(out.min()) == -1.0


def test_adjacent_reference_copies_the_frame_just_before_the_clip(shards):
    common = dict(frames=3, motion=2, with_audio=False)
    infos = D.list_shards([str(shards)])
    true = D.ClipDataset(infos, **common)
    adjacent = D.ClipDataset(infos, motion_reference_prob=1.0, motion_reference_adjacent=True, **common)
    anywhere = D.ClipDataset(infos, motion_reference_prob=1.0, **common)
    differs = 0
    for key in range(8):
        t, a, r = true[key], adjacent[key], anywhere[key]
        before = t["pixels"][1]  # the last true motion frame, right before the clip
        assert torch.equal(a["reference"], before)
        assert all(torch.equal(a["pixels"][i], before) for i in range(2))
        assert torch.equal(a["pixels"][2:], t["pixels"][2:]) and torch.equal(a["mask"], t["mask"])
        assert bool(a["motion_is_reference"]) and torch.equal(r["pixels"][2:], t["pixels"][2:])
        differs += not torch.equal(r["reference"], before)
    assert differs >= 4  # without the option the reference is any frame of the video


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_snr_gamma_weights_the_x0_error_by_truncated_one_plus_snr(prediction):
    from emo_core.sampling.ddim import Schedule
    from emo_core.train.loop import loss_weights

    s = Schedule.for_prediction(prediction)
    assert loss_weights(s, None) is None
    w = loss_weights(s, 5.0).double()
    snr = s.snr().double()
    native = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction]
    x0_weight = w * native  # what one unit of squared x0 error costs at each timestep
    ok = snr > 1e-6  # epsilon is undefined at a zero-SNR terminal step
    torch.testing.assert_close(x0_weight[ok], (snr[ok] + 1).clamp(max=5.0), rtol=1e-5, atol=1e-6)
    assert float(x0_weight.max()) <= 5.0 + 1e-4
    with pytest.raises(TrainConfigError, match="snr_gamma"):
        loss_weights(s, 0.5)


def test_x0_prediction_trains_and_weighted_loss_matches_by_hand(shards, tmp_path):
    cfg = _cfg(1, shards, tmp_path / "s", 4)
    cfg["model"]["overrides"]["prediction_type"] = "sample"
    cfg["optim"]["snr_gamma"] = 3.0
    net, _, _ = build_net(cfg)
    sched = schedule_for(cfg, net.cfg)
    assert sched.prediction_type == "sample"  # the hallo preset follows the model's prediction type
    b = _fixed_batch(cfg, net)
    none = torch.zeros(b["clip"].shape[0], dtype=torch.bool)
    drop = {"reference": none, "audio": none, "face": none, "identity": none}
    step = TrainStep(net, sched, 1, 3.0)
    with torch.no_grad():
        loss = step(b["clip"], b["ref"], b["motion"], b["mask"], b["audio"], b["speed"], b["noise"], b["t"], drop)
        a = sched.alphas_cumprod()[b["t"]].view(-1, 1, 1, 1, 1)
        cond, null = conditioning(net, b["ref"], b["motion"], b["mask"], None, None)
        pred = net(a.sqrt() * b["clip"] + (1 - a).sqrt() * b["noise"], b["t"], cond)
        per = (pred - b["clip"]).pow(2).flatten(1).mean(1)
        snr = sched.snr()[b["t"]]
    torch.testing.assert_close(loss, (per * (snr + 1).clamp(max=3.0)).mean(), rtol=1e-5, atol=1e-6)
    r = train(cfg, log=lambda s: None)
    assert r.steps == 4 and all(torch.isfinite(torch.tensor(r.losses)))


def test_synthetic_head_speed_changes_within_a_video_and_reads_back():
    import numpy as np

    rng = np.random.default_rng(4)
    speeds = synthetic.speed_schedule(rng, 200, (1.0, 4.0, 8.0))
    changes = np.flatnonzero(np.diff(speeds))
    assert len(changes) >= 10 and set(np.unique(speeds)) <= {1.0, 4.0, 8.0}
    assert np.diff(np.concatenate([[-1], changes, [199]])).min() >= 6  # segments of 6-16 frames
    ident = synthetic.Identity.random(rng)
    v = synthetic.make_video(rng, ident, 40, 64, speeds[:40])
    yaw = v["yaw"]
    assert np.abs(yaw).max() <= synthetic.YAW_MAX + 1e-9
    step = np.abs(np.diff(yaw))
    away = np.abs(yaw[1:]) < synthetic.YAW_MAX - 8.5  # frames that did not turn back at a limit
    np.testing.assert_allclose(step[away], speeds[1:40][away], atol=1e-9)
    np.testing.assert_allclose(v["speed"][1:], step, atol=1e-5)  # the shard's speed is the rendered one
    read = np.array([synthetic.measure_frame(f, ident)["yaw"] for f in v["frames"]])
    assert np.corrcoef(read, yaw)[0, 1] > 0.9
    # a constant speed is still the triangle wave the held-out cases use
    const = synthetic.yaw_track(np.random.default_rng(0), 30, 3.0)
    tri = synthetic.yaw_track(np.random.default_rng(0), 30, np.full(30, 3.0))
    np.testing.assert_allclose(const, tri)


def test_measured_yaw_follows_the_rendered_yaw_over_the_whole_range():
    """The benchmark's yaw reading (and so a driving video's speed) is neither compressed at the
    limits nor thrown off by blur or noise: a read-back line of slope ~1 through every yaw."""
    np = pytest.importorskip("numpy")
    from scipy import ndimage

    rng = np.random.default_rng(7)
    truth, read = [], []
    for _ in range(4):
        ident = synthetic.Identity.random(rng)
        rx = ident.radius * 64
        ry = rx * ident.aspect
        cx, cy = rng.uniform(rx + 1, 63 - rx), rng.uniform(ry + 1, 63 - ry)
        for yaw in (-synthetic.YAW_MAX, -25.0, -8.0, 3.0, 17.0, 31.0, synthetic.YAW_MAX):
            img = synthetic.render(ident, cx, cy, yaw, rng.uniform(0, 1), 64).astype(np.float64)
            blurred = ndimage.gaussian_filter(img, (0.8, 0.8, 0))
            noisy = img + rng.normal(0, 10, img.shape)
            for frame in (img, blurred, noisy):
                truth.append(yaw)
                read.append(synthetic.measure_frame(frame.clip(0, 255).astype(np.uint8), ident)["yaw"])
    truth, read = np.array(truth), np.array(read)
    slope = np.polyfit(truth, read, 1)[0]
    assert 0.95 < slope < 1.05, slope
    assert np.abs(read - truth).max() < 4.0, np.abs(read - truth).max()
    at_limits = np.abs(truth) == synthetic.YAW_MAX
    assert np.abs(np.abs(read[at_limits]) - synthetic.YAW_MAX).mean() < 2.0


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharded_optimizer_setups_are_refused_before_training(kind, shards, tmp_path):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    cfg = _cfg(1, shards, tmp_path / "s", 2)
    fake = SimpleNamespace(distributed_type=getattr(DistributedType, kind))
    with pytest.raises(TrainConfigError, match=f"{kind}.*--multi_gpu"):
        train(cfg, accelerator=fake, log=lambda s: None)
    assert not (tmp_path / "s").exists()  # nothing written
