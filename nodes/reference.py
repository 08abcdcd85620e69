"""EMO Reference Encode: the portrait -> VAE latent, identity tokens and cached ReferenceNet
features (computed once here, reused by every clip and step)."""
from __future__ import annotations

import warnings

from emo_core.preprocess.framing import DEFAULT_MARGIN, MAX_MARGIN

from .common import EmoNodeError
from .types import CATEGORY, EMO_FRAMING, EMO_MODEL, EMO_REFERENCE


def frame(emo_model, image, size: int, crop: str, margin: float, if_no_face: str):
    """IMAGE [B, H, W, C] -> emo_core's FramedPortrait of the first image (portrait, framing, face)."""
    from emo_core.preprocess.face import NoFaceError
    from emo_core.preprocess.framing import frame_portrait

    if image is None or image.ndim != 4 or image.shape[0] < 1:
        got = None if image is None else tuple(image.shape)
        raise EmoNodeError(f"image must be an IMAGE batch [B, H, W, C]; got {got}")
    try:
        return frame_portrait(image[0], size, mode=crop, margin=margin, if_no_face=if_no_face,
                              models_dir=emo_model.face_models_dir(), multiple=emo_model.cfg.size_multiple,
                              detect=crop == "face")
    except NoFaceError as exc:
        raise EmoNodeError(f"{exc} (if_no_face: full_frame continues without one; crop: center skips the "
                           "search)") from exc


def identity_embedding(emo_model, portrait, face=None):
    """ArcFace embedding for models with identity tokens (Hallo), or None (zeros are used).
    ``face``: already found in ``portrait`` (score 0 = none), else it is looked up here."""
    if emo_model.cfg.identity_dim is None or emo_model.tiny:
        return None
    import torch

    from emo_core.preprocess.face import FaceAnalyzer
    from emo_core.preprocess.identity import FaceEmbedder

    models_dir = emo_model.face_models_dir()
    embedder = FaceEmbedder(models_dir=models_dir, dim=emo_model.cfg.identity_dim)
    if not embedder.available:
        embedder.embed(None, None)  # warns once, with where to put the file
        return None
    if face is None:
        with FaceAnalyzer(models_dir=models_dir) as analyzer:
            face = analyzer.analyze(portrait.numpy(), if_missing="none")
    if face is None or face.score <= 0:
        warnings.warn("no face in the portrait: identity tokens are zeros", stacklevel=2)
        return None
    return torch.from_numpy(embedder.embed(portrait.numpy(), face))


class EmoReferenceEncode:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (EMO_REFERENCE, "IMAGE", EMO_FRAMING)
    RETURN_NAMES = ("reference", "image", "framing")
    DESCRIPTION = ("Prepares the portrait (by default a square around the face found on the whole photo, resized "
                   "to a multiple of 64), encodes it with the VAE and runs ReferenceNet once; the features are "
                   "cached for every clip. 'image' is the prepared portrait: make the face mask from it. "
                   "'framing' says where it came from: EMO Paste Back puts the animated frames back into the photo.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "emo_model": (EMO_MODEL, {"tooltip": "from EMO Model Loader (its face models find the face)"}),
                "image": ("IMAGE", {"tooltip": "the portrait photo, any size (first image of the batch is used)"}),
                "size": ("INT", {"default": 512, "min": 0, "max": 2048, "step": 64,
                                 "tooltip": "output side in pixels (Hallo: 512); 0 keeps the crop's size, rounded "
                                            "down to 64"}),
                "crop": (["face", "center", "none"], {
                    "default": "face",
                    "tooltip": "face: a square around the most credible face on the whole photo (refuses photos "
                               "without one, see if_no_face); center: the centre square; none: the whole photo "
                               "resized (Hallo's weights want squares)"}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "encode the portrait with this VAE instead of the model's"}),
                "identity": ("BOOLEAN", {"default": True, "tooltip": "compute the ArcFace identity embedding (Hallo)"}),
                "margin": ("FLOAT", {"default": DEFAULT_MARGIN, "min": 0.0, "max": MAX_MARGIN, "step": 0.05,
                                     "tooltip": "crop 'face': space around the face box on each side, as a fraction "
                                                "of its side (the square is box x (1 + 2 x margin); 0.5: the face "
                                                "box is half the square)"}),
                "if_no_face": (["error", "full_frame"], {
                    "default": "error",
                    "tooltip": "crop 'face' without a credible face: stop with the reason, or use the photo's "
                               "centre square as the face region"}),
            },
        }

    def encode(self, emo_model, image, size=512, crop="face", vae=None, identity=True, margin=DEFAULT_MARGIN,
               if_no_face="error"):
        import torch

        from emo_core import checks

        from .common import choice, widget
        from .model import ComfyVae

        crop = choice("crop", crop, ("face", "center", "none"))
        if_no_face = choice("if_no_face", if_no_face, ("error", "full_frame"))
        size = widget("size", lambda v, name: checks.integer(v, name, low=0), size)
        if size:  # 0 keeps the crop's own size
            widget("size", checks.size, size, emo_model.cfg.size_multiple)
        margin = widget("margin", lambda v, name: checks.number(v, name, low=0.0, high=MAX_MARGIN), margin)
        framed = frame(emo_model, image, size, crop, margin, if_no_face)
        portrait = framed.portrait
        emb = identity_embedding(emo_model, portrait, framed.face) if identity else None
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
        face = framed.face
        ref = {"state": state, "image": portrait, "size": tuple(portrait.shape[:2]), "model_key": emo_model.key,
               "face_box": None if face is None or face.score <= 0 else tuple(float(v) for v in face.box_xyxy)}
        return (ref, portrait[None].clone(), framed.framing)


NODE_CLASS_MAPPINGS = {"EmoReferenceEncode": EmoReferenceEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoReferenceEncode": "EMO Reference Encode"}
