"""Turning real inputs into EMO / Hallo conditioning (no ComfyUI imports, no import-time work).

``audio_io`` (files / AUDIO dicts -> 16 kHz mono), ``audio_features`` (wav2vec2 features, one
per video frame, with +-m windows), ``face`` (MediaPipe face boxes and landmarks), ``masks``
(face-locator and Hallo region masks), ``pose`` (head rotation speed), ``identity``
(ArcFace embedding for Hallo's identity tokens). mediapipe and onnxruntime are imported lazily.
"""
