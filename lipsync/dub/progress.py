"""The run's account of itself while it runs, and render-time estimates (pure logic, no Ray).

    <output_root>/_reports/<timestamp>-progress.json   rewritten every progress_record_interval_s:
                                                        counts, frames done, frames/s, ETA, failures so far

The progress record exists so that a run that is killed (driver lost, node preempted) leaves an
account in storage: how far it got and which items had failed. When the final report
(<timestamp>.json) has been written the record is deleted, since the report supersedes it; a
progress record without a report next to it therefore marks an interrupted run.

Estimates: the ETA divides the frames still to render (those of planned items, plus the items
not planned yet at the mean frames per planned item) by the run's frames/s so far. `--dry-run`
uses `measured_fps`: the frames/s of the newest report under the output root for the same
device (a measured end-to-end figure of this cluster and catalog), else the per-device figure in
configs/dub.yaml (estimate_fps_cpu / estimate_fps_cuda, measured in docs/BENCHMARKS.md).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from lipsync.config import DubConfig
from lipsync.dub.report import REPORTS_DIR, Progress
from lipsync.io import storage

PROGRESS_SUFFIX = "-progress.json"
MAX_RECORDED_FAILURES = 100  # failures listed in the progress record (the count is always exact)


def progress_uri(report: str) -> str:
    """The progress record next to a final report URI (…/<stamp>.json -> …/<stamp>-progress.json)."""
    return report[: -len(".json")] + PROGRESS_SUFFIX


def remaining_frames(p: Progress, items_planned: int, items_pending: int) -> float:
    """Frames still to render: planned ones not done, plus unplanned items at the planned mean."""
    mean = p.frames_total / items_planned if items_planned else 0.0
    return max(0.0, p.frames_total - p.frames_done) + mean * items_pending


def eta_seconds(p: Progress, items_planned: int, items_pending: int) -> float | None:
    """Seconds to the end at the run's frames/s so far; None before the first frame."""
    fps = p.frames_per_second
    if fps <= 0:
        return None
    return remaining_frames(p, items_planned, items_pending) / fps


def progress_record(p: Progress, *, run: dict[str, Any], items_planned: int, failures: list[dict[str, Any]],
                    final: bool = False) -> dict[str, Any]:
    """The JSON written to the progress record (see the module docstring)."""
    pending = max(0, p.items_total - items_planned)
    eta = eta_seconds(p, items_planned, pending)
    return {
        "run": run,
        "updated_at": datetime.now(timezone.utc).isoformat(),
        "finished": final,
        "counts": {"total": p.items_total, "planned": items_planned, "ok": p.items_ok, "failed": p.items_failed,
                   "skipped": p.items_skipped, "done": p.items_done},
        "frames_done": p.frames_done,
        "frames_planned": p.frames_total,
        "frames_per_second": p.frames_per_second,
        "elapsed_s": p.elapsed,
        "eta_s": eta,
        "failures_count": len(failures),
        "failures": failures[:MAX_RECORDED_FAILURES],
    }


def write_progress_record(uri: str, record: dict[str, Any]) -> None:
    storage.write_json(uri, record)


def latest_report(output_root: str, device: str | None = None) -> dict[str, Any] | None:
    """The newest final report under the output root (for `device` when given) with frames rendered."""
    reports = storage.join(output_root, REPORTS_DIR)
    try:
        names = [n for n in storage.ls(reports) if n.endswith(".json") and not n.endswith(PROGRESS_SUFFIX)
                 and not n.startswith(".")]
    except FileNotFoundError:
        return None
    for name in reversed(names):  # timestamps sort: newest last
        try:
            report = storage.read_json(storage.join(reports, name))
        except ValueError:
            continue
        if not isinstance(report, dict) or not report.get("frames_rendered"):
            continue
        if device is None or report.get("run", {}).get("device") == device:
            return report
    return None


def configured_fps(cfg: DubConfig, device: str) -> float:
    return cfg.estimate_fps_cuda if device.startswith("cuda") else cfg.estimate_fps_cpu


def measured_fps(output_root: str, cfg: DubConfig, device: str) -> tuple[float, str]:
    """(frames/s, where it came from) for a render-time estimate; see the module docstring."""
    report = latest_report(output_root, device)
    if report is not None and report.get("frames_per_second", 0) > 0:
        return float(report["frames_per_second"]), (f"the last {device} run under the output root "
                                                    f"(started {report['run'].get('started_at', '?')})")
    return configured_fps(cfg, device), f"estimate_fps_{'cuda' if device.startswith('cuda') else 'cpu'} in the config"
