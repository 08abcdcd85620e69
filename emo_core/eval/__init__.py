"""Evaluation: EMO's metrics (FID, FVD, SyncNet LSE-C/LSE-D, F-SIM, E-FID) and motion statistics.

- ``frechet``: float64 Fréchet distance with a symmetric, stable matrix square root;
  ``stats``: feature statistics that accumulate, save (.npz with protocol) and compare.
- Networks, each from a local file in ``<models_dir>/eval`` (``weights``): ``inception``
  (pytorch-fid FID Inception, strict state-dict layout), ``i3d`` (StyleGAN-V TorchScript I3D),
  ``syncnet`` (syncnet_python S model, MFCC front end, offset search); ``fsim`` (ArcFace
  cosine via ``preprocess.identity``); ``expression`` (3D-face model / blendshapes / landmark
  proxy for E-FID); ``motion`` (head motion, mouth vs loudness, flicker, A/V offset);
  ``long_video`` (identity and mouth/loudness per minute and their drift, ``join_ratio`` of
  chained clips).
- ``pipeline.evaluate(generated, reference, EvalConfig(...))`` -> ``report.EvalReport``
  (JSON + table, every number with its protocol, skips counted); ``cli`` is
  ``python -m emo_core evaluate``. Nothing here imports ComfyUI or downloads at import time.
"""
