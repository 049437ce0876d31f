"""Batch dubbing on Ray, streamed: one Ray Data pipeline plan -> render, stitch tasks, a report.

    catalog chunks --flat_map(PlanRows, actors)--> one row per shard (or one status row per skipped/failed item)
                 --map_batches(RenderShards, actors)--> one segment per shard (in storage), a row back
    the driver iterates the rows as they stream out; an item's last shard --> stitch (Ray task)
    --> output.mp4 published, _manifest/<id>.json, work prefix deleted
    --> <output_root>/_reports/<timestamp>.json + summary (and <timestamp>-progress.json while running)

Streaming: planning and rendering are two operators of one Ray Data dataset, so the first shard
renders while later items are still planned, with Ray Data's backpressure between them; there
is no global barrier and no scheduler here. Rows carry what the render actor and the stitcher
need (item id, shard range, n_shards, the plan as JSON), so the driver keeps only the items in
flight (shards still out, stitches queued or running); a finished item leaves memory: its
result goes to a spool file for the final report, its manifest record to storage. Stitches in
flight are bounded (max_concurrent_stitches); when more items wait for a stitch than a few
times that, the driver stops reading rows, and Ray Data's backpressure holds the pipeline.

Render stage: Ray Data `map_batches` with a callable class, i.e. a pool of actors that each load
a model replica once (`__init__`) and render one shard per call (`batch_size=1`: a shard is
already ~250 frames of work; every row is its own block, see `_one_row_blocks`). Ray Data gives
the pool its scheduling, autoscaling between `(min, max)` actors, backpressure and actor
restarts. Plan tasks and actors share the cluster: where a fixed pool would leave no CPU for a
plan task, the pool starts smaller and grows to `actors` (`actor_pool`).

Failures are per item: a bad audio or bundle fails that item in planning (a status row); a
shard that raises is reported as a row with its error (the actor catches it, so one bad item
cannot fail the dataset); the item then fails and its finished segments stay in `_work/` to be
reused by the next run of that item. A failed stitch keeps them too: segments are deleted only
after a verified publish has its manifest record. Transient storage errors (a dropped
connection, a timeout, S3 SlowDown/5xx) are retried with backoff inside the plan task, the render
actor and the stitch task (lipsync.dub.retry) before they fail the item; permanent ones (missing
file, refused credentials, bad media) fail it at once.

Without an address (and outside a Ray job) a private local Ray is started, bound to 127.0.0.1
with no dashboard: nothing of it is reachable from the network (`init_ray`).

Everything here is glue: the work is done by lipsync.dub (plan, stitch, manifest, progress,
report) and lipsync.render (render_segment), which do not import Ray. The driver never imports
torch: the model code (lipsync.bundle, lipsync.render, lipsync.eval.aperture) is imported inside
what runs on the workers (PlanRows, RenderShards, the stitch task).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import numpy as np
import ray

from lipsync.config import DubConfig, to_dict
from lipsync.dub import manifest
from lipsync.dub import plan as P
from lipsync.dub.catalog import CatalogItem, read_catalog
from lipsync.dub.progress import progress_record, progress_uri, write_progress_record
from lipsync.dub.report import (
    ItemResult,
    Progress,
    build_report,
    manifest_entry,
    one_line,
    preview_uri,
    read_manifest,
    report_uri,
    write_report,
)
from lipsync.dub.retry import call_with_retries
from lipsync.dub.stitch import StitchResult, stitch_segments
from lipsync.errors import InputError, MediaError
from lipsync.io import media, storage
from lipsync.io.storage import json_safe

EXIT_OK = 0
EXIT_ITEMS_FAILED = 3  # the run finished; the report says which items failed
LOCAL_RAY_IP = "127.0.0.1"  # the embedded Ray listens here only
PLAN_BLOCKS_MAX = 200  # catalog chunks (one row, one block each); larger catalogs put several items in a chunk
# (from_items: 1,000 blocks of 100,000 rows took 1.2-2.2 s before the first shard, 200 blocks 0.4 s; docs/BENCHMARKS.md)
PLAN_ACTORS_MAX = 16  # planning actors at most (each holds plan_cpus and its loaded characters)
STITCH_BACKLOG_PER_SLOT = 4  # items waiting for a stitch, per stitch slot, before the driver stops reading
EARLY_LOAD_ROWS = 16  # catalog rows whose characters a render actor loads in its constructor

logger = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None]


# ---------------------------------------------------------------------------------------------
# plan (Ray task)

_plan_characters: P.LruCache | None = None  # per worker process, reused by later plan tasks


def _plan_character_cache(capacity: int) -> P.LruCache:
    global _plan_characters
    if _plan_characters is None:
        from lipsync.bundle import load_character

        _plan_characters = P.LruCache(lambda uri: load_character(uri, device="cpu"), capacity)
    return _plan_characters


def plan_one(item: CatalogItem, output_root: str, run: str, cfg: DubConfig,
             entry: dict[str, Any] | None, overwrite: bool = False) -> P.ItemPlan | ItemResult:
    """Plan an item on a worker; a failure comes back as a failed ItemResult (one-line reason).

    Transient storage errors are retried (with backoff) before the item fails.
    """
    started = time.perf_counter()
    try:
        return call_with_retries(
            lambda: P.plan_item(item, output_root=output_root, run=run, cfg=cfg,
                                characters=_plan_character_cache(cfg.character_cache), manifest_entry=entry,
                                overwrite=overwrite),
            what=f"plan {item.id}")
    except Exception as e:  # noqa: BLE001 - any failure of one item is that item's, not the run's
        return ItemResult(item.id, "failed", item.output, error=one_line(e), row=item.row,
                          seconds=time.perf_counter() - started)


STR_COLUMNS = ("item_id", "kind", "character", "feats", "rest", "segment", "plan", "result", "error")


def catalog_rows(items: list[CatalogItem], legacy: dict[str, dict[str, Any]], chunks: int) -> list[dict[str, Any]]:
    """The pipeline's input: the catalog in `chunks` contiguous chunks, one row each: its items
    (pickled: Ray's own serialisation between our driver and our workers) and their entries in a
    legacy `_manifest.json`, if any.

    Chunks rather than a row per item: at 100,000 items a row per item (JSON) and from_items of
    those rows took 0.9 s before the first shard, the chunks 0.2 s (docs/BENCHMARKS.md).
    """
    size = max(1, -(-len(items) // max(1, chunks)))
    rows = []
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        old = {i.id: legacy[i.id] for i in chunk if i.id in legacy}
        rows.append({"items": pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL), "legacy": json.dumps(old)})
    return rows


class PlanRows:
    """Ray Data flat_map callable (a pool of planning actors): `plan_rows` for each item of a
    catalog chunk, yielded item by item (the first item's shards go on while the chunk's later
    items are planned).

    Actors rather than tasks: a planning process keeps its loaded characters (the audio
    encoder) from item to item. As tasks, Ray Data's backpressure leaves a planning worker idle
    whenever the render actors are behind, Ray kills idle workers beyond one per CPU, and every
    later plan task paid a new process, its imports and the character load (measured: 26
    worker processes for 100 items, 2x the planning time; docs/BENCHMARKS.md).
    """

    def __init__(self, output_root: str, run: str, cfg: DubConfig, overwrite: bool):
        import torch

        self.output_root, self.run, self.cfg, self.overwrite = output_root, run, cfg, overwrite
        torch.set_num_threads(max(1, int(cfg.plan_cpus)))

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        legacy = json.loads(row["legacy"])
        for item in pickle.loads(row["items"]):
            yield from plan_rows(item, legacy.get(item.id), self.output_root, self.run, self.cfg, self.overwrite)


def plan_rows(item: CatalogItem, legacy: dict[str, Any] | None, output_root: str, run: str, cfg: DubConfig,
              overwrite: bool) -> list[dict[str, Any]]:
    """Plan one catalog item into its shard rows, or one status row.

    The item's manifest record is read here (one small read per item, on a worker): the
    driver never holds the manifest. `legacy`: the item's entry in a legacy `_manifest.json`.
    """
    try:
        entry = call_with_retries(lambda: manifest.read_entry(output_root, item.id, legacy),
                                  what=f"read manifest record {item.id}")
    except Exception as e:  # noqa: BLE001 - the item's failure
        return [status_row(ItemResult(item.id, "failed", item.output, error=one_line(e), row=item.row))]
    outcome = plan_one(item, output_root, run, cfg, entry, overwrite)
    if isinstance(outcome, ItemResult):
        return [status_row(outcome)]
    if outcome.status == "skipped":
        return [status_row(ItemResult(item.id, "skipped", item.output, frames=outcome.n_frames, row=item.row,
                                      seconds=outcome.seconds, warning=outcome.warning), outcome)]
    return shard_rows([outcome], cfg)


def status_row(result: ItemResult, plan: P.ItemPlan | None = None) -> dict[str, Any]:
    """A row for an item that renders nothing (failed or skipped); it passes the actors untouched."""
    return {"item_id": result.id, "kind": result.status, "shard_index": 0, "n_shards": 0, "frame_start": 0,
            "frame_end": 0, "character": "", "feats": "", "rest": "", "segment": "", "crf": 0, "start_frame": 0,
            "plan": P.plan_to_json(plan) if plan is not None else "", "result": json.dumps(dataclasses.asdict(result))}


# ---------------------------------------------------------------------------------------------
# render (Ray Data callable class = actor pool)


class RenderShards:
    """A model replica: renders shard rows into segments in storage (reusing ones that exist).

    A catalog may name several characters, so the actor cannot know in `__init__` which to load;
    it loads each on first use and keeps the last `character_cache` of them (and the last
    `feature_cache` items' audio features and, in their own cache of the same size, rest weights):
    a model is loaded once per actor, not per shard.
    """

    def __init__(self, cfg: DubConfig, device: str, warm: tuple[str, ...] = ()):
        import torch

        from lipsync.bundle import load_character
        from lipsync.render.paint import prepare_for_inference, warm_up
        from lipsync.runtime import resolve_device

        self.cfg = cfg
        self.device = resolve_device(device)
        # Ray exports OMP_NUM_THREADS = num_cpus, but torch in a Ray worker starts with 1 thread
        # (measured with Ray 2.60): set it, so an actor uses the CPUs it reserved.
        torch.set_num_threads(cfg.render.torch_threads or max(1, int(cfg.actor_cpus)))

        def load(uri: str):
            character = load_character(uri, device=self.device)
            prepare_for_inference(character, cfg.render)
            warm_up(character, cfg.render)
            return character

        self.characters = P.LruCache(load, cfg.character_cache)
        self.features = P.LruCache(P.load_array, cfg.feature_cache)
        self.rest_weights = P.LruCache(P.load_array, cfg.feature_cache)  # apart: they must not evict features
        self._load_early(warm)

    def _load_early(self, uris: tuple[str, ...]) -> None:
        """Load (and warm up) the characters of the catalog's first rows now, while those rows are
        still being planned, so the first shard does not wait for them. A character that does not
        load is left for its items to report (plan fails them with the reason)."""
        for uri in uris[:self.cfg.character_cache]:
            try:
                self.characters.get(uri)
            except Exception as e:  # noqa: BLE001 - reported per item, not by the actor
                logger.debug("character %s not loaded early: %s", uri, one_line(e))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["item_id"]))]
        results = [self.render_row(row) if str(row.get("kind", "shard")) == "shard" else passed_through(row)
                   for row in rows]
        return {k: np.array([r[k] for r in results], dtype=object if k in STR_COLUMNS else None)
                for k in results[0]}

    def render_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Render one shard into its segment URI; errors come back in the row, not as exceptions.

        A segment left by an earlier run is reused only when it holds the shard's frame count
        (a failed stitch keeps its segments). Transient storage errors are retried first.
        """
        from lipsync.render import render_segment

        started = time.perf_counter()
        a, b = int(row["frame_start"]), int(row["frame_end"])
        out = {**row_passport(row), "frames": b - a, "reused": False, "seconds": 0.0, "error": ""}
        segment = str(row["segment"])

        def render() -> bool:
            if segment_is_complete(segment, b - a):  # rendered by an earlier, interrupted run
                return True
            character = self.characters.get(str(row["character"]))
            feats = self.features.get(str(row["feats"]))
            rest = self.rest_weights.get(str(row["rest"])) if str(row.get("rest", "")) else None
            with storage.atomic_file(segment) as tmp:
                render_segment(character, feats, a, b, tmp, cfg=self.cfg.render, crf=int(row["crf"]),
                               start_frame=int(row["start_frame"]), rest=rest)
            return False

        try:
            out["reused"] = call_with_retries(render, what=f"render {out['item_id']} shard {out['shard_index']}")
        except Exception as e:  # noqa: BLE001 - reported per item by the driver
            out["error"] = f"shard {out['shard_index']} [{a}, {b}): {one_line(e)}"
        out["seconds"] = time.perf_counter() - started
        return out


def row_passport(row: dict[str, Any]) -> dict[str, Any]:
    """The fields of an input row that the driver needs back with the actor's result."""
    return {"item_id": str(row["item_id"]), "kind": str(row.get("kind", "shard")),
            "shard_index": int(row["shard_index"]), "n_shards": int(row.get("n_shards", 0)),
            "plan": str(row.get("plan", "")), "result": str(row.get("result", ""))}


def passed_through(row: dict[str, Any]) -> dict[str, Any]:
    return {**row_passport(row), "frames": 0, "reused": False, "seconds": 0.0, "error": ""}


def segment_is_complete(uri: str, frames: int) -> bool:
    """A segment exists at `uri` and holds `frames` video frames (a truncated or corrupt one does not)."""
    if not storage.exists(uri):
        return False
    try:
        with storage.local_copy(uri) as local:
            return media.count_video_frames(local) == frames
    except MediaError:
        return False


def shard_rows(plans: list[P.ItemPlan], cfg: DubConfig) -> list[dict[str, Any]]:
    """One Ray Data row per shard, carrying what an actor needs to render it and what the
    driver needs to stitch the item (the plan as JSON, the shard count)."""
    rows = []
    for p in plans:
        plan_json = P.plan_to_json(p)
        for s in p.shards:
            rows.append({"item_id": s.item_id, "kind": "shard", "shard_index": s.index, "n_shards": len(p.shards),
                         "frame_start": s.frame_start, "frame_end": s.frame_end, "character": p.item.character,
                         "feats": p.feats, "rest": p.rest, "segment": P.segment_uri(p.work, s.index),
                         "crf": P.item_crf(p.item, cfg.render), "start_frame": p.item.start_frame,
                         "plan": plan_json, "result": ""})
    return rows


def dub_dataset(items: list[CatalogItem], legacy: dict[str, dict[str, Any]], output_root: str, run: str,
                cfg: DubConfig, device: str, overwrite: bool) -> ray.data.Dataset:
    """Catalog chunks -> the PlanRows actor pool (flat_map) -> the RenderShards actor pool, streamed."""
    rows = catalog_rows(items, legacy, PLAN_BLOCKS_MAX)
    blocks = len(rows)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    render_pool = actor_pool(cfg, len(items), cpus)
    planned = ray.data.from_items(rows, override_num_blocks=blocks).flat_map(
        PlanRows, fn_constructor_kwargs={"output_root": output_root, "run": run, "cfg": cfg, "overwrite": overwrite},
        compute=plan_pool(cfg, blocks, cpus - render_pool.min_size * cfg.actor_cpus), num_cpus=cfg.plan_cpus)
    return planned.map_batches(
        RenderShards, fn_constructor_kwargs={"cfg": cfg, "device": device, "warm": first_characters(items, cfg)},
        batch_size=1,
        compute=render_pool, **actor_resources(cfg, device))


def stream_rows(ds: ray.data.Dataset) -> Iterator[dict[str, Any]]:
    """The dataset's rows as they are produced: no batch prefetched ahead.

    `iter_rows` prefetches a batch, so the driver saw each shard row only once the next one was
    rendered too (the first shard 0.4-0.6 s late here, docs/BENCHMARKS.md).
    """
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        columns = list(batch.items())
        for i in range(len(columns[0][1]) if columns else 0):
            yield {name: values[i] for name, values in columns}


def first_characters(items: list[CatalogItem], cfg: DubConfig, rows: int = EARLY_LOAD_ROWS) -> tuple[str, ...]:
    """The distinct characters of the catalog's first `rows` rows, in order (at most character_cache):
    what a render actor loads before its first shard arrives."""
    return tuple(dict.fromkeys(i.character for i in items[:rows]))[:cfg.character_cache]


def plan_pool(cfg: DubConfig, blocks: int, free_cpus: float) -> ray.data.ActorPoolStrategy:
    """1..k planning actors: k as many as the CPUs the render pool leaves (at most PLAN_ACTORS_MAX
    and one per block); Ray Data adds them while rows wait and CPUs are free, and ends them when
    planning is done (then the render pool may grow into their CPUs)."""
    room = int(free_cpus // cfg.plan_cpus) if cfg.plan_cpus > 0 else PLAN_ACTORS_MAX
    high = max(1, min(room, PLAN_ACTORS_MAX, blocks))
    if high > 1:
        return ray.data.ActorPoolStrategy(min_size=1, max_size=high)
    return ray.data.ActorPoolStrategy(size=1)


@contextlib.contextmanager
def _one_row_blocks():
    """Every block of the run's datasets holds one row (Ray Data's target_max_block_size).

    A plan task yields all shards of an item (of several items, for large catalogs) at once;
    in one block they would go to one actor call after another. Blocks of one row let every
    shard go to the next free actor, and let the first shard go before the task has planned
    the rest of its block.
    """
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.target_max_block_size, ctx.enable_progress_bars)
    ctx.target_max_block_size, ctx.enable_progress_bars = 1, False
    try:
        yield
    finally:
        ctx.target_max_block_size, ctx.enable_progress_bars = saved


def actor_pool(cfg: DubConfig, n_items: int, cluster_cpus: float = math.inf) -> ray.data.ActorPoolStrategy:
    """A fixed pool of `actors`, or min..max when max_actors is larger; never more than items.

    Plan tasks run next to the actors: when `actors` actors would leave less than one plan
    task's CPUs free on the cluster, the pool starts with as many as leave room for one and
    grows to `actors` (the planning would wait for CPUs that the idle actors hold forever).
    One shard in flight per actor: a shard is long, so queueing a second one on a busy actor
    would only leave another actor idle at the end of the run.
    """
    n = max(1, n_items)
    low = min(cfg.actors, n)
    high = min(max(cfg.max_actors, cfg.actors), n)
    if cfg.plan_cpus > 0 and low * cfg.actor_cpus + cfg.plan_cpus > cluster_cpus:
        low = max(1, min(low, int((cluster_cpus - cfg.plan_cpus) // cfg.actor_cpus)))
    if high > low:
        return ray.data.ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=1)
    return ray.data.ActorPoolStrategy(size=low, max_tasks_in_flight_per_actor=1)


def actor_resources(cfg: DubConfig, device: str) -> dict[str, float]:
    resources = {"num_cpus": cfg.actor_cpus}
    if device.startswith("cuda"):
        resources["num_gpus"] = cfg.actor_gpus
    return resources


# ---------------------------------------------------------------------------------------------
# stitch (Ray task)


@dataclass(frozen=True)
class StitchFailure:
    """A stitch that did not publish: the one-line reason (the segments are kept for a re-run)."""

    error: str
    seconds: float = 0.0


def write_item_preview(plan: P.ItemPlan, result: StitchResult, preview: str) -> StitchResult:
    """The item's preview PNG (lipsync.render.preview) from its published output; a preview that
    cannot be made is logged and left out (the dub itself succeeded)."""
    from lipsync.render.preview import template_boxes, write_video_preview

    try:
        write_video_preview(result.output, preview, template_boxes(plan.item.character), n_frames=result.frames,
                            start_frame=plan.item.start_frame, temp_dir=plan.work)
    except Exception as e:  # noqa: BLE001 - optional output
        logger.warning("no preview for %s: %s", plan.item.id, one_line(e))
        return result
    return dataclasses.replace(result, preview=preview)


def stitch_one(plan: P.ItemPlan, cfg: DubConfig, preview: str | None = None) -> StitchResult | StitchFailure:
    """Join an item's segments with its audio and publish; the work prefix is left to the driver.

    Just before the publish, `<work>/output.json` records the file (key, size, sha256), so that
    a driver killed before its manifest write leaves a re-run able to tell the file is this
    job's. The driver deletes the work prefix once the manifest has the entry; a failure keeps
    the segments (a re-run reuses those with the right frame count). A file that appeared at the
    output since planning is not replaced unless overwrite allows it.
    """
    started = time.perf_counter()
    r = cfg.render
    settings = media.EncodeSettings(crf=P.item_crf(plan.item, r), preset=r.x264_preset, pix_fmt=r.pix_fmt,
                                    audio_bitrate=r.audio_bitrate)
    segments = [P.segment_uri(plan.work, s.index) for s in plan.shards]

    def record(result: StitchResult) -> None:
        storage.write_json(storage.join(plan.work, P.PUBLISH_RECORD_FILE),
                           manifest_entry(plan.key, result.output, result.frames, result.size, result.sha256))

    def stitch() -> StitchResult:
        if plan.existing == "absent" and not plan.overwrite and storage.exists(plan.item.output):
            raise P.refuse_output(plan.item.output, "foreign")  # appeared while the item rendered
        return stitch_segments(segments, plan.item.audio, plan.item.output, n_frames=plan.n_frames,
                               audio_duration=plan.duration, settings=settings, before_publish=record,
                               temp_dir=plan.work)

    try:
        result = call_with_retries(stitch, what=f"stitch {plan.item.id}")
    except Exception as e:  # noqa: BLE001 - the item's failure, reported by the driver in one line
        return StitchFailure(one_line(e), time.perf_counter() - started)
    result = write_item_preview(plan, result, preview) if preview else result
    return with_mouth_stats(plan, result) if cfg.mouth_stats else result


def with_mouth_stats(plan: P.ItemPlan, result: StitchResult) -> StitchResult:
    """The published dub's mouth aperture vs its character's footage (lipsync.eval.aperture); when it
    cannot be measured it is logged and left out (the dub itself succeeded)."""
    from lipsync.eval.aperture import dub_mouth_stats

    try:
        stats = dub_mouth_stats(result.output, plan.item.character)
    except Exception as e:  # noqa: BLE001 - optional figures
        logger.warning("no mouth statistics for %s: %s", plan.item.id, one_line(e))
        return result
    return dataclasses.replace(result, mouth=json_safe(stats))


# ---------------------------------------------------------------------------------------------
# the driver


@dataclass
class DubRun:
    report: dict[str, Any]
    report_uri: str
    items: list[ItemResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_ITEMS_FAILED if self.report["counts"]["failed"] else EXIT_OK


def resolve_run_device(requested: str) -> str:
    """cpu | cuda as asked; "auto" is cuda when the cluster has GPUs now (the driver may have none)."""
    if requested != "auto":
        return requested
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def check_run_device(requested: str, local: bool) -> None:
    """--device cuda without GPUs: the render actors would wait for GPUs forever. For the embedded
    local Ray (this machine; nothing will add GPUs to it) an error before Ray starts; a connected
    cluster may have an autoscaler that adds GPU nodes for the waiting actors: a warning, once
    connected."""
    if requested != "cuda":
        return
    if local:
        import torch

        if not torch.cuda.is_available():
            raise InputError(None, "--device cuda, but CUDA is not available on this machine (the local Ray's): "
                                   "use --device cpu or auto")
    elif ray.cluster_resources().get("GPU", 0) == 0:
        logger.warning("--device cuda: the Ray cluster has no GPU now; the render actors wait for GPU nodes")


def init_ray(address: str | None, quiet: bool = False) -> bool:
    """Connect to `address`, the job's cluster (RAY_ADDRESS), or start a private local Ray.

    Returns True when this call started or connected Ray (the caller shuts it down). The local
    Ray listens on 127.0.0.1 only (GCS, raylet, object manager, workers, agents) and has no
    dashboard; it never joins a cluster that happens to run on the same machine.

    `quiet` (the CLI without -v): Ray's driver logger at ERROR (no "Token authentication is
    enabled" warning; token auth itself stays as Ray sets it), and the workers' output stays in
    their log files under the Ray session (log_to_driver=False): an item's error is in the report.
    """
    if ray.is_initialized():
        return False
    level = logging.ERROR if quiet else logging.WARNING
    if address is None and not os.environ.get("RAY_ADDRESS"):
        with _loopback_node_ip():
            ray.init(address="local", _node_ip_address=LOCAL_RAY_IP, include_dashboard=False,
                     logging_level=level, log_to_driver=not quiet)
        return True
    ray.init(address=address, logging_level=level, log_to_driver=not quiet)
    return True


@contextlib.contextmanager
def _ray_data_console(level: int) -> Iterator[None]:
    """Ray Data's console handler (its own, INFO: "Starting execution of Dataset ...", "Execution
    plan of ...", "execution finished", "Progress bars disabled") at `level` inside the block; its
    log file (ray-data.log in the session's logs) keeps everything."""
    import ray.data  # noqa: F401 - its import sets up that handler (`ray.data` is imported lazily)

    handlers = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    saved = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(max(h.level, level))
    try:
        yield
    finally:
        for h, old in zip(handlers, saved):
            h.setLevel(old)


@contextlib.contextmanager
def _loopback_node_ip():
    """Keep `_node_ip_address="127.0.0.1"` as given while Ray starts.

    ray.init turns a loopback node IP into the machine's routable one
    (ray._private.services.resolve_ip_for_localhost, Ray 2.60), and every Ray server then binds
    that address, reachable from the network; a single-node Ray works on 127.0.0.1. The bind
    addresses are checked by tests/test_dub_safety.py.
    """
    try:
        from ray._private import services
    except ImportError:  # pragma: no cover - another Ray layout: nothing to undo
        yield
        return
    original = getattr(services, "resolve_ip_for_localhost", None)
    if original is None:  # pragma: no cover
        yield
        return
    services.resolve_ip_for_localhost = lambda host: host if host == LOCAL_RAY_IP else original(host)
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


def run_dub(catalog_uri: str, output_root: str, cfg: DubConfig = DubConfig(), *, address: str | None = None,
            progress: ProgressFn | None = None, overwrite: bool = False, quiet_ray: bool = False) -> DubRun:
    """Dub every row of the catalog; returns the report (also written under `output_root`).

    Raises InputError for a bad catalog (nothing runs then). Items that fail are recorded in the
    report; the run goes on with the others. `overwrite`: items may replace files at their
    outputs that this job did not write (else such an item fails and the file stays; a row's
    `overwrite` column does the same for one row). `cfg.allow_outputs_outside_root`: rows may
    name outputs outside `output_root`. `quiet_ray`: Ray's own warnings and INFO lines stay off the
    terminal (init_ray, _ray_data_console); the CLI sets it unless -v.
    """
    # 1. the catalog, validated before any cluster work (cfg was validated by load_config)
    with _long_lived_objects():
        items = read_catalog(catalog_uri, output_root, allow_outputs_outside_root=cfg.allow_outputs_outside_root)
    legacy = read_manifest(output_root)  # a legacy _manifest.json (read only); new records are per item
    local = address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
    if local:
        check_run_device(cfg.device, local=True)
    storage.check_writable_dir(output_root)  # before Ray starts (else: every item fails, then exit 1)
    started_at = datetime.now(timezone.utc)
    t_init = time.monotonic()
    started_ray = init_ray(address, quiet=quiet_ray)
    t0 = time.monotonic()
    try:
        if not local:
            check_run_device(cfg.device, local=False)
        with _ray_data_console(logging.ERROR if quiet_ray else logging.NOTSET):
            return _Driver(len(items), catalog_uri, output_root, cfg, progress, overwrite=overwrite,
                           started_at=started_at).run(items, legacy, t0, t0 - t_init)
    finally:
        gc.unfreeze()
        if started_ray:
            ray.shutdown()


@contextlib.contextmanager
def _long_lived_objects() -> Iterator[None]:
    """No cyclic garbage collection while the block builds its objects (the catalog: no reference
    cycles), and those objects frozen afterwards (gc.freeze: later collections do not scan them).

    At 100,000 rows the collector's passes over the growing catalog cost 0.2 s of parsing and
    0.35 s of what followed (importing Ray Data, building the dataset), all before the first
    shard (docs/BENCHMARKS.md). run_dub unfreezes at its end; refcounting frees the items as usual.
    Nothing is frozen when the block raises (a rejected catalog: run_dub ends there).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


@dataclass
class _InFlight:
    """An item whose shards are still out or whose stitch has not finished."""

    plan: P.ItemPlan
    shards_left: int
    rendered: int = 0
    reused: int = 0
    seconds: float = 0.0
    error: str = ""


class _Driver:
    """State of one run in the driver: counters, items in flight, stitches, the result spool.

    Finished items leave memory: their ItemResult goes to a local spool file (read back once
    for the final report), their manifest record to storage; only failures stay listed (for
    the progress record).
    """

    def __init__(self, n_items: int, catalog_uri: str, output_root: str, cfg: DubConfig,
                 progress: ProgressFn | None, overwrite: bool = False, started_at: datetime | None = None):
        self.catalog_uri, self.output_root, self.cfg = catalog_uri, output_root, cfg
        self.overwrite = overwrite
        self.progress_fn = progress
        self.progress = Progress(items_total=n_items)
        self.started_at = started_at or datetime.now(timezone.utc)
        self.inflight: dict[str, _InFlight] = {}
        self.done_ids: set[str] = set()  # ids only, to ignore rows of an item that already failed
        self.items_planned = 0
        self.failures: list[dict[str, Any]] = []
        self.spool = tempfile.TemporaryFile("w+", encoding="utf-8", prefix="dub-results-")  # noqa: SIM115 - closed in _spooled_results
        self.stitch_queue: list[str] = []
        self.stitching: dict[ray.ObjectRef, str] = {}
        self.stitch_seconds = 0.0
        self.plan_seconds = 0.0
        self.manifest_bytes = 0
        self.first_shard_at: float | None = None
        self.last_shard_at: float | None = None
        self.run_key = P.run_key(cfg)
        self.run_info: dict[str, Any] = {}
        self.stitch_task = ray.remote(num_cpus=cfg.stitch_cpus)(stitch_one)
        self.lock = threading.Lock()  # counters vs the progress-record thread

    # --- events -------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.progress_fn is not None:
            self.progress_fn(self.progress)

    def _finish(self, result: ItemResult) -> None:
        with self.lock:
            self.done_ids.add(result.id)
            self.spool.write(json.dumps(dataclasses.asdict(result)) + "\n")
            setattr(self.progress, f"items_{result.status}", getattr(self.progress, f"items_{result.status}") + 1)
            if result.status == "failed":
                self.failures.append({"id": result.id, "row": result.row, "error": result.error})
        self._tick()

    def _fail(self, state: _InFlight, error: str, extra_seconds: float = 0.0) -> None:
        item = state.plan.item
        self.inflight.pop(item.id, None)
        self._finish(ItemResult(item.id, "failed", item.output, error=error, row=item.row,
                                seconds=state.seconds + extra_seconds, segments_rendered=state.rendered,
                                segments_reused=state.reused))

    # --- the run ------------------------------------------------------------------------------

    def run(self, items: list[CatalogItem], legacy: dict[str, dict[str, Any]], t0: float,
            ray_init_s: float) -> DubRun:
        cfg = self.cfg
        device = resolve_run_device(cfg.device)
        report_at = report_uri(self.output_root, self.started_at)
        self.run_info = {"catalog": self.catalog_uri, "output_root": self.output_root, "run_key": self.run_key,
                         "device": device, "started_at": self.started_at.isoformat(), "config": to_dict(cfg),
                         "overwrite": self.overwrite,
                         "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}}
        self._tick()
        stop = threading.Event()
        recorder = threading.Thread(target=self._record_progress_every, args=(progress_uri(report_at), stop),
                                    name="dub-progress-record", daemon=True)
        recorder.start()
        try:
            # 2.-3. plan -> render, streamed; stitch items as their last shard arrives
            if items:
                with _one_row_blocks():
                    ds = dub_dataset(items, legacy, self.output_root, self.run_key, cfg, device, self.overwrite)
                    del items, legacy  # the dataset holds them now; the driver keeps only items in flight
                    for row in stream_rows(ds):
                        self._on_row(row)
                        self._pump_stitches(block=False)
                        while len(self.stitch_queue) > STITCH_BACKLOG_PER_SLOT * cfg.max_concurrent_stitches:
                            self._pump_stitches(block=True)
            t_rendered = time.monotonic()
            # 4. the remaining stitches
            while self.stitch_queue or self.stitching:
                self._pump_stitches(block=True)
        finally:
            stop.set()
            recorder.join()
            self._write_progress(progress_uri(report_at), final=False)  # the account of an interrupted run
        self._cleanup_run_prefix()
        t_done = time.monotonic()
        # 5. report (then the progress record goes: the report supersedes it)
        first = (self.first_shard_at or t_rendered) - t0
        timings = {"ray_init_s": ray_init_s, "first_shard_s": first, "plan_s": self.plan_seconds,
                   "render_s": (self.last_shard_at or t_rendered) - (self.first_shard_at or t_rendered),
                   "stitch_s": self.stitch_seconds, "stitch_tail_s": t_done - t_rendered, "total_s": t_done - t0}
        ordered = self._spooled_results()
        report = build_report(items=ordered, run=self.run_info, timings=timings)
        report["manifest_bytes_written"] = self.manifest_bytes
        report["stale_work"] = P.stale_work(self.output_root, self.run_key)
        uri = call_with_retries(lambda: write_report(report_at, report), what="write report")
        self._remove_progress_record(progress_uri(report_at))
        return DubRun(report, uri, ordered)

    def _on_row(self, row: dict[str, Any]) -> None:
        kind, item_id = str(row["kind"]), str(row["item_id"])
        if kind != "shard":
            self._on_status(row)
            return
        now = time.monotonic()
        if self.first_shard_at is None:
            self.first_shard_at = now
        self.last_shard_at = now
        state = self.inflight.get(item_id)
        if state is None:
            if item_id in self.done_ids:  # pragma: no cover - a row Ray Data delivered twice
                return
            plan = P.plan_from_json(str(row["plan"]), self.cfg.shard_frames)
            state = self.inflight[item_id] = _InFlight(plan, int(row["n_shards"]), seconds=plan.seconds)
            with self.lock:
                self.items_planned += 1
                self.plan_seconds += plan.seconds
                self.progress.frames_total += plan.n_frames
        state.shards_left -= 1
        state.seconds += float(row["seconds"])
        if row["error"]:
            state.error = state.error or str(row["error"])
        else:
            if row["reused"]:
                state.reused += 1
            else:
                state.rendered += 1
            with self.lock:
                self.progress.frames_done += int(row["frames"])
            self._tick()
        if state.shards_left == 0:
            if state.error:
                self._fail(state, state.error)
            else:
                self.stitch_queue.append(item_id)

    def _on_status(self, row: dict[str, Any]) -> None:
        """A failed or skipped item (no shards)."""
        result = ItemResult(**json.loads(str(row["result"])))
        with self.lock:
            self.items_planned += 1
            self.plan_seconds += result.seconds
        if result.status == "skipped" and row["plan"]:
            plan = P.plan_from_json(str(row["plan"]), self.cfg.shard_frames)
            if plan.record is not None:  # published by a run that died before its manifest write
                self._write_record(plan.item.id, plan.record)
                self._remove_work(plan.work)
        self._finish(result)

    def _pump_stitches(self, block: bool) -> None:
        """Start queued stitches up to the limit; collect finished ones (waiting for one if `block`)."""
        while self.stitch_queue and len(self.stitching) < self.cfg.max_concurrent_stitches:
            item_id = self.stitch_queue.pop(0)
            preview = preview_uri(self.output_root, item_id) if self.cfg.preview else None
            self.stitching[self.stitch_task.remote(self.inflight[item_id].plan, self.cfg, preview)] = item_id
        if not self.stitching:
            return
        done, _ = ray.wait(list(self.stitching), num_returns=1, timeout=None if block else 0)
        for ref in done:
            self._on_stitch(self.stitching.pop(ref), ref)

    def _on_stitch(self, item_id: str, ref: ray.ObjectRef) -> None:
        state = self.inflight[item_id]
        try:
            result: StitchResult | StitchFailure = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the task itself died (worker crash)
            self._fail(state, f"stitch: {one_line(_task_cause(e))}")
            return
        self._on_stitch_result(item_id, result)

    def _on_stitch_result(self, item_id: str, result: StitchResult | StitchFailure) -> None:
        state = self.inflight[item_id]
        self.stitch_seconds += result.seconds
        if isinstance(result, StitchFailure):
            self._fail(state, f"stitch: {result.error}", result.seconds)
            return
        plan = state.plan
        self._write_record(item_id, manifest_entry(plan.key, result.output, result.frames, result.size,
                                                   result.sha256))
        self._remove_work(plan.work)  # only now: the verified publish is recorded
        del self.inflight[item_id]
        self._finish(ItemResult(item_id, "ok", result.output, frames=result.frames, row=plan.item.row,
                                seconds=state.seconds + result.seconds, segments_rendered=state.rendered,
                                segments_reused=state.reused, warning=plan.warning, preview=result.preview,
                                mouth=result.mouth))

    # --- storage ------------------------------------------------------------------------------

    def _write_record(self, item_id: str, entry: dict[str, Any]) -> None:
        self.manifest_bytes += call_with_retries(lambda: manifest.write_record(self.output_root, item_id, entry),
                                                 what=f"write manifest record {item_id}")

    def _remove_work(self, work: str) -> None:
        """Delete a finished item's work prefix; a failure only leaves files for a later run to clean."""
        try:
            call_with_retries(lambda: P.remove_prefix(work), what=f"remove {work}")
        except Exception as e:  # noqa: BLE001 - the output is published and recorded: not the item's failure
            logger.warning("could not remove %s: %s", work, one_line(e))

    def _cleanup_run_prefix(self) -> None:
        """Remove `_work/<run>` when nothing is left in it (failed items keep theirs for re-runs)."""
        prefix = storage.join(self.output_root, P.WORK_DIR, self.run_key)
        try:
            if not storage.ls(prefix):
                P.remove_prefix(prefix)
        except FileNotFoundError:
            pass

    def _write_progress(self, uri: str, final: bool) -> None:
        with self.lock:
            record = progress_record(self.progress, run=self.run_info, items_planned=self.items_planned,
                                     failures=list(self.failures), final=final)
        try:
            call_with_retries(lambda: write_progress_record(uri, record), what="write progress record")
        except Exception as e:  # noqa: BLE001 - an account of the run, not the run itself
            logger.warning("could not write the progress record %s: %s", uri, one_line(e))

    def _record_progress_every(self, uri: str, stop: threading.Event) -> None:
        """Rewrite the progress record every progress_record_interval_s (a thread: the driver's
        loop may wait minutes for the next row)."""
        while not stop.wait(self.cfg.progress_record_interval_s):
            self._write_progress(uri, final=False)

    def _remove_progress_record(self, uri: str) -> None:
        try:
            storage.rm(uri)
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            logger.warning("could not remove the progress record %s: %s", uri, one_line(e))

    def _spooled_results(self) -> list[ItemResult]:
        self.spool.seek(0)
        results = [ItemResult(**json.loads(line)) for line in self.spool]
        self.spool.close()
        return sorted(results, key=lambda r: r.row)


def _task_cause(error: Exception) -> BaseException:
    """The user's exception inside a RayTaskError (its message would carry a traceback)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
