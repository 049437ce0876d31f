"""Training metrics: an in-memory history written as metrics.jsonl and a loss-curve PNG.

The history travels inside every checkpoint, so a resumed run continues the same file (records
after the checkpoint it resumes from are dropped: they are recomputed identically), and into the
bundle (metrics.jsonl and loss_curve.png beside bundle.json). `report_values` is what a run
context reports at every log step (Ray Train: ray.train.report), `report_line` its job-log line.
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


BASELINE_KEY = "val_l1_reference_copy"  # drawn as a horizontal line on the generator panel
_BOOKKEEPING = ("stage", "step", "stage_step", "time")


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
        fig = curve_figure(self.records)  # selects the Agg backend before pyplot is imported here
        import matplotlib.pyplot as plt

        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        tmp.replace(path)


def curve_figure(records: list[dict[str, Any]]):
    """The loss-curve figure: one panel per stage (CURVES), x = the stage's own step; the generator
    panel also draws the held-out L1 of the reference-copy baseline as a dashed horizontal line."""
    import matplotlib  # lazy: a heavy import only the loss-curve PNG needs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
    for ax, (stage, curves) in zip(axes, CURVES.items()):
        for key, label in curves:
            pts = [(r["stage_step"], r[key]) for r in records if r.get("stage") == stage and _finite(r.get(key))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="." if len(pts) < 50 else None, label=label)
        baseline = MetricsLog(records).last(stage, BASELINE_KEY)
        if stage == "generator" and _finite(baseline):
            ax.axhline(baseline, color="grey", linestyle="--", label="val L1 of copying the reference")
        ax.set_title(f"stage: {stage}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return fig


def report_values(new: list[dict[str, Any]], log: MetricsLog) -> dict[str, Any]:
    """Flat `<stage>/<key>` values for one report: everything logged since the last report (`new`:
    train losses every log_every steps, held-out metrics every val_every) plus the latest held-out
    (`val_*`) value of each stage so far, so every report carries the held-out state of the run."""
    out: dict[str, Any] = {}
    for r in log.records:
        if r.get("stage") in CURVES:
            out.update({f"{r['stage']}/{k}": v for k, v in r.items() if k.startswith("val_")})
    for r in new:
        if r.get("stage") in CURVES:
            out[f"{r['stage']}/stage_step"] = r.get("stage_step")
            out.update({f"{r['stage']}/{k}": v for k, v in r.items() if k not in _BOOKKEEPING})
    return out


def report_line(metrics: dict[str, Any]) -> str:
    """One job-log line for a report: `[train] step 4 (syncnet 2, generator 2): generator loss 0.1234 ...`."""
    head = (f"[train] step {metrics.get('step')} (syncnet {metrics.get('syncnet_step')}, "
            f"generator {metrics.get('generator_step')})")
    parts = []
    for stage in CURVES:
        values = {k.split("/", 1)[1]: v for k, v in metrics.items()
                  if k.startswith(f"{stage}/") and k != f"{stage}/stage_step" and _finite(v)}
        rate = values.pop("steps_per_s", None)
        if values:
            parts.append(f"{stage} " + " ".join(f"{k} {v:.4g}" for k, v in values.items())
                         + (f" ({rate:.2f} steps/s)" if rate is not None else ""))
    return head + (": " + "; ".join(parts) if parts else "")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
