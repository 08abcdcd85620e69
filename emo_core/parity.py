"""Parity with Hallo's own code: ``python -m emo_core.parity GOLDEN_DIR``.

GOLDEN_DIR is laid out like ``shared/golden/hallo``: the configs as JSON files, the weights in
``net.safetensors`` (+ ``vae.safetensors``, ``wav2vec2/``), the cases in ``cases.json`` /
``cases.safetensors`` and their float64 outputs in ``cases_f64.safetensors``, tolerances in
``tolerance.json``. Every case runs through our modules twice, in float32 and in float64; one
line per output tensor gives its max abs error, and the last line says PASS or FAIL.
Optional intermediate tensors (banks, per-step latents) are compared when present.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file

from .config import EmoConfig
from .models.attention import ReferenceFeatures
from .models.backbone import Conditioning
from .models.emo import EmoNet
from .sampling.ddim import Schedule, sample_ddim
from .sampling.guidance import guided_batched

REGIONS = ("full", "face", "lip")


@dataclass
class Golden:
    folder: Path
    meta: dict
    cases: dict[str, torch.Tensor]
    cases64: dict[str, torch.Tensor]
    tolerance: dict

    @classmethod
    def load(cls, folder: str | Path) -> "Golden":
        folder = Path(folder)
        for name in ("cases.json", "cases.safetensors", "tolerance.json", "net.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name} is missing: not a Hallo-layout golden folder")
        f64 = folder / "cases_f64.safetensors"
        return cls(folder, json.loads((folder / "cases.json").read_text()), load_file(str(folder / "cases.safetensors")),
                   load_file(str(f64)) if f64.is_file() else {}, json.loads((folder / "tolerance.json").read_text()))

    def has(self, *prefixes: str) -> bool:
        return all(any(k.startswith(p + ".") for k in self.cases) for p in prefixes)

    def levels(self, prefix: str) -> int:
        return sum(1 for k in self.cases if k.startswith(f"{prefix}.full_mask."))


class HalloRunner:
    """Runs the golden cases through our modules at one dtype."""

    def __init__(self, golden: Golden, dtype: torch.dtype):
        self.g, self.dtype = golden, dtype
        m = golden.meta
        self.frames, self.motion = int(m.get("clip_length", 16)), int(m.get("n_motion_frames", 2))
        cfg = EmoConfig.from_hallo_folder(golden.folder, clip_frames=self.frames, motion_frames=self.motion)
        self.net = EmoNet(cfg)
        self.net.load_state_dict(load_file(str(golden.folder / "net.safetensors")), strict=True)
        self.net.to(dtype).eval().requires_grad_(False)
        self.outputs: dict[str, torch.Tensor] = {}

    def x(self, name: str) -> torch.Tensor:
        t = self.g.cases[name]
        return t.to(self.dtype) if t.is_floating_point() else t

    # ---- single modules --------------------------------------------------------------------
    def case_a(self):
        return {"a.output": self.net.audioproj(self.x("a.input"))}

    def case_b(self):
        inp = self.x("b.input")  # [1, 3, F, H, W]
        out = self.net.face_locator(rearrange(inp, "b c f h w -> (b f) c h w"))
        return {"b.output": rearrange(out, "(b f) c h w -> b c f h w", b=inp.shape[0])}

    def case_c(self):
        emb = self.x("c.input")
        return {"c.output": self.net.imageproj(emb), "c.output_uncond": self.net.imageproj(torch.zeros_like(emb))}

    def case_f(self):
        from .preprocess.audio_features import hallo_audio_embedding, load_wav2vec, wav2vec_hidden_states, window_features
        w2v = load_wav2vec(self.g.folder / "wav2vec2", dtype=self.dtype)
        values = self.x("f.input_values")
        seq_len = self.g.cases["f.hidden_states"].shape[1]
        emb, _ = hallo_audio_embedding(w2v, self.g.cases["f.raw_audio"].numpy(), fps=int(self.g.meta.get("fps", 25)),
                                       clip_length=self.frames)
        return {"f.hidden_states": wav2vec_hidden_states(w2v, values[None], seq_len),
                "f.audio_emb": emb, "f.windowed": window_features(emb, self.net.cfg.audio.context)}

    # ---- one guided denoising step ----------------------------------------------------------
    def hallo_reference(self, ref_latents_in: torch.Tensor, tokens: torch.Tensor):
        """Hallo's writer pass: latents [(1+M) * 2] with tokens [uncond, cond] paired row by
        row (rows alternate uncond/cond), then split per CFG half into reference / motion.

        Hallo's reader tiles the two halves' reference rows over the frames
        (``[:, 0].repeat(1, f, 1, 1)``), so frame j of either half attends to the reference
        row of half j % 2. Per-frame reference tokens reproduce that exactly."""
        reps = ref_latents_in.shape[0] // tokens.shape[0]
        feats, out = self.net.reference_unet(ref_latents_in, torch.zeros(ref_latents_in.shape[0], dtype=torch.long),
                                             tokens.repeat(reps, 1, 1))
        # Hallo hands the features over in float16 (``ReferenceAttentionControl.update``).
        split = {k: rearrange(v.half().to(v.dtype), "(b s) l c -> b s l c", b=2) for k, v in feats.items()}
        spatial = {k: v[:, 0].repeat(self.frames, 1, 1) for k, v in split.items()}
        ref = ReferenceFeatures(spatial, {k: v[:, 1:] for k, v in split.items()}, torch.tensor([False, True]))
        return ref, feats, out

    def masks(self, prefix: str, cfg_double: bool) -> dict[str, list[torch.Tensor]]:
        out = {}
        for r in REGIONS:
            levels = [self.x(f"{prefix}.{r}_mask.{lv}") for lv in range(self.g.levels(prefix))]
            out[r] = [torch.cat([m, m]) for m in levels] if cfg_double else levels
        return out

    def case_d(self):
        # The step's conditioning is derived from cases a, b and c through our modules (as
        # Hallo derived it), so the float64 run does not inherit float32 rounding.
        # (Folders without those cases fall back to the step's stored inputs.)
        g = self.g
        if g.has("c"):
            emb = self.x("c.input")
            tokens = torch.cat([self.net.imageproj(torch.zeros_like(emb)), self.net.imageproj(emb)])
        else:
            tokens = self.x("d.encoder_hidden_states")
        if g.has("a"):
            audio = self.net.audioproj(self.x("a.input"))
            audio = torch.cat([torch.zeros_like(audio), audio])
        else:
            audio = self.x("d.audio_embedding")
        if g.has("b"):
            face = self.case_b()["b.output"]
            face = torch.cat([torch.zeros_like(face), face])
        else:
            face = self.x("d.mask_cond_fea")
        weights = self.x("d.motion_scale") if "d.motion_scale" in g.cases else g.meta.get("motion_scale")
        ref, feats, ref_out = self.hallo_reference(self.x("d.ref_latents_in"), tokens)
        cond = Conditioning(reference=ref, identity=tokens, audio=audio, face=face,
                            region_masks=self.masks("d", cfg_double=False), region_weights=weights)
        pred = self.net(self.x("d.latent_model_input"), self.g.cases["d.timestep"], cond)
        u, c = pred.chunk(2)
        out = {"d.ref_unet_out": ref_out, "d.noise_pred": pred,
               "d.noise_pred_cfg": u + float(self.g.meta["guidance_scale"]) * (c - u)}
        for pair in self.g.meta.get("reader_writer_pairs", []):
            if pair["bank"] in self.g.cases:
                out[pair["bank"]] = feats[pair["writer"].split(".", 1)[1]]
        return out

    # ---- the first clip of the full pipeline ------------------------------------------------
    def case_e(self):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_config(json.loads((self.g.folder / "vae_config.json").read_text()))
        vae.load_state_dict(load_file(str(self.g.folder / "vae.safetensors")), strict=True)
        vae.to(self.dtype).eval().requires_grad_(False)
        scale = vae.config.scaling_factor
        src = self.x("e.source_image")
        pixels = torch.cat([src[None]] * (1 + self.motion))  # reference + copies as the first motion frames
        ref_latents = vae.encode(pixels).latent_dist.mean * scale
        face_emb = self.x("e.face_emb")
        tokens = torch.cat([self.net.imageproj(torch.zeros_like(face_emb)), self.net.imageproj(face_emb)])
        ref, _, _ = self.hallo_reference(ref_latents.repeat(2, 1, 1, 1), tokens)
        # Hallo fed this clip the first frames of case f's windowed wav2vec features; use ours
        # (computed at this dtype) when that case is present.
        windowed = self.outputs.get("f.windowed")
        windowed = self.x("e.audio_windowed") if windowed is None else windowed[None, :self.frames]
        audio = self.net.audioproj(windowed)
        face = self.net.face_locator(self.x("e.face_region"))
        both = Conditioning(reference=ref, identity=tokens, audio=torch.cat([torch.zeros_like(audio), audio]),
                            face=torch.cat([torch.zeros_like(face), face]),
                            region_masks=self.masks("e", cfg_double=True), region_weights=self.g.meta.get("motion_scale"))
        schedule = Schedule.from_file(self.g.folder / "scheduler.json")
        steps = int(self.g.meta["num_inference_steps"])
        out = {"e.ref_image_latents": ref_latents, "e.audio_tensor": audio}
        record, calls = {}, []

        def recording_net(x, t, cond):
            i = len(calls)
            calls.append(t)
            record[f"e.step{i}.unet_input"] = x
            record[f"e.step{i}.noise_pred_raw"] = pred = self.net(x, t, cond)
            return pred

        def cb(state):
            record[f"e.step{state['i']}.latents_after"] = state["x"]

        model_fn = guided_batched(recording_net, both, float(self.g.meta["guidance_scale"]))
        latents = sample_ddim(model_fn, self.x("e.init_latents"), schedule, steps, callback=cb)
        out.update(record)
        out["e.final_latents"] = latents
        frames = rearrange(latents / scale, "b c f h w -> (b f) c h w")
        video = torch.cat([vae.decode(frames[i:i + 1]).sample for i in range(frames.shape[0])])
        out["e.video"] = rearrange((video / 2 + 0.5).clamp(0, 1), "(b f) c h w -> b c f h w", b=latents.shape[0])
        out["e.timesteps"] = torch.tensor(schedule.timesteps(steps))
        return out

    def run(self) -> dict[str, torch.Tensor]:
        self.outputs = {}
        for case in "abcfde":
            if self.g.has(case):
                with torch.no_grad():
                    self.outputs.update(getattr(self, f"case_{case}")())
        return self.outputs


def tolerance(golden: Golden, name: str, float64: bool) -> tuple[float, float]:
    tol = golden.tolerance
    if float64 and "float64" in tol:
        tol64 = tol["float64"]
        if name in tol64.get("exceptions", {}):
            e = tol64["exceptions"][name]
            return e["atol"], e["rtol"]
        t = tol64["per_case_prefix"][name.split(".")[0]]
    else:
        t = tol["per_case_prefix"][name.split(".")[0]]
    return t["atol"], t["rtol"]


def compare(golden: Golden, ours: dict[str, torch.Tensor], float64: bool, out=sys.stdout) -> bool:
    expected = golden.cases64 if float64 else golden.cases
    ok = True
    label = "float64" if float64 else "float32"
    for name, value in ours.items():
        if name not in expected:
            continue
        ref = expected[name]
        if not ref.is_floating_point():
            good = torch.equal(value.to(ref.dtype).cpu(), ref)
            print(f"{label} {name:32s} {'equal' if good else 'DIFFERENT'}", file=out)
            ok &= good
            continue
        if tuple(value.shape) != tuple(ref.shape):
            print(f"{label} {name:32s} shape {tuple(value.shape)} != {tuple(ref.shape)}", file=out)
            ok = False
            continue
        atol, rtol = tolerance(golden, name, float64)
        v, r = value.double().cpu(), ref.double()
        err = (v - r).abs()
        good = bool((err <= atol + rtol * r.abs()).all())
        print(f"{label} {name:32s} max abs err {err.max().item():.3e}  (atol {atol:g}, rtol {rtol:g}) "
              f"{'ok' if good else 'FAIL'}", file=out)
        ok &= good
    return ok


def detect_family(folder: Path) -> str:
    if (folder / "net.safetensors").is_file():
        return "hallo"
    if (folder / "denoising_unet.safetensors").is_file():
        return "echomimic"
    raise FileNotFoundError(f"{folder}: no net.safetensors (Hallo) or denoising_unet.safetensors (EchoMimic)")


def run_parity(folder: str | Path, out=sys.stdout) -> bool:
    folder = Path(folder)
    family = detect_family(folder)
    if family == "echomimic":
        from .parity_echomimic import run_echomimic_parity

        return run_echomimic_parity(folder, out)
    golden = Golden.load(folder)
    ok32 = compare(golden, HalloRunner(golden, torch.float32).run(), float64=False, out=out)
    ok64 = True
    if golden.cases64:
        ok64 = compare(golden, HalloRunner(golden, torch.float64).run(), float64=True, out=out)
    else:
        print("float64: no cases_f64.safetensors, skipped", file=out)
    return ok32 and ok64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("golden_dir", help="folder laid out like shared/golden/hallo")


def main(args) -> int:
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    ok = run_parity(args.golden_dir)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m emo_core.parity", description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(main(p.parse_args()))
