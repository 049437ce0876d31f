"""`--dry-run`: plan a catalog without rendering, and estimate the render time (no Ray).

Every row is validated as a real run would (catalog rules, whose file is at the output, the
audio's bytes hashed for the skip decision, the character bundle loaded), but the audio is not
decoded: its length comes from the file header (plan.probe_frames), and no features, work
files, manifest records or reports are written. The frame count of the items to render equals
the real run's (tests/test_dub_scale.py). The estimate divides those frames by a measured
frames/s (lipsync.dub.progress.measured_fps says which).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lipsync.config import DubConfig
from lipsync.dub import manifest
from lipsync.dub import plan as P
from lipsync.dub.catalog import CatalogItem, read_catalog
from lipsync.dub.progress import measured_fps
from lipsync.dub.report import one_line, read_manifest

DRY_RUN_THREADS = 8  # items inspected at once (I/O bound: storage reads, one ffmpeg probe each)


@dataclass
class DryRun:
    """What a run of the catalog would do."""

    items: int = 0
    to_render: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)  # {"id", "row", "error"}
    frames: int = 0  # frames of the items to render
    shards: int = 0
    fps: float = 0.0
    fps_source: str = ""
    warnings: list[str] = field(default_factory=list)  # distinct, e.g. an undertrained character

    @property
    def estimated_render_s(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0

    def lines(self) -> list[str]:
        out = [(f"items {self.items}: {self.to_render} to render, {self.skipped} skipped (already dubbed), "
                f"{len(self.failed)} would fail"),
               f"frames to render {self.frames} in {self.shards} shards",
               (f"estimated render time {self.estimated_render_s:.0f} s at {self.fps:.2f} frames/s "
                f"({self.fps_source})")]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"  row {f['row']} {f['id']}: {f['error']}" for f in self.failed[:20]]
        if len(self.failed) > 20:
            out.append(f"  ... and {len(self.failed) - 20} more")
        return out


class _LockedCache(P.LruCache):
    """An LruCache shared by the inspection threads (one load per character)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def get(self, uri: str) -> Any:
        with self._lock:
            return super().get(uri)


def estimate_device(device: str) -> str:
    """cpu | cuda for the frames/s figure: as configured; "auto" is cuda when this machine has one
    (a dry run starts no Ray, so it cannot ask the cluster)."""
    if device != "auto":
        return "cuda" if device.startswith("cuda") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def dry_run(catalog_uri: str, output_root: str, cfg: DubConfig, *, device: str | None = None,
            overwrite: bool = False) -> DryRun:
    """Plan every row of the catalog as a real run would, without rendering or writing anything.

    Raises InputError for a bad catalog or manifest, as run_dub does. `device` chooses the
    frames/s figure (cpu | cuda; default from cfg.device, see estimate_device).
    """
    from lipsync.bundle import load_character

    device = estimate_device(device or cfg.device)

    items = read_catalog(catalog_uri, output_root, allow_outputs_outside_root=cfg.allow_outputs_outside_root)
    legacy = read_manifest(output_root)
    run = P.run_key(cfg)
    characters = _LockedCache(lambda uri: load_character(uri, device="cpu"), max(cfg.character_cache, 1))

    def inspect(item: CatalogItem) -> P.ItemPlan | dict[str, Any]:
        try:
            entry = manifest.read_entry(output_root, item.id, legacy.get(item.id))
            return P.plan_item(item, output_root=output_root, run=run, cfg=cfg, characters=characters,
                               manifest_entry=entry, overwrite=overwrite, dry_run=True)
        except Exception as e:  # noqa: BLE001 - an item's problem, listed like a real run's failure
            return {"id": item.id, "row": item.row, "error": one_line(e)}

    result = DryRun(items=len(items))
    with ThreadPoolExecutor(DRY_RUN_THREADS) as pool:
        for outcome in pool.map(inspect, items):
            if isinstance(outcome, dict):
                result.failed.append(outcome)
                continue
            if outcome.warning and outcome.warning not in result.warnings:
                result.warnings.append(outcome.warning)
            if outcome.status == "skipped":
                result.skipped += 1
            else:
                result.to_render += 1
                result.frames += outcome.n_frames
                result.shards += len(outcome.shards)
    result.fps, result.fps_source = measured_fps(output_root, cfg, device)
    return result
