"""A file-backed VIDEO for use outside ComfyUI (inside it, ComfyUI's own ``VideoFromFile``
is used). It offers the VideoInput methods the core video nodes call on a file that is
already an H.264 + AAC mp4: dimensions, duration, frame rate, frame count, ``save_to``
(a copy) and ``get_components`` (decodes; only for short videos)."""
from __future__ import annotations

import shutil
from fractions import Fraction


class FileVideo:
    def __init__(self, path: str):
        self.path = str(path)

    def get_stream_source(self) -> str:
        return self.path

    def _probe(self) -> dict:
        from emo_core.video_out import probe

        return probe(self.path)

    def get_dimensions(self) -> tuple[int, int]:
        p = self._probe()
        return p["width"], p["height"]

    def get_duration(self) -> float:
        return self._probe()["video_seconds"]

    def get_frame_rate(self) -> Fraction:
        import av

        with av.open(self.path) as c:
            return Fraction(c.streams.video[0].average_rate)

    def get_frame_count(self) -> int:
        return self._probe()["video_frames"]

    def get_container_format(self) -> str:
        return "mp4"

    def save_to(self, path, format=None, codec=None, metadata=None, **kwargs):
        shutil.copyfile(self.path, path)

    def get_components(self) -> dict:
        """{"images": [T, H, W, 3] float, "audio": AUDIO or None, "frame_rate": Fraction}."""
        import av
        import numpy as np
        import torch

        frames, chunks, rate = [], [], None
        with av.open(self.path) as c:
            fr = Fraction(c.streams.video[0].average_rate)
            for frame in c.decode(*c.streams):
                if isinstance(frame, av.VideoFrame):
                    frames.append(frame.to_ndarray(format="rgb24"))
                else:
                    chunks.append(frame.to_ndarray().reshape(frame.layout.nb_channels if hasattr(frame.layout, "nb_channels")
                                                             else len(frame.layout.channels), -1))
                    rate = frame.sample_rate
        images = torch.from_numpy(np.stack(frames)).float() / 255.0
        audio = None
        if chunks:
            audio = {"waveform": torch.from_numpy(np.concatenate(chunks, axis=1)).float()[None], "sample_rate": rate}
        return {"images": images, "audio": audio, "frame_rate": fr}
