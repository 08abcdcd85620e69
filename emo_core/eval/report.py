"""Evaluation report: every number with the protocol that produced it, counts and skips.

``EvalReport.to_dict()`` is the JSON written by ``python -m emo_core evaluate``;
``format_table()`` is the readable version shown on the console and in the ComfyUI node.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MetricResult:
    name: str
    value: float | None
    protocol: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)     # secondary numbers (std, ground-truth value, ...)
    skipped_reason: str = ""                      # why value is None

    def to_dict(self) -> dict:
        return {"value": _clean(self.value), "protocol": self.protocol, "counts": self.counts,
                "extra": _clean(self.extra), **({"skipped_reason": self.skipped_reason} if self.skipped_reason else {})}


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class EvalReport:
    metrics: dict = field(default_factory=dict)       # name -> MetricResult
    inputs: dict = field(default_factory=dict)
    skips: list = field(default_factory=list)         # {"video", "metric", "reason"}
    warnings: list = field(default_factory=list)
    per_video: dict = field(default_factory=dict)

    def add(self, result: MetricResult) -> None:
        self.metrics[result.name] = result

    def skip(self, video: str, metric: str, reason: str) -> None:
        self.skips.append({"video": video, "metric": metric, "reason": reason})

    def value(self, name: str):
        r = self.metrics.get(name)
        return None if r is None else r.value

    def to_dict(self) -> dict:
        from emo_core import __version__

        counts = {}
        for s in self.skips:
            counts[s["metric"]] = counts.get(s["metric"], 0) + 1
        return {"emo_core_version": __version__, "inputs": self.inputs,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "skipped": {"count_by_metric": counts, "items": self.skips},
                "warnings": self.warnings, "per_video": _clean(self.per_video)}

    def save_json(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False))
        return path

    def format_table(self) -> str:
        """One line per metric (name, value, counts and secondary numbers), then its protocol
        (or, when skipped, the full reason) indented below it; skips and warnings at the end."""
        lines = [f"{'metric':<18}{'value':>12}  details", "-" * 78]
        for name, r in self.metrics.items():
            details = ", ".join(f"{k}={_fmt(v)}" for k, v in {**r.extra, **r.counts}.items()
                                if not isinstance(v, (dict, list)))
            value = "skipped" if r.value is None else _fmt(r.value)
            lines.append(f"{name:<18}{value:>12}  {details}")
            if r.value is None and r.skipped_reason:
                lines.append(f"{'':<18}{'':>12}  reason: {r.skipped_reason}")
            if r.protocol:
                lines.append(f"{'':<18}{'':>12}  protocol: " + "; ".join(f"{k}: {v}" for k, v in r.protocol.items()))
        if self.skips:
            lines += ["", f"skipped ({len(self.skips)}):"]
            lines += [f"  {s['metric']}: {s['video']}: {s['reason']}" for s in self.skips]
        if self.warnings:
            lines += ["", "warnings:"] + [f"  {w}" for w in self.warnings]
        return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else (f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}")
    return str(v)
