"""Hallo's own pipeline and ours, side by side, on the same random weights and noise.

    EMO_HALLO_DIR=/path/to/hallo EMO_HALLO_PYTHON=/path/to/hallo-venv/bin/python \\
        .venv/bin/python bench/hallo_side_by_side.py --size tiny      # or --size sd15

EMO_HALLO_DIR: a checkout of github.com/fudan-generative-vision/hallo (commit 8fd7c57 or
compatible). EMO_HALLO_PYTHON: a Python with Hallo's requirements (diffusers 0.27.x,
transformers 4.4x, torch; face/audio preprocessing packages are not needed). Without them
the script prints ``skipped: <reason>`` and exits 0.

In a temporary folder: the config JSON files of the chosen size (``tiny``: the golden set's
config; ``sd15``: SD1.5 widths, 2 layers per block, 768-wide cross-attention, 12x768 wav2vec
features projected to 32 tokens, at a small image size), seeded inputs (portrait, face box,
region masks, identity embedding, audio features of 3 clips) laid out like
shared/golden/hallo_chain, and, made by ``bench/hallo_driver.py`` in Hallo's Python with Hallo's
classes, random weights in Hallo's layout (zero-initialised parameters perturbed, as in the
golden set) and a tiny VAE. Then per dtype (float64, float32): Hallo's clip loop of
scripts/inference.py (3 chained clips, CFG 3.5, DDIM, seeded generator) in the driver, and ours
through ``EmoPipeline.generate`` driven exactly as the chain parity runs it
(``emo_core.parity.hallo_chain.ChainRunner.free``), with Hallo's reference rule and with the
"clean" one. Prints max |latent| and |frame| (0..1) differences per clip and the largest
frame difference beside the golden chain's tolerance.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "hallo_driver.py"

UNET = {"_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "act_fn": "silu",
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "mid_block_type": "UNetMidBlock2DCrossAttn",
        "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1,
        "norm_eps": 1e-5, "use_linear_projection": False, "center_input_sample": False}
# configs/inference/default.yaml's unet_additional_kwargs (motion heads and audio width set per size)
ADDITIONAL = {"use_inflated_groupnorm": True, "unet_use_cross_frame_attention": False,
              "unet_use_temporal_attention": False, "use_motion_module": True, "use_audio_module": True,
              "motion_module_resolutions": [1, 2, 4, 8], "motion_module_mid_block": True,
              "motion_module_decoder_only": False, "motion_module_type": "Vanilla",
              "stack_enable_blocks_name": ["up", "down", "mid"], "stack_enable_blocks_depth": [0, 1, 2, 3]}
MOTION = {"num_transformer_block": 1, "attention_block_types": ["Temporal_Self", "Temporal_Self"],
          "temporal_position_encoding": True, "temporal_position_encoding_max_len": 32, "temporal_attention_dim_div": 1}
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear",
             "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 1, "prediction_type": "v_prediction",
             "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}
VAE = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
       "block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "act_fn": "silu",
       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
       "scaling_factor": 0.18215}
SIZES = {
    "tiny": {"unet": {"block_out_channels": [32, 64, 32, 32], "layers_per_block": 1, "norm_num_groups": 16,
                      "attention_head_dim": 4, "cross_attention_dim": 32},
             "motion_heads": 2, "identity": 64, "face_locator": [4, 8, 16, 32], "px": 64, "steps": 3,
             "audio": {"blocks": 3, "channels": 32, "intermediate_dim": 64, "context_tokens": 4, "output_dim": 32}},
    "sd15": {"unet": {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "norm_num_groups": 32,
                      "attention_head_dim": 8, "cross_attention_dim": 768},
             "motion_heads": 8, "identity": 512, "face_locator": [16, 32, 64, 128], "px": 64, "steps": 2,
             "audio": {"blocks": 12, "channels": 768, "intermediate_dim": 512, "context_tokens": 32,
                       "output_dim": 768}},
}
FRAMES, MOTION_FRAMES, CLIPS, SEED, GUIDANCE = 4, 2, 3, 1241, 3.5


def write_configs(folder: Path, s: dict, px: int):
    unet = {**UNET, **s["unet"], "sample_size": px // 8}
    motion = {**MOTION, "num_attention_heads": s["motion_heads"]}
    files = {"unet_config.json": unet, "scheduler.json": SCHEDULER, "vae_config.json": {**VAE, "sample_size": px},
             "unet_additional_kwargs.json": {**ADDITIONAL, "audio_attention_dim": s["audio"]["output_dim"],
                                             "motion_module_kwargs": motion},
             "face_locator.json": {"conditioning_embedding_channels": unet["block_out_channels"][0],
                                   "conditioning_channels": 3, "block_out_channels": s["face_locator"]},
             "imageproj.json": {"cross_attention_dim": unet["cross_attention_dim"],
                                "clip_embeddings_dim": s["identity"], "clip_extra_context_tokens": 4},
             "audioproj.json": {"seq_len": 5, **s["audio"]}}
    folder.mkdir(parents=True)
    for name, value in files.items():
        (folder / name).write_text(json.dumps(value, indent=1))


def write_inputs(folder: Path, s: dict, px: int, steps: int):
    """Seeded inputs as Hallo's inference.py passes them (masks: ``view(1, -1).repeat(F, 1)``)."""
    g = torch.Generator().manual_seed(0)
    image = F.interpolate(torch.rand(1, 3, px // 8, px // 8, generator=g), size=(px, px), mode="bilinear")[0] * 2 - 1
    face, lip = torch.zeros(px, px), torch.zeros(px, px)
    face[px // 4:3 * px // 4, px // 4:3 * px // 4] = 1
    lip[9 * px // 16:11 * px // 16, 3 * px // 8:5 * px // 8] = 1
    t = {"source_image": image, "face_region": face.expand(1, 3, px, px).contiguous(),
         "face_emb": torch.randn(1, s["identity"], generator=g),
         "audio_emb": torch.randn(FRAMES * CLIPS, s["audio"]["blocks"], s["audio"]["channels"], generator=g)}
    for region, mask in {"full": 1 - face, "face": face - lip, "lip": lip}.items():
        for level in range(4):
            small = F.avg_pool2d(mask[None, None], 8 * 2 ** level)  # area average to H/8 .. H/64
            t[f"{region}_mask.{level}"] = small.reshape(1, -1).repeat(FRAMES, 1)
    folder.mkdir(parents=True)
    save_file(t, str(folder / "chain.safetensors"))
    config = {"clip_length": FRAMES, "n_motion_frames": MOTION_FRAMES, "num_inference_steps": steps,
              "guidance_scale": GUIDANCE, "generator_seed": SEED, "clips": CLIPS, "motion_scale": [1.0, 1.0, 1.0]}
    (folder / "chain.json").write_text(json.dumps({"config": config}, indent=1))


def hallo(python: str, *args, threads: int):
    env = {**os.environ, "EMO_BENCH_THREADS": str(threads)}
    r = subprocess.run([python, str(DRIVER), *map(str, args)], env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"Hallo's driver failed ({' '.join(map(str, args))}):\n{r.stderr[-4000:]}")


def ours(work: Path, dtype: torch.dtype, rules: list[str]) -> dict[str, dict]:
    from emo_core.parity.hallo_chain import ChainRunner
    from emo_core.pipeline import EmoPipeline

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    runner, out = ChainRunner(work / "chain", work / "hallo", dtype), {}
    net, vae, schedule = runner.pipe.net, runner.pipe.vae, runner.pipe.schedule
    for rule in rules:
        runner.pipe = EmoPipeline(net, vae, schedule, dtype=dtype, reference_rule=rule)
        out[rule] = runner.free()
    return out


def diff(a: dict, b: dict, name: str) -> torch.Tensor:
    return (a[name].double() - b[name].double()).abs().max()


def memory_needed(work: Path, dtype: torch.dtype) -> tuple[float, float]:
    """(GB a run needs, GB available): the network in ``dtype`` (the float32 one is cast tensor by
    tensor), with a margin."""
    size = (work / "hallo" / "net.safetensors").stat().st_size
    need = size * dtype.itemsize / 4 * 1.15 / 2 ** 30
    avail = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemAvailable")) / 2 ** 20
    return need, avail


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--px", type=int, default=None, help="image side (multiple of 64); default 64")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: tiny 3, sd15 2)")
    p.add_argument("--layers", type=int, default=None,
                   help="layers per UNet block (default: tiny 1, sd15 2; sd15 with 1 needs about 15 GB in float64)")
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--threads", type=int, default=1, help="torch threads on both sides (float32 depends on it)")
    p.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = p.parse_args()
    hallo_dir, python = os.environ.get("EMO_HALLO_DIR"), os.environ.get("EMO_HALLO_PYTHON")
    if not hallo_dir or not python:
        print("skipped: set EMO_HALLO_DIR (a Hallo checkout) and EMO_HALLO_PYTHON (a Python with Hallo's requirements)")
        return 0
    if not (Path(hallo_dir) / "scripts" / "inference.py").is_file():
        print(f"skipped: EMO_HALLO_DIR={hallo_dir} has no scripts/inference.py: not a Hallo checkout")
        return 0
    if not os.access(python, os.X_OK):
        print(f"skipped: EMO_HALLO_PYTHON={python} is not an executable")
        return 0
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(args.threads)
    s = SIZES[args.size]
    if args.layers:
        s = {**s, "unet": {**s["unet"], "layers_per_block": args.layers}}
    work = Path(args.keep or tempfile.mkdtemp(prefix="hallo_side_by_side_"))
    try:
        compare(args, s, work, python)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def compare(args, s: dict, work: Path, python: str):
    from emo_core.parity.hallo_chain import FREE

    px, steps = args.px or s["px"], args.steps or s["steps"]
    write_configs(work / "hallo", s, px)
    write_inputs(work / "chain", s, px, steps)
    hallo(python, "make", work, threads=args.threads)
    print(f"{args.size}: {s['unet']['layers_per_block']} layers per block, {px}x{px}, {FRAMES} frames x {CLIPS} clips, "
          f"{MOTION_FRAMES} motion frames, {steps} DDIM steps, CFG {GUIDANCE}, seed {SEED}; work folder {work}")
    print(f"{'size':5s} {'dtype':8s} {'rule':6s} clip  max|latent diff|  max|frame diff|")
    largest = {}
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        need, avail = memory_needed(work, dtype)
        if need > avail:
            print(f"{args.size:5s} {name:8s} skipped: needs about {need:.0f} GB, {avail:.0f} GB available")
            continue
        hallo(python, "run", work, name, threads=args.threads)
        theirs = load_file(str(work / f"hallo_{name}.safetensors"))
        for rule, out in ours(work, dtype, ["hallo", "clean"]).items():
            for k in range(CLIPS):
                latent, frame = (diff(out, theirs, f"clip{k}.{n}") for n in ("final_latents", "video"))
                largest[name, rule] = max(largest.get((name, rule), 0.0), frame.item())
                print(f"{args.size:5s} {name:8s} {rule:6s} {k:4d}  {latent.item():16.3e}  {frame.item():15.3e}")
        gc.collect()
    for rule, label in (("clean", "with reference_rule='clean': "), ("hallo", "")):
        found = [f"{v:.3e} ({n})" for (n, r), v in largest.items() if r == rule]
        print(f"{label}largest frame difference: {', '.join(found) or 'none'}; golden tolerance "
              f"{FREE['float64'][CLIPS - 1]:g} (float64, free-running chain, clip {CLIPS - 1}), "
              f"{FREE['float32'][0]:g} (float32, clip 0)")


if __name__ == "__main__":
    sys.exit(main())
