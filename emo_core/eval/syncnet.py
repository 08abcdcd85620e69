"""SyncNet lip-sync scores LSE-D and LSE-C (Chung & Zisserman 2016; Wav2Lip's protocol).

Network: the "S" model of joonson/syncnet_python (``SyncNetModel.S``), rewritten here with the
same module names, so the published ``syncnet_v2.model`` state dict loads strictly. That file
is indexed into ``SyncNetInstance.__S__.state_dict()`` by syncnet_python, so its keys have no
prefix; copies saved from a whole ``SyncNetInstance`` carry ``__S__.`` in front. Both load.

Protocol (as in ``SyncNetInstance.evaluate``):
- video at 25 fps (other rates are resampled to 25 fps by nearest earlier frame; recorded),
  face crops 224x224 in BGR order, values 0..255, 5-frame windows;
- audio 16 kHz mono as int16-scaled samples, 13 MFCCs with python_speech_features' defaults
  (25 ms window, 10 ms hop, 26 mel filters, 512-point FFT, pre-emphasis 0.97, lifter 22,
  c0 replaced by log frame energy): 4 MFCC steps per video frame, 20 per window;
- for each video window, the Euclidean distance to the audio windows shifted by -15..+15
  frames; mean over windows per shift; LSE-D = the smallest mean distance, LSE-C = median over
  shifts minus that minimum, AV offset = 15 - argmin (frames; positive = audio leads).
- face crop as syncnet_python's run_pipeline: box centre and size median-filtered over the
  track (kernel 13), half-size bs = max(w, h) / 2, crop scale 0.4: rows y-bs .. y+bs*1.8,
  columns x-bs*1.4 .. x+bs*1.4, zero padded, resized to 224.
- face tracks: runs of consecutive frames with a detected face; a frame without a face ends a
  track; tracks shorter than ``min_track`` frames are skipped and counted. Across tracks (and
  across videos) the scores are averaged weighted by each track's number of 5-frame windows;
  per-track values are kept in the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

VSHIFT = 15
FPS = 25.0
SAMPLE_RATE = 16000
WINDOW = 5
CROP_SIZE = 224
CROP_SCALE = 0.4

SYNCNET_PROTOCOL = {
    "network": "syncnet_v2 (joonson/syncnet_python S model)",
    "input_size": CROP_SIZE,
    "crop": "syncnet_python run_pipeline face crop (crop scale 0.4, median-filtered track)",
    "fps": FPS,
    "audio": "16 kHz, 13 MFCC python_speech_features defaults, int16 scale",
    "frame_window": WINDOW,
    "offset_search": f"+-{VSHIFT} frames",
    "aggregation": "mean over tracks and videos weighted by number of 5-frame windows",
}


class SyncNetS(nn.Module):
    """Audio and lip towers of syncnet_python's ``S`` (layer indices match its Sequentials)."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d((1, 1), (1, 1)),
            nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192), nn.ReLU(),
            nn.MaxPool2d((3, 3), (1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
            nn.MaxPool2d((3, 3), (2, 2)),
            nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512), nn.ReLU(),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.BatchNorm3d(96), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6), padding=0), nn.BatchNorm3d(512), nn.ReLU(),
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[N, 1, 13, 20] MFCC windows -> [N, embed_dim]."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, clips: torch.Tensor) -> torch.Tensor:
        """[N, 3, 5, 224, 224] BGR 0..255 -> [N, embed_dim]."""
        return self.netfclip(self.netcnnlip(clips).flatten(1))


def load_syncnet(path, device="cpu") -> SyncNetS:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k[len("__S__."):] if k.startswith("__S__.") else k: v for k, v in state.items()}
    embed_dim = state["netfcaud.3.weight"].shape[0] if "netfcaud.3.weight" in state else 1024
    model = SyncNetS(embed_dim)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)


# ---------------------------------------------------------------- audio front end

def _hz2mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel2hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mel_filterbank(nfilt=26, nfft=512, samplerate=SAMPLE_RATE, lowfreq=0.0, highfreq=None) -> np.ndarray:
    """Triangular filters on FFT bins, python_speech_features' ``get_filterbanks`` rule."""
    highfreq = highfreq or samplerate / 2
    mels = np.linspace(_hz2mel(lowfreq), _hz2mel(highfreq), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(mels) / samplerate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(lo, mid):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(mid, hi):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fb


def mfcc(signal: np.ndarray, samplerate: int = SAMPLE_RATE, numcep=13, nfilt=26, nfft=512,
         winlen=0.025, winstep=0.01, preemph=0.97, ceplifter=22) -> np.ndarray:
    """MFCC [frames, numcep] with python_speech_features' defaults (rectangular window,
    energy in c0). ``signal`` in the scale syncnet_python feeds it (int16 sample values)."""
    from scipy.fft import dct

    sig = np.asarray(signal, dtype=np.float64)
    sig = np.append(sig[0], sig[1:] - preemph * sig[:-1])
    flen, fstep = int(round(winlen * samplerate)), int(round(winstep * samplerate))
    n = 1 if len(sig) <= flen else 1 + int(np.ceil((len(sig) - flen) / fstep))
    padded = np.concatenate([sig, np.zeros((n - 1) * fstep + flen - len(sig))])
    idx = np.arange(flen)[None] + fstep * np.arange(n)[:, None]
    frames = padded[idx]
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    eps = np.finfo(float).eps
    energy = pspec.sum(1)
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ mel_filterbank(nfilt, nfft, samplerate).T
    feat = np.where(feat == 0, eps, feat)
    feat = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    lift = 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    feat = feat * lift
    feat[:, 0] = np.log(energy)
    return feat


def audio_to_mfcc(audio_16k: np.ndarray) -> np.ndarray:
    """Float audio (-1..1, 16 kHz mono) -> MFCC [13, frames] at 100 Hz in syncnet_python's scale."""
    pcm = np.clip(np.round(np.asarray(audio_16k, np.float64) * 32768.0), -32768, 32767)
    return mfcc(pcm).T


# ---------------------------------------------------------------- offset search

@dataclass
class SyncResult:
    offset: int               # frames; positive = audio leads video
    min_dist: float           # LSE-D
    confidence: float         # LSE-C
    mean_dists: np.ndarray    # [2*vshift+1] mean distance per shift (index i = shift i - vshift)
    num_windows: int
    tracks: list = field(default_factory=list)   # per-track values (start, end, offset, lse_d, lse_c, windows)
    dropped_frames: int = 0                      # frames without a usable face track


def offset_search(video_feats, audio_feats, vshift: int = VSHIFT) -> SyncResult:
    """syncnet_python's ``calc_pdist`` + scoring: video window i against audio windows
    i-vshift..i+vshift (audio zero-padded at both ends)."""
    v = torch.as_tensor(np.asarray(video_feats), dtype=torch.float64)
    a = torch.as_tensor(np.asarray(audio_feats), dtype=torch.float64)
    if v.ndim != 2 or a.shape != v.shape:
        raise ValueError(f"video and audio features must be [N, D] of the same shape, got "
                         f"{tuple(v.shape)} and {tuple(a.shape)}")
    n = v.shape[0]
    if n == 0:
        raise ValueError("no windows to compare")
    win = 2 * vshift + 1
    ap = torch.nn.functional.pad(a, (0, 0, vshift, vshift))
    windows = ap.unfold(0, win, 1)[:n]                       # [N, D, win]
    dists = torch.linalg.vector_norm(v[:, :, None] - windows + 1e-6, dim=1)  # pairwise_distance eps
    mean = dists.mean(0)
    minval, minidx = torch.min(mean, 0)
    conf = torch.median(mean) - minval
    return SyncResult(offset=int(vshift - minidx), min_dist=float(minval), confidence=float(conf),
                      mean_dists=mean.numpy(), num_windows=n)


# ---------------------------------------------------------------- crops and tracks

def face_tracks(boxes: list, min_track: int = WINDOW + 1) -> tuple[list[tuple[int, int]], int]:
    """Runs of consecutive frames with a box: [(start, end_exclusive)], and frames dropped
    (no face, or in a run shorter than ``min_track``)."""
    tracks, dropped, start = [], 0, None
    for i, b in enumerate(list(boxes) + [None]):
        if b is not None and start is None:
            start = i
        elif b is None and start is not None:
            if i - start >= min_track:
                tracks.append((start, i))
            else:
                dropped += i - start
            start = None
    dropped += sum(1 for b in boxes if b is None)
    return tracks, dropped


def track_crops(frames: np.ndarray, boxes: list, size: int = CROP_SIZE, cs: float = CROP_SCALE) -> np.ndarray:
    """Face crops for one track (every box present) -> uint8 [T, size, size, 3] RGB."""
    from scipy.signal import medfilt

    from .video_io import crop_box

    b = np.asarray(boxes, dtype=np.float64)
    k = min(13, len(b) if len(b) % 2 else len(b) - 1)
    half = medfilt(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / 2, k)
    cx = medfilt((b[:, 0] + b[:, 2]) / 2, k)
    cy = medfilt((b[:, 1] + b[:, 3]) / 2, k)
    out = []
    for f, bs, x, y in zip(frames, half, cx, cy):
        out.append(crop_box(f, (x - bs * (1 + cs), y - bs, x + bs * (1 + cs), y + bs * (1 + 2 * cs)), size))
    return np.stack(out)


@torch.no_grad()
def sync_features(model: SyncNetS, crops: np.ndarray, audio_16k: np.ndarray, batch_size: int = 20,
                  device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of each 5-frame video window and its 20-step MFCC window (25 fps crops)."""
    cc = audio_to_mfcc(audio_16k)
    n_frames = min(len(crops), len(audio_16k) // 640)
    last = n_frames - WINDOW
    if last <= 0:
        raise ValueError(f"need more than {WINDOW} frames of video and audio, got {n_frames}")
    bgr = torch.from_numpy(np.ascontiguousarray(crops[:n_frames, :, :, ::-1])).float()
    video = bgr.permute(3, 0, 1, 2)                                 # [3, T, H, W]
    cct = torch.from_numpy(cc).float()                              # [13, A]
    v_out, a_out = [], []
    for s in range(0, last, batch_size):
        idx = range(s, min(last, s + batch_size))
        vb = torch.stack([video[:, i:i + WINDOW] for i in idx]).to(device)
        ab = torch.stack([cct[None, :, i * 4:i * 4 + 20] for i in idx]).to(device)
        v_out.append(model.forward_lip(vb).cpu())
        a_out.append(model.forward_aud(ab).cpu())
    return torch.cat(v_out).numpy(), torch.cat(a_out).numpy()


def evaluate_sync(model: SyncNetS, frames: np.ndarray, fps: float, audio_16k: np.ndarray | None,
                  boxes: list | None, vshift: int = VSHIFT, device="cpu") -> SyncResult:
    """LSE-D / LSE-C of one video. ``boxes``: one xyxy box or None per frame (None for the
    whole list means the frames are already face crops). Raises ValueError when the video has
    no audio or no usable face track."""
    from .video_io import resample_indices, resize_uint8

    if audio_16k is None or len(audio_16k) == 0:
        raise ValueError("video has no audio; SyncNet needs the audio track")
    idx = resample_indices(len(frames), fps, FPS)
    frames = frames[idx]
    if boxes is None:
        tracks, dropped = [(0, len(frames))], 0
    else:
        boxes = [boxes[i] for i in idx]
        tracks, dropped = face_tracks(boxes)
    results = []
    for start, end in tracks:
        if boxes is None:
            crops = resize_uint8(frames, CROP_SIZE) if frames.shape[1:3] != (CROP_SIZE, CROP_SIZE) else frames
        else:
            crops = track_crops(frames[start:end], boxes[start:end])
        audio = audio_16k[int(round(start * SAMPLE_RATE / FPS)):]
        try:
            vf, af = sync_features(model, crops, audio, device=device)
        except ValueError:
            dropped += end - start
            continue
        r = offset_search(vf, af, vshift)
        r.tracks = [{"start": start, "end": end, "offset": r.offset, "lse_d": r.min_dist,
                     "lse_c": r.confidence, "windows": r.num_windows}]
        results.append(r)
    if not results:
        raise ValueError(f"no face track of at least {WINDOW + 1} frames with audio ({dropped} frames without a usable face)")
    return combine_results(results, dropped_frames=dropped)


def combine_results(results: list[SyncResult], dropped_frames: int = 0) -> SyncResult:
    """Window-weighted mean over tracks or videos (offset: that of the largest part)."""
    w = np.array([r.num_windows for r in results], dtype=np.float64)
    best = results[int(np.argmax(w))]
    out = SyncResult(offset=best.offset,
                     min_dist=float(np.average([r.min_dist for r in results], weights=w)),
                     confidence=float(np.average([r.confidence for r in results], weights=w)),
                     mean_dists=np.average(np.stack([r.mean_dists for r in results]), axis=0, weights=w),
                     num_windows=int(w.sum()),
                     tracks=[t for r in results for t in r.tracks],
                     dropped_frames=dropped_frames + sum(r.dropped_frames for r in results))
    return out
