"""EMO Reference Encode: the portrait -> VAE latent, identity tokens and cached ReferenceNet
features (computed once here, reused by every clip and step)."""
from __future__ import annotations

import warnings

from .types import CATEGORY, EMO_MODEL, EMO_REFERENCE


def prepare_portrait(image, size: int, crop: str, multiple: int):
    """IMAGE [B, H, W, C] -> [H', W', 3] float (first image): centre-cropped to a square and
    resized to ``size`` (crop="center"), or resized to the nearest multiples (crop="none")."""
    import torch.nn.functional as F

    img = image[0] if image.ndim == 4 else image
    img = img[..., :3].float().cpu()
    h, w = img.shape[:2]
    if crop == "center":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top:top + side, left:left + side]
        th = tw = size if size > 0 else max(multiple, side // multiple * multiple)
    elif crop == "none":
        if size > 0:
            scale = size / max(h, w)
            th, tw = max(multiple, round(h * scale / multiple) * multiple), max(multiple, round(w * scale / multiple) * multiple)
        else:
            th, tw = max(multiple, h // multiple * multiple), max(multiple, w // multiple * multiple)
    else:
        raise ValueError(f"crop must be 'center' or 'none', got {crop!r}")
    if th % multiple or tw % multiple:
        raise ValueError(f"size {tw}x{th} is not a multiple of {multiple} (the network downsamples by {multiple})")
    if tuple(img.shape[:2]) != (th, tw):
        img = F.interpolate(img.permute(2, 0, 1)[None], size=(th, tw), mode="bicubic", align_corners=False,
                            antialias=True)[0].permute(1, 2, 0)
    return img.clamp(0, 1).contiguous()


def identity_embedding(emo_model, portrait):
    """ArcFace embedding for models with identity tokens (Hallo), or None (zeros are used)."""
    if emo_model.cfg.identity_dim is None or emo_model.tiny:
        return None
    import torch

    from emo_core.preprocess.face import FaceAnalyzer
    from emo_core.preprocess.identity import FaceEmbedder

    models_dir = emo_model.face_models_dir()
    embedder = FaceEmbedder(models_dir=models_dir)
    if not embedder.available:
        embedder.embed(None, None)  # warns once, with where to put the file
        return None
    with FaceAnalyzer(models_dir=models_dir) as analyzer:
        face = analyzer.analyze(portrait.numpy(), if_missing="none")
    if face is None:
        warnings.warn("no face in the portrait: identity tokens are zeros", stacklevel=2)
        return None
    return torch.from_numpy(embedder.embed(portrait.numpy(), face))


class EmoReferenceEncode:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (EMO_REFERENCE, "IMAGE")
    RETURN_NAMES = ("reference", "image")
    DESCRIPTION = ("Prepares the portrait (crop + resize to a multiple of 64), encodes it with the VAE and runs "
                   "ReferenceNet once; the features are cached for every clip. 'image' is the prepared portrait: "
                   "make the face mask from it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "emo_model": (EMO_MODEL, {}),
                "image": ("IMAGE", {"tooltip": "the portrait (first image of the batch is used)"}),
                "size": ("INT", {"default": 512, "min": 0, "max": 2048, "step": 64,
                                 "tooltip": "output side in pixels (Hallo: 512); 0 keeps the size, rounded down to 64"}),
                "crop": (["center", "none"], {"default": "center",
                                              "tooltip": "center: square centre crop (Hallo's weights want squares)"}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "encode the portrait with this VAE instead of the model's"}),
                "identity": ("BOOLEAN", {"default": True, "tooltip": "compute the ArcFace identity embedding (Hallo)"}),
            },
        }

    def encode(self, emo_model, image, size=512, crop="center", vae=None, identity=True):
        import torch

        from .model import ComfyVae

        if image is None or image.ndim != 4 or image.shape[0] < 1:
            raise ValueError(f"image must be an IMAGE batch [B, H, W, C]; got {None if image is None else tuple(image.shape)}")
        portrait = prepare_portrait(image, int(size), crop, emo_model.cfg.size_multiple)
        emb = identity_embedding(emo_model, portrait) if identity else None
        with emo_model.loaded() as pipe:
            if vae is not None:
                latent = ComfyVae(vae).encode_images(portrait[None]).to(pipe.device, pipe.dtype)
                ident = pipe.net.identity_tokens(None if emb is None else emb.reshape(1, -1), batch=1)
                from emo_core.pipeline import ReferenceState

                with torch.no_grad():
                    state = ReferenceState(portrait, latent, ident, pipe.net.reference_features(latent, ident))
            else:
                state = pipe.encode_reference(portrait, face_embedding=emb)
            state = state.to("cpu")
        ref = {"state": state, "image": portrait, "size": tuple(portrait.shape[:2]), "model_key": emo_model.key}
        return (ref, portrait[None].clone())


NODE_CLASS_MAPPINGS = {"EmoReferenceEncode": EmoReferenceEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoReferenceEncode": "EMO Reference Encode"}
