"""Hallo's side of ``bench/hallo_side_by_side.py``. Runs in Hallo's environment (EMO_HALLO_PYTHON)
and imports Hallo's classes from the checkout EMO_HALLO_DIR; no Hallo code is copied here.

    python bench/hallo_driver.py make WORK          # random weights, Hallo layout, into WORK/hallo/
    python bench/hallo_driver.py run WORK float64   # 3 chained clips -> WORK/hallo_float64.safetensors

WORK/hallo/ holds the config JSON files (written by the benchmark) and receives ``net.safetensors``,
``vae.safetensors`` + ``vae_config.json`` (laid out like shared/golden/hallo); WORK/chain/ holds
``chain.json`` (clip length, motion frames, steps, guidance, seed, clips, motion scale) and the
inputs in ``chain.safetensors`` (laid out like shared/golden/hallo_chain).

The modules are built as scripts/inference.py section 4 builds them (and as the golden READMEs
describe): ``UNet2DConditionModel.from_pretrained`` / ``UNet3DConditionModel.from_pretrained_2d``
of a 2D base folder, the three small modules from their JSON kwargs, ``requires_grad_(False)``,
gradient checkpointing on both UNets, ``Net(...)``, ``load_state_dict(strict=True)``, never
``.eval()``. The clip loop is inference.py's: clip 0's motion frames are copies of the source
image, later ones the last decoded frames of the previous clip; one seeded generator for all
clips. In float64 the noise is drawn in float32 from that generator and cast, as our pipeline
and the golden float64 chain do.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def import_hallo():
    """Hallo's modules from EMO_HALLO_DIR, with an empty ``xformers`` package first on sys.path
    (motion_module.py imports it; it is never used) and inference.py's face/audio preprocessing
    modules stubbed (they need mediapipe, insightface, librosa; not used here)."""
    hallo_dir = Path(os.environ["EMO_HALLO_DIR"]).resolve()
    stub = Path(tempfile.mkdtemp(prefix="xformers_stub_"))
    (stub / "xformers").mkdir()
    (stub / "xformers" / "__init__.py").write_text("")
    (stub / "xformers" / "ops.py").write_text("")
    sys.path[:0] = [str(stub), str(hallo_dir)]
    for name, attr in (("hallo.datasets.audio_processor", "AudioProcessor"),
                       ("hallo.datasets.image_processor", "ImageProcessor"), ("hallo.utils.util", "tensor_to_video")):
        sys.modules[name] = types.ModuleType(name)
        setattr(sys.modules[name], attr, None)
    spec = importlib.util.spec_from_file_location("hallo_inference", hallo_dir / "scripts" / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(inference)
    return inference


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def build_net(inference, work: Path):
    from hallo.models.audio_proj import AudioProjModel
    from hallo.models.face_locator import FaceLocator
    from hallo.models.image_proj import ImageProjModel
    from hallo.models.unet_2d_condition import UNet2DConditionModel
    from hallo.models.unet_3d import UNet3DConditionModel

    cfg = work / "hallo"
    reference_unet = UNet2DConditionModel.from_pretrained(work / "base", subfolder="unet")
    denoising_unet = UNet3DConditionModel.from_pretrained_2d(
        work / "base", work / "no_motion_module.ckpt", subfolder="unet",
        unet_additional_kwargs=read(cfg, "unet_additional_kwargs.json"), use_landmark=False)
    modules = [reference_unet, denoising_unet, FaceLocator(**read(cfg, "face_locator.json")),
               ImageProjModel(**read(cfg, "imageproj.json")), AudioProjModel(**read(cfg, "audioproj.json"))]
    for m in modules:
        m.requires_grad_(False)
    reference_unet.enable_gradient_checkpointing()
    denoising_unet.enable_gradient_checkpointing()
    return inference.Net(*modules)


@torch.no_grad()
def perturb(module: torch.nn.Module):
    """As the golden set: zero matrices/kernels -> PyTorch's default uniform init, other zero
    parameters -> N(0, 0.02), all-one parameters -> 1 + N(0, 0.02); so no path is vacuous."""
    for p in module.parameters():
        if not p.any():
            if p.ndim >= 2:
                bound = p[0].numel() ** -0.5
                p.uniform_(-bound, bound)
            else:
                p.normal_(0, 0.02)
        elif bool((p == 1).all()):
            p.add_(torch.randn_like(p) * 0.02)


@torch.no_grad()
def make(work: Path):
    from diffusers import AutoencoderKL

    inference = import_hallo()
    from hallo.models.unet_2d_condition import UNet2DConditionModel

    torch.manual_seed(1234)
    base = UNet2DConditionModel.from_config(read(work / "hallo", "unet_config.json"))
    base.save_pretrained(work / "base" / "unet")
    del base
    net = build_net(inference, work)
    perturb(net)
    ref = dict(net.reference_unet.named_parameters())
    for name, p in net.denoising_unet.named_parameters():  # from_pretrained_2d copied them: decorrelate
        if name in ref and ref[name].shape == p.shape and torch.equal(ref[name], p):
            p.add_(torch.randn_like(p) * 0.02)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(work / "hallo" / "net.safetensors"))
    vae = AutoencoderKL.from_config(read(work / "hallo", "vae_config.json"))
    perturb(vae)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(work / "hallo" / "vae.safetensors"))


@torch.no_grad()
def run(work: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL, DDIMScheduler

    inference = import_hallo()
    from hallo.animate.face_animate import FaceAnimatePipeline

    torch.set_num_threads(int(os.environ.get("EMO_BENCH_THREADS", "1")))
    folder = work / "hallo"
    net = build_net(inference, work)
    missing, unexpected = net.load_state_dict(load_file(str(folder / "net.safetensors")), strict=True)
    assert not missing and not unexpected
    vae = AutoencoderKL.from_config(read(folder, "vae_config.json"))
    vae.load_state_dict(load_file(str(folder / "vae.safetensors")), strict=True)
    vae.eval().requires_grad_(False)
    scheduler = DDIMScheduler(**read(folder, "scheduler.json"))
    pipeline = FaceAnimatePipeline(vae=vae, reference_unet=net.reference_unet, denoising_unet=net.denoising_unet,
                                   face_locator=net.face_locator, scheduler=scheduler, image_proj=net.imageproj)
    pipeline.to(device="cpu", dtype=dtype)
    net.audioproj.to(dtype=dtype)

    out: dict[str, torch.Tensor] = {}
    prepare = pipeline.prepare_latents

    def prepare_latents(*args, **kwargs):  # draws in float32 (same numbers in both dtypes), records them
        args = list(args)
        args[5] = torch.float32
        latents = prepare(*args, **kwargs).to(dtype)
        out[f"clip{len(videos)}.init_noise"] = latents
        return latents

    pipeline.prepare_latents = prepare_latents

    c = read(work / "chain", "chain.json")["config"]
    x = {k: v.to(dtype) for k, v in load_file(str(work / "chain" / "chain.safetensors")).items()}
    f, n = c["clip_length"], c["n_motion_frames"]
    masks = {r: [x[f"{r}_mask.{lv}"] for lv in range(4)] for r in ("full", "face", "lip")}
    audio = inference.process_audio_emb(x["audio_emb"])
    source = x["source_image"][None]
    size = source.shape[-1]
    generator = torch.Generator().manual_seed(c["generator_seed"])
    videos: list[torch.Tensor] = []
    for k in range(c["clips"]):
        if not videos:
            motion = source.repeat(n, 1, 1, 1)
        else:
            motion = (videos[-1][0].permute(1, 0, 2, 3)[-n:] * 2.0 - 1.0).to(source.dtype)
        tokens = net.audioproj(audio[k * f:(k + 1) * f][None].to(dtype))

        def record(step, t, latents, k=k):
            out[f"clip{k}.final_latents"] = latents

        video = pipeline(ref_image=torch.cat([source, motion])[None], audio_tensor=tokens, face_emb=x["face_emb"],
                         face_mask=x["face_region"], pixel_values_full_mask=masks["full"],
                         pixel_values_face_mask=masks["face"], pixel_values_lip_mask=masks["lip"],
                         width=size, height=size, video_length=f, num_inference_steps=c["num_inference_steps"],
                         guidance_scale=c["guidance_scale"], generator=generator, motion_scale=c["motion_scale"],
                         callback=record).videos
        out[f"clip{k}.video"] = video
        videos.append(video)
    name = {torch.float32: "float32", torch.float64: "float64"}[dtype]
    save_file({k: v.contiguous() for k, v in out.items()}, str(work / f"hallo_{name}.safetensors"))


if __name__ == "__main__":
    command, work = sys.argv[1], Path(sys.argv[2])
    if command == "make":
        make(work)
    else:
        run(work, getattr(torch, sys.argv[3]))
