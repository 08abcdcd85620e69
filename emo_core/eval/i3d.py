"""I3D features for FVD.

The network is the Kinetics-400 I3D that the original FVD code loads from TF-Hub, in the
TorchScript port published with StyleGAN-V (``i3d_torchscript.pt``; its authors measured an
L2 difference of 3e-4 to the TF model on random clips). The file is a TorchScript archive, so
it is loaded with ``torch.jit.load`` and called as StyleGAN-V does:
``detector(clips, rescale=False, resize=False, return_features=True)``, with clips
[N, 3, T, 224, 224] already scaled to -1..1, returning the 400-d pre-softmax features.

Protocol used here: clips of 16 consecutive frames (non-overlapping windows, stride 16; a
video shorter than 16 frames gives no clip and is counted as skipped), each frame cropped to a
square around the face (union of the clip's face boxes, side 1.5x the larger box side; a centre
square when no face analyzer is available, which the protocol then says), resized to 224x224
bilinear with antialiasing, at the video's own frame rate (recorded).
"""
from __future__ import annotations

import numpy as np
import torch

CLIP_FRAMES = 16
INPUT_SIZE = 224
FACE_SCALE = 1.5

FVD_PROTOCOL = {
    "network": "i3d kinetics-400 (StyleGAN-V torchscript of the TF-Hub FVD model), 400-d features",
    "input_size": INPUT_SIZE,
    "clip_frames": CLIP_FRAMES,
    "clip_stride": CLIP_FRAMES,
    "value_range": "-1..1",
}


class I3DFeatureExtractor:
    """Wraps a loaded I3D module; call with uint8 clips [N, T, H, W, 3] -> float64 [N, D]."""

    def __init__(self, module, device="cpu", batch_size: int = 4):
        self.module = module
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, clips) -> np.ndarray:
        clips = torch.as_tensor(np.asarray(clips))
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"expected clips [N, T, H, W, 3], got {tuple(clips.shape)}")
        feats = []
        for start in range(0, clips.shape[0], self.batch_size):
            x = clips[start:start + self.batch_size].to(self.device).float()
            x = (x / 127.5 - 1.0).permute(0, 4, 1, 2, 3).contiguous()  # [N, 3, T, H, W]
            out = self.module(x, rescale=False, resize=False, return_features=True)
            feats.append(out.reshape(out.shape[0], -1).double().cpu())
        return torch.cat(feats).numpy() if feats else np.zeros((0, 400))


def load_i3d(path, device="cpu") -> I3DFeatureExtractor:
    """Load the TorchScript I3D file (``i3d_torchscript.pt``)."""
    import warnings

    try:
        with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript as deprecated; still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as err:
        raise ValueError(f"{path} is not a TorchScript archive; FVD expects StyleGAN-V's "
                         f"i3d_torchscript.pt ({err})") from err
    module = module.eval().to(device)
    return I3DFeatureExtractor(module, device=device)


def clip_starts(num_frames: int, clip_frames: int = CLIP_FRAMES, stride: int = CLIP_FRAMES) -> list[int]:
    if num_frames < clip_frames:
        return []
    return list(range(0, num_frames - clip_frames + 1, stride))


def face_clips(frames: np.ndarray, boxes: list, clip_frames: int = CLIP_FRAMES,
               size: int = INPUT_SIZE, scale: float = FACE_SCALE) -> tuple[np.ndarray, str]:
    """Cut a video into clips of face crops [N, clip_frames, size, size, 3].

    ``boxes`` has one xyxy box (or None) per frame; a clip's crop is the square around the
    union of its boxes. Returns the clips and the crop rule used ("face" or "centre").
    """
    from .video_io import center_square_box, crop_box, square_box

    h, w = frames.shape[1:3]
    rule = "face union box, square x%.1f" % scale
    out = []
    for s in clip_starts(frames.shape[0], clip_frames):
        bs = [b for b in boxes[s:s + clip_frames] if b is not None] if boxes is not None else []
        if bs:
            b = np.asarray(bs, dtype=np.float64)
            box = square_box((b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()), scale)
        else:
            box = center_square_box(h, w)
            rule = "centre square (no face box)" if boxes is None else rule + "; centre square where no face"
        out.append(np.stack([crop_box(f, box, size) for f in frames[s:s + clip_frames]]))
    if not out:
        return np.zeros((0, clip_frames, size, size, 3), np.uint8), rule
    return np.stack(out), rule
