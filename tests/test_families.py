"""Model families and the runtime's Hallo fidelity: the pipeline users call reproduces Hallo's own
loop (golden sets), the parity runners drive that runtime (patching it changes their verdict),
and every front door samples a model with the same schedule."""
from __future__ import annotations

import io
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from face_models import face_mirror, face_model_files  # noqa: F401  (fixtures the ComfyUI stub uses)
from test_nodes_errors import comfy  # noqa: F401  (the ComfyUI stub fixture)

from emo_core import families
from emo_core.checkpoints import save_model
from emo_core.config import EmoConfig
from emo_core.families.hallo import HalloReference
from emo_core.models.emo import EmoNet
from emo_core.parity import Golden, HalloRunner, compare, run_parity
from emo_core.pipeline import EmoPipeline
from emo_core.sampling.ddim import Schedule


@pytest.fixture(scope="module")
def chain_golden(shared_dir) -> Path:
    return shared_dir / "golden" / "hallo_chain"


def float64_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("float64 ")]


def test_hallo_chain_through_the_pipelines_own_chaining(chain_golden):
    out = io.StringIO()
    ok = run_parity(chain_golden, out)
    rows = float64_rows(out.getvalue())
    assert ok, out.getvalue()
    # free-running clips, teacher-forced clips, the hand-over and the audio windows were all compared
    for name in ("clip2.final_latents", "clip2.video", "clip1.motion_pixels", "clip2.audio_windowed",
                 "forced.clip2.final_latents", "forced.clip1.step0.noise_pred_raw", "video"):
        assert any(r.split()[1] == name and r.endswith(" ok") for r in rows), name


def test_clean_rule_is_selectable_and_is_not_hallos(chain_golden):
    """The behaviour that made the pipeline miss Hallo's video (up to 0.86 in latents) stays available
    by name; Hallo's rule is the default for Hallo weights."""
    from safetensors.torch import load_file

    from emo_core.parity.hallo_chain import ChainRunner

    expected = load_file(str(chain_golden / "chain_f64.safetensors"))
    errors = {}
    for rule in ("hallo", "clean"):
        runner = ChainRunner(chain_golden, chain_golden.parent / "hallo", torch.float64)
        assert isinstance(runner.pipe.rule, HalloReference)
        runner.pipe.rule = families.RULES[rule]
        errors[rule] = (runner.free()["clip0.final_latents"] - expected["clip0.final_latents"]).abs().max().item()
    assert errors["hallo"] < 1e-8 < 1e-2 < errors["clean"]


def test_parity_runs_the_runtime(hallo_golden, shared_dir, monkeypatch):
    """Patching the code users run changes the parity verdict: the runners call it, not copies."""
    golden = Golden.load(hallo_golden)
    decode = EmoPipeline.decode
    monkeypatch.setattr(EmoPipeline, "decode", lambda self, latents: decode(self, latents) + 1e-3)
    out = io.StringIO()
    assert not compare(golden, HalloRunner(golden, torch.float64).run(), float64=True, out=out)
    assert "e.video" in "".join(r for r in float64_rows(out.getvalue()) if r.endswith("FAIL"))
    monkeypatch.undo()

    monkeypatch.setattr("emo_core.families.hallo.handover", lambda features: features)  # no float16 hand-over
    out = io.StringIO()
    assert not compare(golden, HalloRunner(golden, torch.float64).run(), float64=True, out=out)
    failed = [r.split()[1] for r in float64_rows(out.getvalue()) if r.endswith("FAIL")]
    assert "d.noise_pred" in failed and "e.final_latents" in failed
    monkeypatch.undo()

    import emo_core.families.echomimic as echomimic

    sample_video = echomimic.sample_video
    monkeypatch.setattr(echomimic, "sample_video", lambda *a, **k: sample_video(*a, **k) + 1e-2)
    out = io.StringIO()
    assert not run_parity(shared_dir / "golden" / "echomimic", out)
    assert any(line.startswith("float32 c.video") and line.endswith("FAIL") for line in out.getvalue().splitlines())


def test_hallo_rule_lays_out_reference_rows_as_hallo():
    torch.manual_seed(0)
    pipe = EmoPipeline.tiny(seed=3, family="hallo")
    net, f, n = pipe.net, pipe.cfg.clip_frames, pipe.cfg.motion_frames
    ref = pipe.encode_reference(torch.rand(64, 64, 3), torch.randn(pipe.cfg.identity_dim))
    motion = torch.randn(n, 4, 8, 8)
    feats = HalloReference().features(net, ref, motion, frames=f, guided=True)
    name = list(feats.spatial)[-1]  # a deep layer: earlier cross-attentions saw the identity tokens
    assert not torch.equal(ref.features.spatial[name], ref.null_features.spatial[name])
    half = lambda feats_: feats_.spatial[name][0].half().float()  # noqa: E731
    # backbone row j reads the portrait row of CFG half j % 2; half 0's went through ReferenceNet unconditioned
    for j in range(2 * f):
        want = half(ref.null_features) if j % 2 == 0 else half(ref.features)
        assert torch.equal(feats.spatial[name][j], want)
    assert feats.active.tolist() == [False, True] and feats.motion[name].shape[:2] == (2, n)
    # motion frame i of half h is row h(1+n)+1+i of Hallo's reference pass: odd rows are conditional
    row = lambda latents, ident: net.motion_features(latents[None, None], ident)[name][0, 0].half().float()  # noqa: E731
    # (one row at a time here, 2n rows in one pass there: equal up to a float16 rounding flip)
    close = lambda a, b: (a - b).abs().max().item() < 1e-2  # noqa: E731
    assert close(feats.motion[name][0, 0], row(motion[0], ref.identity))  # row 1
    assert close(feats.motion[name][1, 0], row(motion[0], ref.null_identity))  # row 1 + n + 1 = 4
    assert not close(feats.motion[name][1, 0], row(motion[0], ref.identity))
    # unguided: every row conditional, only the float16 hand-over
    single = HalloReference().features(net, ref, motion, frames=f, guided=False)
    assert single.active is None and torch.equal(single.spatial[name], half(ref.features)[None])


def test_schedule_rule_reads_the_folder_and_refuses_a_mismatch(tmp_path):
    cfg = EmoConfig.tiny(family="emo")
    assert families.schedule_for(cfg) == Schedule()
    assert families.schedule_for(replace(cfg, prediction_type="sample")) == Schedule.for_prediction("sample")
    (tmp_path / "scheduler.json").write_text('{"prediction_type": "epsilon", "timestep_spacing": "trailing"}')
    assert families.schedule_for(cfg, tmp_path).timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="prediction_type"):
        families.schedule_for(replace(cfg, prediction_type="v_prediction"), tmp_path)


def test_x0_model_is_sampled_alike_by_the_loader_node_and_the_cli(comfy, tmp_path):  # noqa: F811
    from nodes.loader import EmoModelLoader

    from emo_core.vae import tiny_vae

    torch.manual_seed(0)
    net = EmoNet(replace(EmoConfig.tiny(family="emo"), prediction_type="sample"))
    folder = Path(sys.modules["folder_paths"].models_dir) / "emo" / "x0"
    save_model(net, folder)
    tiny_vae(0).vae.save_pretrained(folder / "sd-vae-ft-mse")
    node = EmoModelLoader._load_path(folder, torch.float32, None).pipe
    cli = EmoPipeline.from_folder(folder)
    assert node.schedule == cli.schedule == Schedule.for_prediction("sample")
    image = torch.rand(64, 64, 3)
    windows = torch.randn(node.cfg.clip_frames, 5, node.cfg.audio.feature_blocks, node.cfg.audio.feature_dim)
    clips = [torch.cat(list(p.generate(p.encode_reference(image), windows, steps=2, guidance=2.0, seed=1)))
             for p in (node, cli)]
    assert torch.equal(clips[0], clips[1])


def test_cli_reference_rule_is_selectable(tmp_path, monkeypatch):
    """Hallo-layout weights default to Hallo's rule; --reference-rule clean gives another video
    from the same seed, and an unknown rule is refused before any model work."""
    import soundfile as sf

    from emo_core.__main__ import main
    from emo_core.video_out import Mp4Writer

    repo = Path(__file__).resolve().parents[1]
    audio = tmp_path / "a.wav"
    data, sr = sf.read(str(repo / "samples" / "speech.wav"), dtype="float32")
    sf.write(str(audio), data[: int(0.3 * sr)], sr)  # two clips of the tiny model
    written = []
    write = Mp4Writer.write
    monkeypatch.setattr(Mp4Writer, "write", lambda self, frames: (written.append(frames), write(self, frames))[1])
    videos = {}
    for rule in (None, "hallo", "clean"):
        written.clear()
        extra = [] if rule is None else ["--reference-rule", rule]
        assert main(["generate", "--tiny", "--steps", "2", "--image", str(repo / "samples" / "portrait.png"),
                     "--audio", str(audio), "-o", str(tmp_path / f"{rule}.mp4"), "--no-paste-back", *extra]) == 0
        videos[rule] = torch.cat(written)
    assert torch.equal(videos[None], videos["hallo"])
    assert not torch.equal(videos["clean"], videos["hallo"])
    with pytest.raises(SystemExit):
        main(["generate", "--tiny", "--image", "x.png", "--audio", "x.wav", "-o", str(tmp_path / "x.mp4"),
              "--reference-rule", "other"])


def test_loader_node_offers_the_reference_rule(comfy):  # noqa: F811
    from nodes.loader import TINY_CHOICE, TINY_EMO_CHOICE, EmoModelLoader

    from emo_core.families.hallo import HalloReference

    assert EmoModelLoader.INPUT_TYPES()["optional"]["reference_rule"][0] == ["auto", "hallo", "clean"]
    assert isinstance(EmoModelLoader().load(TINY_CHOICE)[0].pipe.rule, HalloReference)  # Hallo layout: Hallo's
    assert EmoModelLoader().load(TINY_CHOICE, reference_rule="clean")[0].pipe.rule is families.RULES["clean"]
    assert EmoModelLoader().load(TINY_EMO_CHOICE)[0].pipe.rule is families.RULES["clean"]


@pytest.mark.parametrize("seconds,fps", [(0.83, 25), (1.3, 30), (2.0, 25), (3.1, 24)])
def test_runtime_audio_windows_follow_hallo_at_any_length_and_rate(hallo_golden, seconds, fps):
    """The audio path the CLI and nodes run (EmoPipeline.audio_conditioning, then the pipeline's
    clip-by-clip windows) gives, in float64 and for every frame of the video, the windows of Hallo's
    preprocessing (hallo_audio_embedding + windows over its padded sequence, which the golden case
    f pins to Hallo's own output), at lengths that are not whole clips and at other frame rates."""
    import numpy as np
    from safetensors.torch import load_file

    from emo_core.chaining import plan_clips
    from emo_core.parity.hallo import golden_pipeline
    from emo_core.preprocess.audio_features import hallo_audio_embedding, load_wav2vec, window_features

    raw = load_file(str(hallo_golden / "cases.safetensors"))["f.raw_audio"].numpy()
    wave = np.resize(raw, int(seconds * 16000))  # the golden speech-like signal, cut or repeated
    pipe = golden_pipeline(hallo_golden, torch.float64, clip_frames=4, motion_frames=2)
    w2v = load_wav2vec(hallo_golden / "wav2vec2", dtype=torch.float64)
    features, frames = pipe.audio_conditioning(w2v, wave, fps)
    assert frames == int(seconds * fps + 0.5) <= features.shape[0]
    ours = torch.cat([pipe.clip_windows(features, r) for r in plan_clips(frames, pipe.cfg.clip_frames)])[:frames]
    emb, length = hallo_audio_embedding(w2v, wave, fps=fps, clip_length=pipe.cfg.clip_frames)
    assert length >= frames and emb.shape[0] % pipe.cfg.clip_frames == 0
    hallo = window_features(emb, pipe.cfg.audio.context)[:frames]
    assert (ours - hallo).abs().max().item() <= 1e-7
