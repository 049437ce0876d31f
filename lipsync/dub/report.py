"""Results of a dub run: per-item records, the manifest, the JSON report and the human summary.

    <output_root>/_manifest.json            legacy {"format": 1, "items": {id: entry}}: finished outputs, the
                                             input key each was made from, its frames, size and sha256
                                             (a re-run skips an item whose file still matches them);
                                             read, no longer written: runs write one record per item
                                             (lipsync.dub.manifest, _manifest/<id>.json)
    <output_root>/_reports/<timestamp>.json  one per run: settings, timings, every item's status
                                             (and <timestamp>-progress.json while it runs,
                                             lipsync.dub.progress)
    <output_root>/_reports/previews/<id>.png a few frames of each dubbed item with the painted crop
                                             enlarged (lipsync.render.preview; DubConfig.preview)

`write_manifest` remains for tools and tests that build a legacy manifest.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lipsync.io import storage

MANIFEST_FILE = "_manifest.json"
REPORTS_DIR = "_reports"
PREVIEWS_DIR = "previews"  # under REPORTS_DIR
MANIFEST_FORMAT = 1
STATUSES = ("ok", "failed", "skipped")
SUMMARY_MAX_FAILURES = 10  # failed items listed in the summary (all are in the JSON report)


@dataclass
class ItemResult:
    """One catalog row's outcome (the report's per-item record)."""

    id: str
    status: str  # ok | failed | skipped
    output: str
    frames: int = 0
    seconds: float = 0.0  # wall time from planning start to publish (ok), or to the failure
    error: str | None = None
    row: int = 0
    segments_rendered: int = 0
    segments_reused: int = 0
    warning: str | None = None  # e.g. the character looks undertrained (lipsync.bundle.undertrained_warning)
    preview: str | None = None  # URI of the item's preview PNG (preview_uri; DubConfig.preview)
    mouth: dict | None = None  # mouth aperture of the dub vs the footage (DubConfig.mouth_stats; lipsync.eval.aperture)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


def one_line(error: BaseException) -> str:
    """An exception as one line: InputErrors are already user-facing, others get their type."""
    from lipsync.errors import InputError

    text = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
    return " ".join(text.split()) or type(error).__name__


# ---------------------------------------------------------------------------------------------
# manifest


def manifest_uri(output_root: str) -> str:
    return storage.join(output_root, MANIFEST_FILE)


def read_manifest(output_root: str) -> dict[str, dict[str, Any]]:
    """id -> entry of the finished items; empty when there is no manifest yet.

    InputError(manifest URI, reason) when it cannot be read or is not a manifest of this
    format (corrupt JSON, other content): one line, before any work, since a run that ignored
    it would re-render (or overwrite) every finished item.
    """
    import json

    from lipsync.errors import InputError

    uri = manifest_uri(output_root)
    fix = "move it aside to start over, or restore it"
    with storage.as_input_error(uri):
        if not storage.exists(uri):
            return {}
        raw = storage.read_bytes(uri)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise InputError(uri, f"manifest is corrupt (not JSON: {' '.join(str(exc).split())[:80]}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("items"), dict):
        raise InputError(uri, f"not a manifest of format {MANIFEST_FORMAT}; {fix}")
    bad = [k for k, v in data["items"].items() if not isinstance(v, dict)]
    if bad:
        raise InputError(uri, f"manifest is corrupt (entry {bad[0]!r} is not an object); {fix}")
    return data["items"]


def manifest_entry(key: dict[str, Any], output: str, frames: int, size: int | None = None,
                   sha256: str | None = None) -> dict[str, Any]:
    """What the manifest (and an item's output.json) records of a published output."""
    entry: dict[str, Any] = {"key": key, "output": output, "frames": frames}
    if size is not None and sha256:
        entry.update(size=size, sha256=sha256)
    entry["finished_at"] = _now_iso()
    return entry


def write_manifest(output_root: str, items: dict[str, dict[str, Any]]) -> None:
    """Replace the manifest (one atomic write; readers see the old or the new one)."""
    storage.write_json(manifest_uri(output_root), {"format": MANIFEST_FORMAT, "items": items})


# ---------------------------------------------------------------------------------------------
# progress


@dataclass
class Progress:
    """Counters the driver updates as results arrive (items and frames)."""

    items_total: int
    frames_total: int = 0
    items_ok: int = 0
    items_failed: int = 0
    items_skipped: int = 0
    frames_done: int = 0  # frames of rendered (or reused) segments
    started: float = field(default_factory=time.monotonic)

    @property
    def items_done(self) -> int:
        return self.items_ok + self.items_failed + self.items_skipped

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def frames_per_second(self) -> float:
        return self.frames_done / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        return (f"items {self.items_done}/{self.items_total} (ok {self.items_ok}, failed {self.items_failed}, "
                f"skipped {self.items_skipped}); frames {self.frames_done}/{self.frames_total}; "
                f"{self.frames_per_second:.1f} frames/s; {self.elapsed:.0f} s")


# ---------------------------------------------------------------------------------------------
# the report


def build_report(*, items: list[ItemResult], run: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """The JSON report: run settings, totals, stage timings and one record per item (catalog order)."""
    counts = {s: sum(1 for r in items if r.status == s) for s in STATUSES}
    frames = sum(r.frames for r in items if r.status == "ok")
    wall = timings.get("total_s", 0.0)
    return {
        "run": run,
        "counts": counts,
        "frames_rendered": frames,
        "frames_per_second": frames / wall if wall > 0 else 0.0,
        "timings": timings,
        "items": [asdict(r) for r in sorted(items, key=lambda r: r.row)],
    }


def report_uri(output_root: str, started_at: datetime) -> str:
    """<output_root>/_reports/<UTC timestamp>.json (sortable, no ':' so it is a safe file name)."""
    return storage.join(output_root, REPORTS_DIR, started_at.strftime("%Y%m%dT%H%M%S.%fZ") + ".json")


def preview_uri(output_root: str, item_id: str) -> str:
    """<output_root>/_reports/previews/<id>.png: the newest preview of an item (ids are safe names)."""
    return storage.join(output_root, REPORTS_DIR, PREVIEWS_DIR, f"{item_id}.png")


def write_report(uri: str, report: dict[str, Any]) -> str:
    storage.write_json(uri, report)
    return uri


def summary(report: dict[str, Any], uri: str | None = None) -> Group:
    """One screen for humans: totals, speed, stage shares, and the first failures with reasons."""
    counts, timings = report["counts"], report["timings"]
    totals = Table(title="dub run", show_header=False, title_justify="left")
    totals.add_column(style="bold")
    totals.add_column()
    totals.add_row("items", f"{sum(counts.values())}: [green]{counts['ok']} ok[/], [red]{counts['failed']} failed[/], "
                            f"[yellow]{counts['skipped']} skipped[/]")
    totals.add_row("frames", f"{report['frames_rendered']} ({report['frames_per_second']:.1f} frames/s over the run)")
    total = timings.get("total_s", 0.0)
    for stage in ("plan_s", "render_s", "stitch_s"):
        if stage in timings:
            share = 100.0 * timings[stage] / total if total > 0 else math.nan
            totals.add_row(stage[:-2], f"{timings[stage]:.1f} s ({share:.0f}% of {total:.1f} s wall)")
    if uri:
        totals.add_row("report", uri)
    parts: list[Any] = [totals]
    for warning in sorted({r["warning"] for r in report["items"] if r.get("warning")}):
        parts.append(Text(f"warning: {warning}", style="yellow"))
    failed = [r for r in report["items"] if r["status"] == "failed"]
    if failed:
        table = Table(title=f"failed items ({len(failed)})", title_justify="left")
        table.add_column("row", justify="right")
        table.add_column("id")
        table.add_column("reason", overflow="fold")
        for r in failed[:SUMMARY_MAX_FAILURES]:
            table.add_row(str(r["row"]), r["id"], r["error"] or "")
        parts.append(table)
        if len(failed) > SUMMARY_MAX_FAILURES:
            parts.append(Text(f"... and {len(failed) - SUMMARY_MAX_FAILURES} more in the report"))
    return Group(*parts)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()
