"""Parity with EchoMimic's own code: the cases of a golden folder laid out like ``shared/golden/echomimic``.

Run through ``python -m emo_core.parity GOLDEN_DIR`` (the family is detected from the folder).
The folder holds EchoMimic's four model files as safetensors, the base UNet / motion-module /
face-locator / scheduler / VAE configs as JSON, the cases in ``cases.json`` +
``cases.safetensors`` and ``tolerance.json``. Cases:

- a: the face locator on a 1-channel mask;
- b: one guided denoising step of one context window (reference pass, reader/writer banks);
- c: the full pipeline: VAE-encoded portrait, whisper windows at 24 fps, context windows
  shifted every step and averaged, CFG, DDIM, per-frame VAE decode;
- d: the per-frame whisper windowing at 24 and 25 fps (exact).

EchoMimic's quirks reproduced here (see the folder's README): the initial noise is clamped
to [-1.5, 1.5]; the reference latents use a hard-coded 0.18215; uncond gets zero audio and
zero face features; banks reach the backbone rounded to float16 (``reference_feature_dtype``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file

from .context_windows import windowed_model
from .echomimic import config_from_folder, load_echomimic
from .models.backbone import Conditioning
from .preprocess.whisper_features import echomimic_frame_count, whisper_windows, window_indices
from .sampling.ddim import Schedule, ddim_step, sample_ddim
from .sampling.guidance import batch_conditions, unconditional

LATENT_SCALE = 0.18215  # EchoMimic's pipeline hard-codes SD's factor


class EchoMimicRunner:
    """Runs the golden cases through our modules (float32, as the golden data)."""

    def __init__(self, folder: str | Path, dtype: torch.dtype = torch.float32):
        self.folder, self.dtype = Path(folder), dtype
        self.meta = json.loads((self.folder / "cases.json").read_text())
        self.cases = load_file(str(self.folder / "cases.safetensors"))
        call = self.meta["pipeline_call"]
        self.call = call
        cfg = config_from_folder(self.folder, clip_frames=int(call["context_frames"]),
                                 context_overlap=int(call["context_overlap"]))
        self.net = load_echomimic(self.folder, config=cfg, dtype=dtype)
        self.schedule = Schedule.from_file(self.folder / "scheduler.json")

    def x(self, name: str) -> torch.Tensor:
        t = self.cases[name]
        return t.to(self.dtype) if t.is_floating_point() else t

    def face(self, mask: torch.Tensor) -> torch.Tensor:
        """mask [1, 1, F, H, W] (EchoMimic's layout) -> features [1, C0, F, h, w]."""
        out = self.net.face_locator(rearrange(mask, "b c f h w -> (b f) c h w"))
        return rearrange(out, "(b f) c h w -> b c f h w", b=mask.shape[0])

    def guided_conditioning(self, ref_latents, audio_tokens, face):
        """[uncond, cond] conditioning: uncond drops the reference, audio (zeros) and face (zeros)."""
        reference = self.net.reference_features(ref_latents, None)
        cond = Conditioning(reference=reference, audio=audio_tokens, face=face[:, :, 0])
        return batch_conditions(unconditional(cond, None), cond)

    # ---- cases ---------------------------------------------------------------------------------
    def case_a(self):
        return {"a.output": self.face(self.x("a.input"))}

    def case_b(self):
        ref_latents = self.x("b.ref_latents")
        feats, ref_out = self.net.reference_unet(ref_latents, torch.zeros(1, dtype=torch.long),
                                                 ref_latents.new_zeros(1, 1, self.net.cfg.unet.cross_attention_dim))
        out = {"b.ref_unet_out": ref_out}
        for pair in self.meta["reader_writer_pairs"]:
            reader, writer = (pair[k].split(".", 1)[1] for k in ("reader", "writer"))
            if reader != writer:
                raise ValueError(f"EchoMimic pairs {pair['reader']} with {pair['writer']}: layers differ in path")
            out[pair["bank"]] = feats[writer]
        face = self.face(self.x("a.input"))
        both = self.guided_conditioning(ref_latents, self.x("b.audio_cond"), face)
        t = int(self.cases["b.timestep"])
        pred = self.net(self.x("b.latent_model_input"), t, both)
        u, c = pred.chunk(2)
        guided = u + float(self.meta["case_b_guidance_scale"]) * (c - u)
        steps = int(self.call["num_inference_steps"])
        ac = self.schedule.alphas_cumprod().to(self.dtype)
        prev = t - self.schedule.num_train_timesteps // steps
        x_prev, _ = ddim_step(guided, self.x("b.latents"), ac[t], ac[prev] if prev >= 0 else torch.tensor(1.0),
                              self.schedule.prediction_type)
        out.update({"b.noise_pred_raw": pred, "b.noise_pred_cfg": guided, "b.prev_sample": x_prev})
        return out

    def case_d(self):
        feats = self.x("d.whisper_feature")
        out = {}
        for fps in (24, 25):
            n = echomimic_frame_count(feats.shape[0], fps)
            windows = whisper_windows(feats, fps, n)  # [n, 10, 5, 384]
            out[f"d.chunks_fps{fps}"] = windows.flatten(1, 2)
            out[f"d.indices_fps{fps}"] = window_indices(n, feats.shape[0], fps)
        return out

    def case_c(self):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_config(json.loads((self.folder / "vae_config.json").read_text()))
        vae.load_state_dict(load_file(str(self.folder / "vae.safetensors")), strict=True)
        vae.to(self.dtype).eval().requires_grad_(False)
        image = self.cases["c.ref_image_uint8"].to(self.dtype) / 255 * 2 - 1
        ref_latents = vae.encode(rearrange(image, "h w c -> 1 c h w")).latent_dist.mean * LATENT_SCALE
        face = self.face(self.x("a.input"))
        fps = float(self.call["fps"])
        feats = self.x("d.whisper_feature")
        frames = min(int(self.call["video_length"]), echomimic_frame_count(feats.shape[0], fps))
        audio = self.net.audio_tokens(whisper_windows(feats, fps, frames)[None])  # [1, F, 50, 384]
        both = self.guided_conditioning(ref_latents, audio, face)
        scale = float(self.call["guidance_scale"])
        steps = int(self.call["num_inference_steps"])
        timesteps = self.schedule.timesteps(steps)
        h, w = ref_latents.shape[-2:]
        torch.manual_seed(int(self.meta.get("seed", 420)))
        init = torch.randn(1, 4, frames, h, w).clamp(-1.5, 1.5).to(self.dtype)
        out = {"c.ref_image_latents": ref_latents, "c.face_locator_out": face, "c.init_latents": init}
        record = {"step": 0, "win": 0}

        def window_fn(x, t, idx):
            (frames_of_window,) = idx
            sub = Conditioning(**{**both.__dict__, "audio": both.audio[:, frames_of_window]})
            pred = self.net(torch.cat([x, x]), t, sub)
            out[f"c.step{record['step']}.win{record['win']}.noise_pred"] = pred
            record["win"] += 1
            u, c = pred.chunk(2)
            return u + scale * (c - u)

        window_model = windowed_model(window_fn, frames, int(self.call["context_frames"]),
                                      int(self.call["context_overlap"]), timesteps)

        def model_fn(x, t):
            out[f"c.step{record['step']}.latents_in"] = x
            pred = window_model(x, t)
            out[f"c.step{record['step']}.noise_pred_cfg"] = pred
            return pred

        def callback(state):
            out[f"c.step{state['i']}.latents_out"] = state["x"]
            record["step"], record["win"] = state["i"] + 1, 0

        latents = sample_ddim(model_fn, init, self.schedule, steps, callback=callback)
        out["c.final_latents"] = latents
        pixels = rearrange(latents / LATENT_SCALE, "b c f h w -> (b f) c h w")
        video = torch.cat([vae.decode(pixels[i:i + 1]).sample for i in range(pixels.shape[0])])
        out["c.video"] = rearrange((video / 2 + 0.5).clamp(0, 1), "(b f) c h w -> b c f h w", b=1)
        return out

    def run(self) -> dict[str, torch.Tensor]:
        outputs = {}
        with torch.no_grad():
            for case in "adbc":
                outputs.update(getattr(self, f"case_{case}")())
        return outputs


def run_echomimic_parity(folder: str | Path, out) -> bool:
    from .parity import Golden, compare

    folder = Path(folder)
    runner = EchoMimicRunner(folder, torch.float32)
    golden = Golden(folder, runner.meta, runner.cases, {}, json.loads((folder / "tolerance.json").read_text()))
    ours = runner.run()
    ok = compare(golden, ours, float64=False, out=out)
    inputs = {"a.input", "b.audio_cond", "b.latents", "b.latent_model_input", "b.ref_latents", "b.timestep",
              "b.face_locator_tensor", "c.ref_image_uint8", "c.step0.latents_in", "d.whisper_feature"}
    unchecked = sorted(set(runner.cases) - set(ours) - inputs)
    if unchecked:
        print(f"golden outputs not reproduced: {unchecked}", file=out)
        ok = False
    print("float64: the EchoMimic golden folder has float32 outputs only, skipped", file=out)
    return ok
