"""emo_core: EMO (Emote Portrait Alive) as a standalone library.

One module per component of the paper: ``models.reference_net`` (ReferenceNet),
``models.backbone`` (the 3D denoising UNet with reference-, audio-, temporal- and speed
layers), ``models.face_locator``, ``models.audio``, ``models.speed``, ``sampling`` (DDIM +
classifier-free guidance), ``chaining`` (motion-frame clip chaining), ``preprocess`` (audio
and face conditioning), ``eval`` (metrics). This package never imports ComfyUI.
"""

__version__ = "0.1.0"
