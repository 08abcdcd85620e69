"""ComfyUI nodes: thin adapters over emo_core, one file per stage (category "EMO").

Importing this is cheap: no model is built, nothing is downloaded, and ComfyUI modules are
only imported inside node functions (see comfy_env.py), so the pack also imports without
ComfyUI. Custom types are documented in types.py.
"""
from . import audio, chain, evaluate, face_mask, guider, loader, paste, reference, sampler, speed

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _module in (loader, audio, reference, face_mask, speed, sampler, guider, chain, paste, evaluate):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
del _module
