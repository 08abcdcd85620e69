"""Value checks shared by the command line, the nodes and the library.

Each check returns the value converted (int / float) or raises ``ValueError`` with a message
``"<name>: expected <what>, got <value>"``; the caller passes the name the user knows (``--steps``
on the command line, ``steps`` for a node widget or a function argument). NaN and infinities are
refused everywhere: a NaN speed or guidance scale silently turns every frame black.
"""
from __future__ import annotations

import math
import numbers

SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF  # torch.Generator.manual_seed takes 64-bit seeds
CRF_MAX = 51  # libx264, 8-bit


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def integer(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """An integer (bools and fractional floats refused) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected an integer, got {_show(value)}")
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(float(value)) or float(value) != int(value):
            raise ValueError(f"{name}: expected an integer, got {_show(value)}")
    v = int(value)
    if low is not None and high is not None and not low <= v <= high:
        raise ValueError(f"{name}: expected an integer from {low} to {high}, got {v}")
    if low is not None and v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name}: expected an integer <= {high}, got {v}")
    return v


def number(value, name: str, *, low: float | None = None, high: float | None = None,
           above: float | None = None) -> float:
    """A finite number within [low, high] (``above``: strictly greater than)."""
    if low is not None and high is not None:
        want = f"a number from {low:g} to {high:g}"
    elif above is not None:
        want = f"a finite number > {above:g}"
    elif low is not None:
        want = f"a finite number >= {low:g}"
    elif high is not None:
        want = f"a finite number <= {high:g}"
    else:
        want = "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected {want}, got {_show(value)}")
    v = float(value)
    if (not math.isfinite(v) or (above is not None and not v > above) or (low is not None and v < low)
            or (high is not None and v > high)):
        raise ValueError(f"{name}: expected {want}, got {v:g}")
    return v


def steps(value, name: str = "steps") -> int:
    """DDIM steps: an integer >= 1 (the schedule's 1000 training steps is the upper bound)."""
    return integer(value, name, low=1, high=1000)


def guidance(value, name: str = "cfg") -> float:
    """Classifier-free guidance scale: finite and >= 0 (<= 1 means no guidance)."""
    return number(value, name, low=0.0)


def speed(value, name: str = "speed") -> float:
    """Head-rotation speed target in degrees per frame: finite and >= 0."""
    return number(value, name, low=0.0)


def fps(value, name: str = "fps") -> float:
    """Frames per second: finite and > 0."""
    return number(value, name, above=0.0)


def seed(value, name: str = "seed") -> int:
    return integer(value, name, low=0, high=SEED_MAX)


def crf(value, name: str = "crf") -> float:
    """H.264 quality: 0 (lossless) to 51."""
    return number(value, name, low=0.0, high=CRF_MAX)


def size(value, multiple: int, name: str = "size") -> int:
    """An image side: a positive multiple of ``multiple`` (the model's size multiple)."""
    v = integer(value, name, low=1)
    if v % multiple:
        lower = v // multiple * multiple
        near = f"{lower} or {lower + multiple}" if lower else f"{multiple}"
        raise ValueError(f"{name}: expected a positive multiple of {multiple} (the model's size multiple), got {v} "
                         f"(try {near})")
    return v


def expand(value, name: str = "expand") -> float:
    """Face-box growth factor: finite and > 0."""
    return number(value, name, above=0.0)
