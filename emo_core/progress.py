"""Progress of a video generated clip after clip: clips done / total, frames, elapsed, time left.

``ClipProgress`` is a callback for ``EmoPipeline.generate`` (it reads the ``clip``, ``clips``,
``step`` and ``steps`` of each sampler step). On a terminal it redraws one line in place at
every step (at most every ``min_interval`` seconds, and always when a clip ends)::

    clip 12/940 step 3/40 | 176/15000 frames | 1:23 elapsed | 2:41:05 left

Elsewhere (a log file, a pipe) it writes one plain line per finished clip::

      clip 12/940 done (192/15000 frames, 1:31 elapsed, 2:40:58 left)

The time left is the time per sampler step measured so far times the steps still to run. Once
a clip has finished, the rate is measured from the end of the first clip, so one-off costs of
the first clip (kernel selection, caches) do not inflate the estimate for a long video.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def format_duration(seconds: float) -> str:
    """``m:ss`` below an hour, ``h:mm:ss`` above; ``?`` when not known yet."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ClipProgress:
    """Callback for ``EmoPipeline.generate``: progress with time left on ``stream`` (stderr).

    ``total_frames``: frames of the whole video; ``clip_frames``: frames per clip (the last
    clip may be shorter; a model that samples the whole video at once reports one clip, whose
    end is the whole video). ``tty``: redraw one line in place (default: ``stream.isatty()``).
    ``clock``: seconds, monotonic (tests pass a fake one). Call ``close()`` at the end (it ends
    the in-place line)."""

    def __init__(self, total_frames: int, clip_frames: int, stream: TextIO | None = None, *, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, min_interval: float = 0.2):
        self.total_frames, self.clip_frames = int(total_frames), int(clip_frames)
        self.stream = sys.stderr if stream is None else stream
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty, self.clock, self.min_interval = tty, clock, min_interval
        self.start = clock()
        self._first_clip_end: tuple[float, int] | None = None  # (time, steps done) when clip 1 ended
        self._drawn_at = -float("inf")
        self._width = 0  # length of the line on screen (tty), to blank what a shorter line leaves

    # ---- numbers ---------------------------------------------------------------------------
    def frames_done(self, clip: int, clips: int) -> int:
        """Frames of the video finished when clip ``clip`` (1-based) of ``clips`` has ended."""
        return self.total_frames if clip >= clips else min(self.total_frames, clip * self.clip_frames)

    def time_left(self, now: float, done: int, total: int) -> float:
        """Seconds left after ``done`` of ``total`` sampler steps (all clips together)."""
        if done <= 0:
            return float("nan")
        start, base = self.start, 0
        if self._first_clip_end is not None and done > self._first_clip_end[1]:
            start, base = self._first_clip_end
        return (now - start) / (done - base) * (total - done)

    # ---- the callback ----------------------------------------------------------------------
    def __call__(self, info: dict) -> None:
        clip, clips, step, steps = int(info["clip"]), int(info["clips"]), int(info["step"]), int(info["steps"])
        now = self.clock()
        done, total = (clip - 1) * steps + step, clips * steps
        clip_end = step >= steps
        if clip_end and clip == 1 and clips > 1:
            self._first_clip_end = (now, done)
        left = self.time_left(now, done, total)
        elapsed = format_duration(now - self.start)
        if self.tty:
            if not clip_end and now - self._drawn_at < self.min_interval:
                return
            self._drawn_at = now
            frames = self.frames_done(clip, clips) if clip_end else self.frames_done(clip - 1, clips)
            line = (f"clip {clip}/{clips} step {step}/{steps} | {frames}/{self.total_frames} frames | "
                    f"{elapsed} elapsed | {format_duration(left)} left")
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif clip_end:
            self.stream.write(f"  clip {clip}/{clips} done ({self.frames_done(clip, clips)}/{self.total_frames} "
                              f"frames, {elapsed} elapsed, {format_duration(left)} left)\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends the in-place line (tty), so what is printed next starts on its own line."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
