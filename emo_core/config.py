"""Architecture configuration: one dataclass covers EMO's native layout and Hallo's.

``EmoConfig`` is saved as JSON beside our safetensors checkpoints. The UNet part keeps
the key names of a diffusers SD1.5 ``unet/config.json`` so an SD1.5 config can be read
directly (``UNetConfig.from_diffusers``).

Presets:
- ``EmoConfig.emo()``    EMO as in the paper: speed layers, f=12 frames, n=4 motion frames, m=2.
- ``EmoConfig.hallo()``  Hallo's released model: no speed layers, full/face/lip audio attention,
                         identity tokens, 16 frames, 2 motion frames.
- ``EmoConfig.echomimic()`` EchoMimic v1: whisper-tiny tokens in the backbone's own cross-attention,
                         1-channel face locator, no motion frames: context windows over the video.
- ``EmoConfig.tiny()``   a few-thousand-parameter model for tests and smoke runs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What the network predicts (diffusers' names): the noise, v = sqrt(a) eps - sqrt(1-a) x0
# (Salimans & Ho, 2022), or the clean latent x0 itself ("sample").
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class ConfigError(ValueError):
    """A configuration value is invalid or two values do not fit together."""


@dataclass(frozen=True)
class UNetConfig:
    """SD1.5-layout 2D UNet shape shared by ReferenceNet and the backbone."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int | tuple[int, ...] = 8  # diffusers' meaning for SD1.5: number of heads
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = (
        "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    use_linear_projection: bool = False

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(
                f"block_out_channels has {n} entries but down_block_types has "
                f"{len(self.down_block_types)} and up_block_types {len(self.up_block_types)}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(f"block width {c} is not divisible by norm_num_groups={self.norm_num_groups}")

    def heads(self, level: int) -> int:
        h = self.attention_head_dim
        return h[level] if isinstance(h, (tuple, list)) else h

    def down_has_attention(self, level: int) -> bool:
        return self.down_block_types[level].startswith("CrossAttn")

    def up_has_attention(self, level: int) -> bool:
        return self.up_block_types[level].startswith("CrossAttn")

    @classmethod
    def from_diffusers(cls, cfg: dict[str, Any]) -> "UNetConfig":
        """Reads a diffusers ``UNet2DConditionModel`` config (SD1.5 ``unet/config.json``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in names}
        kw["down_block_types"] = tuple(t.replace("3D", "2D") for t in kw.get("down_block_types", cls.down_block_types))
        kw["up_block_types"] = tuple(t.replace("3D", "2D") for t in kw.get("up_block_types", cls.up_block_types))
        return cls(**kw)

    def to_diffusers(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(mid_block_type="UNetMidBlock2DCrossAttn", act_fn="silu", center_input_sample=False)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass(frozen=True)
class TemporalConfig:
    """AnimateDiff-layout temporal modules ("motion modules")."""

    num_attention_heads: int = 8
    num_transformer_blocks: int = 1
    attention_blocks: int = 2  # AnimateDiff v2: two Temporal_Self attentions per block
    position_encoding_max_len: int = 32
    norm_num_groups: int = 32
    resolutions: tuple[int, ...] = (1, 2, 4, 8)
    mid_block: bool = True
    # Hallo's weights were trained with the temporal modules of the two attention-free UNet
    # blocks (lowest down block, first up block) bypassed; EMO/AnimateDiff run them.
    in_plain_blocks: bool = True


    @classmethod
    def from_unet_kwargs(cls, extra: dict[str, Any], *, in_plain_blocks: bool) -> "TemporalConfig":
        """Reads AnimateDiff-style ``unet_additional_kwargs`` (Hallo's and EchoMimic's yaml)."""
        mm = extra.get("motion_module_kwargs", {})
        return cls(
            num_attention_heads=mm.get("num_attention_heads", 8),
            num_transformer_blocks=mm.get("num_transformer_block", 1),
            attention_blocks=len(mm.get("attention_block_types", ("Temporal_Self", "Temporal_Self"))),
            position_encoding_max_len=mm.get("temporal_position_encoding_max_len", 32),
            resolutions=tuple(extra.get("motion_module_resolutions", (1, 2, 4, 8))),
            mid_block=extra.get("motion_module_mid_block", True),
            in_plain_blocks=in_plain_blocks,
        )


@dataclass(frozen=True)
class AudioConfig:
    """Audio projection (wav2vec features -> tokens) and the backbone's audio attention."""

    feature_dim: int = 768  # wav2vec2 hidden size
    feature_blocks: int = 12  # wav2vec2 transformer blocks whose outputs are joined
    context: int = 2  # m: frames i-m..i+m join frame i
    intermediate_dim: int = 512
    tokens: int = 32
    token_dim: int = 768
    # Hallo: three masked cross-attentions (full/face/lip), each through a zero 1x1 conv.
    region_attention: bool = False
    encoder: str = "wav2vec2"  # which features: "wav2vec2" (EMO, Hallo) or "whisper" (EchoMimic)
    # EchoMimic: each frame's window of features is used as is (tokens = window frames x blocks) as the
    # context of the backbone's own cross-attention (attn2): no projection model, no audio layers.
    in_cross_attention: bool = False
    cross_attention_scale: float = 1.0  # attn2's output is multiplied by this (EchoMimic: 3.0)

    def __post_init__(self):
        if self.encoder not in ("wav2vec2", "whisper"):
            raise ConfigError(f"audio encoder must be 'wav2vec2' or 'whisper', got {self.encoder!r}")
        if self.in_cross_attention and self.region_attention:
            raise ConfigError("audio tokens go either into the backbone's cross-attention (in_cross_attention) "
                              "or into separate region audio layers (region_attention), not both")
        if self.in_cross_attention and self.token_dim != self.feature_dim:
            raise ConfigError(f"audio in cross-attention uses the features as tokens: token_dim {self.token_dim} "
                              f"must equal feature_dim {self.feature_dim}")
        if self.in_cross_attention and self.tokens != self.window * self.feature_blocks:
            raise ConfigError(f"audio in cross-attention: tokens {self.tokens} must be window frames x blocks = "
                              f"{self.window} x {self.feature_blocks}")
        if not self.in_cross_attention and self.cross_attention_scale != 1.0:
            raise ConfigError("cross_attention_scale applies only with in_cross_attention")

    @property
    def features_per_frame(self) -> int:
        """Feature frames per video frame in a window: whisper's 50 Hz gives 2 per frame (EchoMimic's
        windowing, at any fps); wav2vec2 features are resampled to one per frame."""
        return 2 if self.encoder == "whisper" else 1

    @property
    def window(self) -> int:
        """Feature frames in one video frame's window (2m+1 video frames)."""
        return (2 * self.context + 1) * self.features_per_frame


@dataclass(frozen=True)
class SpeedConfig:
    """EMO speed layers: bucketed head-rotation speed -> tokens cross-attended in time."""

    bucket_centers: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)  # degrees per frame
    bucket_radii: tuple[float, ...] = (0.25, 0.25, 0.5, 1.0, 2.0, 4.0)
    context: int = 2  # m
    hidden_dim: int = 256
    token_dim: int = 768
    # also a per-frame scale and shift of the temporal features from the speed tokens (FiLM,
    # zero-initialised) beside the cross-attention: the speed multiplies what the frames attend with
    film: bool = False

    def __post_init__(self):
        if len(self.bucket_centers) != len(self.bucket_radii):
            raise ConfigError(
                f"speed buckets: {len(self.bucket_centers)} centres but {len(self.bucket_radii)} radii")
        if any(r <= 0 for r in self.bucket_radii):
            raise ConfigError(f"speed bucket radii must be > 0, got {self.bucket_radii}")


@dataclass(frozen=True)
class EmoConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    speed: SpeedConfig | None = field(default_factory=SpeedConfig)
    face_locator_channels: tuple[int, ...] = (16, 32, 64, 128)
    face_locator_in_channels: int = 3
    identity_dim: int | None = None  # face-embedding size for identity tokens (Hallo: 512)
    identity_tokens: int = 4
    clip_frames: int = 12  # f
    motion_frames: int = 4  # n
    prediction_type: str = "epsilon"
    family: str = "emo"
    # False: ReferenceNet's transformer blocks have no cross-attention (EchoMimic's reference UNet).
    reference_cross_attention: bool = True
    # "float16": ReferenceNet features are rounded to float16 before the backbone reads them
    # (EchoMimic hands its reference banks over in float16); None keeps them as computed.
    reference_feature_dtype: str | None = None
    # How a video longer than one clip is made: "motion_frames" (EMO/Hallo: clip after clip, the last
    # n frames carried over) or "context_windows" (EchoMimic: windows of clip_frames over the whole
    # latent sequence, overlapping by context_overlap, shifted every step, predictions averaged).
    chaining: str = "motion_frames"
    context_overlap: int = 0

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.clip_frames < 1 or self.motion_frames < 0:
            raise ConfigError(f"clip_frames must be >= 1 and motion_frames >= 0, got {self.clip_frames}, {self.motion_frames}")
        total = self.clip_frames + self.motion_frames
        if total > self.temporal.position_encoding_max_len:
            raise ConfigError(
                f"clip_frames + motion_frames = {total} exceeds the temporal position encoding length "
                f"{self.temporal.position_encoding_max_len}")
        if self.chaining not in ("motion_frames", "context_windows"):
            raise ConfigError(f"chaining must be 'motion_frames' or 'context_windows', got {self.chaining!r}")
        if self.chaining == "context_windows" and not 0 <= self.context_overlap < self.clip_frames:
            raise ConfigError(f"context_overlap {self.context_overlap} must be >= 0 and < clip_frames {self.clip_frames}")
        if self.reference_feature_dtype not in (None, "float16", "bfloat16"):
            raise ConfigError(f"reference_feature_dtype must be None, 'float16' or 'bfloat16', "
                              f"got {self.reference_feature_dtype!r}")
        if self.audio.in_cross_attention and self.identity_dim:
            raise ConfigError("identity tokens and audio tokens cannot share the backbone's cross-attention: "
                              "set identity_dim=None when audio.in_cross_attention is on")
        if len(self.face_locator_channels) != 4:
            raise ConfigError(
                f"face_locator_channels {self.face_locator_channels} must have 4 entries: three stride-2 "
                "stages downsample the mask by 8, like the VAE")

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent pixel (the SD VAE's 8)."""
        return 8

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE factor times the UNet's downsampling."""
        return self.latent_factor * 2 ** (len(self.unet.block_out_channels) - 1)

    # ----- presets -----------------------------------------------------------------------
    @classmethod
    def emo(cls) -> "EmoConfig":
        return cls()

    @classmethod
    def hallo(cls) -> "EmoConfig":
        return cls(
            temporal=TemporalConfig(in_plain_blocks=False),
            audio=AudioConfig(region_attention=True),
            speed=None,
            identity_dim=512,
            clip_frames=16,
            motion_frames=2,
            prediction_type="v_prediction",
            family="hallo",
        )

    @classmethod
    def echomimic(cls) -> "EmoConfig":
        """EchoMimic v1 (and its accelerated weights): SD1.5 layout, whisper-tiny features (input
        embedding + 4 blocks, 384 wide; 10 feature frames per video frame -> 50 tokens) in attn2 with
        output scale 3, face locator 1 -> (16, 32, 96, 256) -> 320, 12-frame windows overlapping by 3."""
        return cls(
            audio=AudioConfig(feature_dim=384, feature_blocks=5, context=2, tokens=50, token_dim=384,
                              encoder="whisper", in_cross_attention=True, cross_attention_scale=3.0),
            speed=None,
            face_locator_channels=(16, 32, 96, 256),
            face_locator_in_channels=1,
            clip_frames=12,
            motion_frames=0,
            prediction_type="v_prediction",
            family="echomimic",
            reference_cross_attention=False,
            reference_feature_dtype="float16",
            chaining="context_windows",
            context_overlap=3,
        )

    @classmethod
    def tiny(cls, *, speed: bool = True, family: str = "emo") -> "EmoConfig":
        if family == "echomimic":
            return cls.tiny_echomimic()
        return cls(
            unet=UNetConfig(block_out_channels=(16, 32, 32, 32), layers_per_block=1, attention_head_dim=2,
                            cross_attention_dim=16, norm_num_groups=8),
            temporal=TemporalConfig(num_attention_heads=2, norm_num_groups=8, position_encoding_max_len=32),
            audio=AudioConfig(feature_dim=8, feature_blocks=2, intermediate_dim=16, tokens=2, token_dim=16,
                              region_attention=family == "hallo"),
            speed=SpeedConfig(hidden_dim=16, token_dim=16) if speed else None,
            face_locator_channels=(4, 8, 8, 16),
            identity_dim=8 if family == "hallo" else None,
            clip_frames=4,
            motion_frames=2,
            family=family,
        )

    @classmethod
    def tiny_echomimic(cls) -> "EmoConfig":
        """The tiny UNet of ``tiny()`` with EchoMimic's options (whisper-shaped audio of width 16)."""
        base = cls.tiny(speed=False)
        return dataclasses.replace(
            cls.echomimic(), unet=base.unet, temporal=base.temporal,
            audio=AudioConfig(feature_dim=16, feature_blocks=2, context=2, tokens=20, token_dim=16, encoder="whisper",
                              in_cross_attention=True, cross_attention_scale=3.0),
            face_locator_channels=(4, 8, 8, 16), clip_frames=4, context_overlap=1)

    # ----- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmoConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown EmoConfig keys {sorted(unknown)}; known keys: {sorted(known)}")
        subs = {"unet": UNetConfig, "temporal": TemporalConfig, "audio": AudioConfig, "speed": SpeedConfig}
        for key, sub in subs.items():
            if key in d and isinstance(d[key], dict):
                d[key] = sub(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d[key].items()})
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "EmoConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_hallo_folder(cls, folder: str | Path, *, clip_frames: int = 16, motion_frames: int = 2) -> "EmoConfig":
        """Builds the config from a Hallo-style folder: ``unet_config.json`` (SD1.5 UNet),
        ``unet_additional_kwargs.json``, ``audioproj.json``, ``imageproj.json``, ``face_locator.json``."""
        folder = Path(folder)

        def read(name):
            p = folder / name
            if not p.is_file():
                raise ConfigError(f"{p} is missing: a Hallo-layout folder needs {name}")
            return json.loads(p.read_text())

        unet = UNetConfig.from_diffusers(read("unet_config.json"))
        extra = read("unet_additional_kwargs.json")
        temporal = TemporalConfig.from_unet_kwargs(extra, in_plain_blocks=False)
        ap = read("audioproj.json")
        audio = AudioConfig(
            feature_dim=ap["channels"], feature_blocks=ap["blocks"], context=(ap["seq_len"] - 1) // 2,
            intermediate_dim=ap["intermediate_dim"], tokens=ap["context_tokens"], token_dim=ap["output_dim"],
            region_attention=True,
        )
        if extra.get("audio_attention_dim", ap["output_dim"]) != ap["output_dim"]:
            raise ConfigError("audio_attention_dim in unet_additional_kwargs.json differs from audioproj output_dim")
        ip = read("imageproj.json")
        fl = read("face_locator.json")
        if fl["conditioning_embedding_channels"] != unet.block_out_channels[0]:
            raise ConfigError(
                f"face_locator conditioning_embedding_channels={fl['conditioning_embedding_channels']} must equal "
                f"the UNet's first width {unet.block_out_channels[0]}")
        if ip["cross_attention_dim"] != unet.cross_attention_dim:
            raise ConfigError("imageproj cross_attention_dim differs from the UNet's cross_attention_dim")
        return cls(
            unet=unet, temporal=temporal, audio=audio, speed=None,
            face_locator_channels=tuple(fl["block_out_channels"]),
            face_locator_in_channels=fl.get("conditioning_channels", 3),
            identity_dim=ip["clip_embeddings_dim"], identity_tokens=ip["clip_extra_context_tokens"],
            clip_frames=clip_frames, motion_frames=motion_frames, prediction_type="v_prediction", family="hallo",
        )
