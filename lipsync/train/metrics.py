"""Training metrics: an in-memory history written as metrics.jsonl and a loss-curve PNG.

The history travels inside every checkpoint, so a resumed run continues the same file (records
after the checkpoint it resumes from are dropped: they are recomputed identically).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"

# Which record keys the curve shows, per stage: (key, label).
CURVES: dict[str, tuple[tuple[str, str], ...]] = {
    "syncnet": (("loss", "train BCE"), ("val_loss", "val BCE"), ("val_acc", "val accuracy")),
    "generator": (("loss", "train loss"), ("l1", "train L1"), ("val_l1", "val L1"), ("val_loss", "val loss")),
}


class MetricsLog:
    def __init__(self, records: list[dict[str, Any]] | None = None):
        self.records: list[dict[str, Any]] = list(records or [])

    def add(self, record: dict[str, Any]) -> None:
        self.records.append({k: _plain(v) for k, v in record.items()})

    def truncate(self, global_step: int) -> None:
        """Forget records after `global_step` (used when resuming from that step)."""
        self.records = [r for r in self.records if r.get("step", 0) <= global_step]

    def last(self, stage: str, key: str) -> Any:
        for r in reversed(self.records):
            if r.get("stage") == stage and key in r:
                return r[key]
        return None

    def to_jsonl(self) -> str:
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)

    @classmethod
    def from_jsonl(cls, text: str) -> "MetricsLog":
        return cls([json.loads(line) for line in text.splitlines() if line.strip()])

    def write(self, directory: Path, plot: bool = True) -> None:
        """metrics.jsonl (and loss_curve.png) into `directory`, each replaced whole."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _replace_text(directory / METRICS_FILE, self.to_jsonl())
        if plot:
            self.plot(directory / CURVE_FILE)

    def plot(self, path: Path) -> None:
        import matplotlib  # lazy: a heavy import only the loss-curve PNG needs

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, (stage, curves) in zip(axes, CURVES.items()):
            for key, label in curves:
                pts = [(r["stage_step"], r[key]) for r in self.records
                       if r.get("stage") == stage and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="." if len(pts) < 50 else None, label=label)
            ax.set_title(f"stage: {stage}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        tmp.replace(path)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6)
    return v


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
