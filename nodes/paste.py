"""EMO Paste Back: the animated square from EMO Reference Encode's framing, blended back into the
original photo at its full size (feathered edge; see emo_core.preprocess.framing)."""
from __future__ import annotations

from emo_core.preprocess.framing import DEFAULT_FEATHER

from .common import EmoNodeError
from .types import CATEGORY, EMO_FRAMING


class EmoPasteBack:
    CATEGORY = CATEGORY
    FUNCTION = "paste"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    DESCRIPTION = ("Puts generated frames back into the original photo where EMO Reference Encode cut the portrait "
                   "out: output frames have the photo's size; outside the square they are the photo exactly, the "
                   "square's inner edges are blended over 'feather' of its side.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "generated frames at the prepared portrait's size (EMO Generate / "
                                                "EMO Decode Clip)"}),
                "original": ("IMAGE", {"tooltip": "the photo given to EMO Reference Encode (first image of the "
                                                  "batch)"}),
                "framing": (EMO_FRAMING, {"tooltip": "EMO Reference Encode's framing output for that photo"}),
                "feather": ("FLOAT", {"default": DEFAULT_FEATHER, "min": 0.0, "max": 0.5, "step": 0.01,
                                      "tooltip": "width of the blend at the square's edges inside the photo, as a "
                                                 "fraction of the square's side (0: hard edge)"}),
            },
        }

    def paste(self, images, original, framing, feather=DEFAULT_FEATHER):
        import torch

        from emo_core.preprocess.framing import PasteBack

        from .comfy_env import check_interrupt

        if original is None or original.ndim != 4 or original.shape[0] < 1:
            raise EmoNodeError(f"original must be an IMAGE batch [B, H, W, C]; got "
                               f"{None if original is None else tuple(original.shape)}")
        try:
            paster = PasteBack(original[0], framing, feather=float(feather))
            parts = []
            for part in paster.iter(images):
                check_interrupt()
                parts.append(part)
        except ValueError as exc:
            raise EmoNodeError(str(exc)) from exc
        return (torch.cat(parts),)


NODE_CLASS_MAPPINGS = {"EmoPasteBack": EmoPasteBack}
NODE_DISPLAY_NAME_MAPPINGS = {"EmoPasteBack": "EMO Paste Back"}
