"""What the learning benchmark's diagnostics share: loading a trained run, their arguments,
fresh synthetic clips with their conditions, and the model's x0 estimate as frames."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emo_core.preprocess.audio_features import window_features  # noqa: E402
from emo_core.sampling.ddim import predicted_x0_and_eps  # noqa: E402
from emo_core.train import synthetic as S  # noqa: E402
from emo_core.train.data import box_mask  # noqa: E402
from emo_core.train.init import read_checkpoint  # noqa: E402
from emo_core.train.latents import build_codec  # noqa: E402
from emo_core.train.loop import build_net, load_config, schedule_for, to_uint8  # noqa: E402


@torch.no_grad()
def load_trained(run: Path, configs: Path, stage: int, sets=()):
    """The newest checkpoint of ``run``'s stage with its tiny config (plus the ``--set`` overrides
    the run was trained with): (net, EmoConfig, codec, schedule, config)."""
    cfg = load_config(configs / f"tiny_stage{stage}.json", ['data.shards=["x"]', 'output.dir="x"', *sets])
    cfg["init"] = {}
    net, ec, _ = build_net(cfg)
    ck = sorted((run / f"stage{stage}").glob("checkpoint-*"))[-1]
    net.load_state_dict(read_checkpoint(ck)[0])
    return net.eval(), ec, build_codec(cfg["latents"]), schedule_for(cfg, ec), cfg


def load_from_args(args, stage: int | None = None):
    """``load_trained`` for parsed ``diag_parser`` arguments (``stage`` overrides ``--stage``), on
    ``--threads`` threads (1 when the parser has no such option)."""
    torch.set_num_threads(getattr(args, "threads", 1))
    return load_trained(Path(args.run), Path(args.configs), stage or args.stage, args.set)


def diag_parser(n: int, stage: bool = True) -> argparse.ArgumentParser:
    """The arguments every diagnostic takes: the run folder, the configs it was trained with, how many clips."""
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--configs", default=str(ROOT / "emo_core" / "train" / "configs"))
    if stage:
        p.add_argument("--stage", type=int, default=3)
    p.add_argument("--n", type=int, default=n)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="the run's config overrides")
    return p


@dataclass
class Clips:
    """Synthetic clips of n motion frames + f frames, and what conditions them."""

    pixels: torch.Tensor  # [b, n + f, 3, S, S] in [-1, 1], motion frames first
    latents: torch.Tensor  # the f clip frames [b, c, f, h, w]
    motion: torch.Tensor  # the n motion frames' latents [b, n, c, h, w]
    reference: torch.Tensor  # the first frame's latent [b, c, h, w]
    audio: torch.Tensor  # ±m audio windows of the clip frames
    mask: torch.Tensor  # face-locator masks [b, S, S]
    speed: torch.Tensor  # per-frame head speed [b, n + f]
    identities: list
    loudness: np.ndarray  # of the clip frames, all clips after one another


def clips_of(ec, cfg, codec, videos: list[dict], identities: list, references=None) -> Clips:
    """Clips from videos of n + f frames shaped like ``synthetic.make_video``'s (frames, audio,
    audio_features, boxes, speed); the reference portraits are the first frames unless given."""
    f, n = ec.clip_frames, ec.motion_frames
    size = videos[0]["frames"].shape[1]
    pix = torch.from_numpy(np.stack([v["frames"] for v in videos])).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    ref = pix[:, 0] if references is None else (
        torch.from_numpy(np.stack(references)).permute(0, 3, 1, 2).float() / 127.5 - 1)
    lat = codec.encode(pix.flatten(0, 1)).unflatten(0, pix.shape[:2])
    audio = [window_features(torch.from_numpy(v["audio_features"]), ec.audio.context, n, n + f) for v in videos]
    masks = [box_mask(torch.from_numpy(v["boxes"][n:]), size, cfg["data"]["mask_expand"]) for v in videos]
    return Clips(pix, lat[:, n:].permute(0, 2, 1, 3, 4), lat[:, :n], codec.encode(ref), torch.stack(audio),
                 torch.stack(masks), torch.stack([torch.from_numpy(v["speed"]) for v in videos]), identities,
                 np.concatenate([S.loudness(v["audio"], n + f)[n:] for v in videos]))


def synthetic_clips(ec, cfg, codec, speeds, seed: int, size: int = 64) -> Clips:
    """One fresh synthetic clip per entry of ``speeds`` (deg/frame: a number or one per frame)."""
    rng = np.random.default_rng(seed)
    videos, idents = [], []
    for sp in speeds:
        idents.append(S.Identity.random(rng))
        videos.append(S.make_video(rng, idents[-1], ec.clip_frames + ec.motion_frames, size, sp))
    return clips_of(ec, cfg, codec, videos, idents)


def yaws(img: np.ndarray, identities) -> np.ndarray:
    """[b, f] yaw (degrees) read from uint8 frames [b, f, S, S, 3] of the given identities."""
    return np.array([[S.measure_frame(im, identities[i])["yaw"] for im in img[i]] for i in range(len(img))])


def x0_estimate(net, schedule, clean: torch.Tensor, noise: torch.Tensor, t: int, cond) -> torch.Tensor:
    """The model's x0 for ``clean`` noised to timestep ``t`` (one model call)."""
    a = schedule.alphas_cumprod()[t]
    x = a.sqrt() * clean + (1 - a).sqrt() * noise
    out = net(x, torch.full((len(x),), t), cond)
    return predicted_x0_and_eps(out, x, a, schedule.prediction_type)[0]


def frames_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[b, f, 3, S, S] in [-1, 1] -> uint8 [b, f, S, S, 3]."""
    frames = to_uint8(pixels.flatten(0, 1))
    return frames.reshape(*pixels.shape[:2], *frames.shape[1:])


def decode_uint8(codec, latents: torch.Tensor) -> np.ndarray:
    """Latent clips [b, c, f, h, w] -> uint8 frames [b, f, S, S, 3]."""
    b, f = latents.shape[0], latents.shape[2]
    pix = codec.decode(latents.permute(0, 2, 1, 3, 4).flatten(0, 1))
    return frames_uint8(pix.unflatten(0, (b, f)))
