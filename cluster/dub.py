"""Batch dubbing on Ray: plan tasks -> Ray Data render actors -> stitch tasks -> report.

    catalog rows --plan (Ray tasks, parallel)--> ItemPlans (skip | render: features + shards)
    shard rows --Ray Data map_batches(RenderShards, actors)--> one segment per shard (in storage)
    all shards of an item done --stitch (Ray task)--> output.mp4 published, manifest entry
    --> <output_root>/_reports/<timestamp>.json + summary

Render stage: Ray Data `map_batches` with a callable class, i.e. a pool of actors that each load
a model replica once (`__init__`) and render one shard per call (`batch_size=1`: a shard is
already ~250 frames of work). Ray Data gives the pool its scheduling, autoscaling between
`(min, max)` actors, backpressure and actor restarts; rows are streamed back to this driver as
they finish, so items are stitched while other items still render. An explicit ActorPool would
need all of that written here.

Failures are per item: a bad audio or bundle fails that item in planning; a shard that raises is
reported as a row with its error (the actor catches it, so one bad item cannot fail the dataset);
the item then fails and its finished segments stay in `_work/` to be reused by a re-run. A failed
stitch keeps them too: segments are deleted only after a verified publish is in the manifest.
Transient storage errors (a dropped connection, a timeout, S3 SlowDown/5xx) are retried with
backoff inside the plan task, the render actor and the stitch task (lipsync.dub.retry) before
they fail the item; permanent ones (missing file, refused credentials, bad media) fail it at once.

Without an address (and outside a Ray job) a private local Ray is started, bound to 127.0.0.1
with no dashboard: nothing of it is reachable from the network (`init_ray`).

Everything here is glue: the work is done by lipsync.dub (plan, stitch, report) and
lipsync.render (render_segment), which do not import Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import ray
import torch

from lipsync.bundle import load_character
from lipsync.config import DubConfig, to_dict
from lipsync.dub import plan as P
from lipsync.dub.catalog import CatalogItem, read_catalog
from lipsync.dub.report import (
    ItemResult,
    Progress,
    build_report,
    manifest_entry,
    one_line,
    read_manifest,
    report_uri,
    write_manifest,
    write_report,
)
from lipsync.dub.retry import call_with_retries
from lipsync.dub.stitch import StitchResult, stitch_segments
from lipsync.errors import MediaError
from lipsync.io import media, storage
from lipsync.render import render_segment
from lipsync.render.paint import prepare_for_inference
from lipsync.runtime import resolve_device

EXIT_OK = 0
EXIT_ITEMS_FAILED = 3  # the run finished; the report says which items failed
LOCAL_RAY_IP = "127.0.0.1"  # the embedded Ray listens here only

logger = logging.getLogger(__name__)

ProgressFn = Callable[[Progress], None]


# ---------------------------------------------------------------------------------------------
# plan (Ray task)

_plan_characters: P.LruCache | None = None  # per worker process, reused by later plan tasks


def _plan_character_cache(capacity: int) -> P.LruCache:
    global _plan_characters
    if _plan_characters is None:
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


# ---------------------------------------------------------------------------------------------
# render (Ray Data callable class = actor pool)


class RenderShards:
    """A model replica: renders shard rows into segments in storage (reusing ones that exist).

    A catalog may name several characters, so the actor cannot know in `__init__` which to load;
    it loads each on first use and keeps the last `character_cache` of them (and the last
    `feature_cache` items' audio features): a model is loaded once per actor, not per shard.
    """

    def __init__(self, cfg: DubConfig, device: str):
        self.cfg = cfg
        self.device = resolve_device(device)
        # Ray exports OMP_NUM_THREADS = num_cpus, but torch in a Ray worker starts with 1 thread
        # (measured with Ray 2.60): set it, so an actor uses the CPUs it reserved.
        torch.set_num_threads(cfg.render.torch_threads or max(1, int(cfg.actor_cpus)))

        def load(uri: str):
            character = load_character(uri, device=self.device)
            prepare_for_inference(character, cfg.render)
            return character

        self.characters = P.LruCache(load, cfg.character_cache)
        self.features = P.LruCache(P.load_array, cfg.feature_cache)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["item_id"]))]
        results = [self.render_row(row) for row in rows]
        return {k: np.array([r[k] for r in results], dtype=object if k in ("item_id", "error") else None)
                for k in results[0]}

    def render_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Render one shard into its segment URI; errors come back in the row, not as exceptions.

        A segment left by an earlier run is reused only when it holds the shard's frame count
        (a failed stitch keeps its segments). Transient storage errors are retried first.
        """
        started = time.perf_counter()
        a, b = int(row["frame_start"]), int(row["frame_end"])
        out = {"item_id": str(row["item_id"]), "shard_index": int(row["shard_index"]), "frames": b - a,
               "reused": False, "seconds": 0.0, "error": ""}
        segment = str(row["segment"])

        def render() -> bool:
            if segment_is_complete(segment, b - a):  # rendered by an earlier, interrupted run
                return True
            character = self.characters.get(str(row["character"]))
            feats = self.features.get(str(row["feats"]))
            with storage.atomic_file(segment) as tmp:
                render_segment(character, feats, a, b, tmp, cfg=self.cfg.render, crf=int(row["crf"]),
                               start_frame=int(row["start_frame"]))
            return False

        try:
            out["reused"] = call_with_retries(render, what=f"render {out['item_id']} shard {out['shard_index']}")
        except Exception as e:  # noqa: BLE001 - reported per item by the driver
            out["error"] = f"shard {out['shard_index']} [{a}, {b}): {one_line(e)}"
        out["seconds"] = time.perf_counter() - started
        return out


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
    """One Ray Data row per shard, carrying what an actor needs to render it."""
    rows = []
    for p in plans:
        for s in p.shards:
            rows.append({"item_id": s.item_id, "shard_index": s.index, "frame_start": s.frame_start,
                         "frame_end": s.frame_end, "character": p.item.character, "feats": p.feats,
                         "segment": P.segment_uri(p.work, s.index), "crf": P.item_crf(p.item, cfg.render),
                         "start_frame": p.item.start_frame})
    return rows


def render_dataset(rows: list[dict[str, Any]], cfg: DubConfig, device: str) -> ray.data.Dataset:
    """The shard rows mapped through a pool of RenderShards actors (one block per shard)."""
    return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        RenderShards, fn_constructor_kwargs={"cfg": cfg, "device": device}, batch_size=1,
        compute=actor_pool(cfg, len(rows)), **actor_resources(cfg, device))


def actor_pool(cfg: DubConfig, n_rows: int) -> ray.data.ActorPoolStrategy:
    """A fixed pool of `actors`, or min..max when max_actors is larger; never more than shards.

    One shard in flight per actor: a shard is long, so queueing a second one on a busy actor
    would only leave another actor idle at the end of the run.
    """
    low = min(cfg.actors, n_rows)
    high = min(max(cfg.max_actors, cfg.actors), n_rows)
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


def stitch_one(plan: P.ItemPlan, cfg: DubConfig) -> StitchResult | StitchFailure:
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
                               audio_duration=plan.duration, settings=settings, before_publish=record)

    try:
        return call_with_retries(stitch, what=f"stitch {plan.item.id}")
    except Exception as e:  # noqa: BLE001 - the item's failure, reported by the driver in one line
        return StitchFailure(one_line(e), time.perf_counter() - started)


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


def init_ray(address: str | None) -> bool:
    """Connect to `address`, the job's cluster (RAY_ADDRESS), or start a private local Ray.

    Returns True when this call started or connected Ray (the caller shuts it down). The local
    Ray listens on 127.0.0.1 only (GCS, raylet, object manager, workers, agents) and has no
    dashboard; it never joins a cluster that happens to run on the same machine.
    """
    if ray.is_initialized():
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        with _loopback_node_ip():
            ray.init(address="local", _node_ip_address=LOCAL_RAY_IP, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=True)
        return True
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    return True


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
            progress: ProgressFn | None = None, overwrite: bool = False) -> DubRun:
    """Dub every row of the catalog; returns the report (also written under `output_root`).

    Raises InputError for a bad catalog (nothing runs then). Items that fail are recorded in the
    report; the run goes on with the others. `overwrite`: items may replace files at their
    outputs that this job did not write (else such an item fails and the file stays; a row's
    `overwrite` column does the same for one row). `cfg.allow_outputs_outside_root`: rows may
    name outputs outside `output_root`.
    """
    # 1. the catalog, validated before any cluster work (cfg was validated by load_config)
    items = read_catalog(catalog_uri, output_root, allow_outputs_outside_root=cfg.allow_outputs_outside_root)
    started_at = datetime.now(timezone.utc)
    t_init = time.monotonic()
    started_ray = init_ray(address)
    t0 = time.monotonic()
    try:
        return _Driver(items, catalog_uri, output_root, cfg, progress, overwrite=overwrite).run(
            started_at, t0, t0 - t_init)
    finally:
        if started_ray:
            ray.shutdown()


class _Driver:
    """State of one run in the driver: plans, shard results, stitches in flight, the manifest."""

    def __init__(self, items: list[CatalogItem], catalog_uri: str, output_root: str, cfg: DubConfig,
                 progress: ProgressFn | None, overwrite: bool = False):
        self.items = {i.id: i for i in items}
        self.catalog_uri, self.output_root, self.cfg = catalog_uri, output_root, cfg
        self.overwrite = overwrite
        self.progress_fn = progress
        self.progress = Progress(items_total=len(items))
        self.results: dict[str, ItemResult] = {}
        self.plans: dict[str, P.ItemPlan] = {}
        self.shards_left: dict[str, int] = {}
        self.work_seconds: dict[str, float] = {}
        self.segments: dict[str, list[int]] = {}  # item -> [rendered, reused]
        self.stitch_queue: list[str] = []
        self.stitching: dict[ray.ObjectRef, str] = {}
        self.stitch_seconds = 0.0
        self.manifest: dict[str, dict[str, Any]] = {}
        self.plan_task = ray.remote(num_cpus=cfg.plan_cpus)(plan_one)
        self.stitch_task = ray.remote(num_cpus=cfg.stitch_cpus)(stitch_one)

    # --- events -------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.progress_fn is not None:
            self.progress_fn(self.progress)

    def _finish(self, result: ItemResult) -> None:
        self.results[result.id] = result
        setattr(self.progress, f"items_{result.status}", getattr(self.progress, f"items_{result.status}") + 1)
        self._tick()

    def _fail(self, item_id: str, error: str) -> None:
        if item_id in self.results:
            return
        item = self.items[item_id]
        rendered, reused = self.segments.get(item_id, [0, 0])
        self._finish(ItemResult(item_id, "failed", item.output, error=error, row=item.row,
                                seconds=self.work_seconds.get(item_id, 0.0), segments_rendered=rendered,
                                segments_reused=reused))

    # --- stages -------------------------------------------------------------------------------

    def run(self, started_at: datetime, t0: float, ray_init_s: float) -> DubRun:
        cfg = self.cfg
        run = P.run_key(cfg)
        device = resolve_run_device(cfg.device)
        self.manifest = call_with_retries(lambda: read_manifest(self.output_root), what="read manifest")
        self._tick()
        # 2. plan every item in parallel
        self._plan(run)
        t_planned = time.monotonic()
        # 3. render shards with the actor pool; stitch items as their last shard arrives
        to_render = [p for p in self.plans.values() if p.status == "render"]
        rows = shard_rows(to_render, cfg)
        if rows:
            ray.data.DataContext.get_current().enable_progress_bars = False
            for row in render_dataset(rows, cfg, device).iter_rows():
                self._on_shard(row)
                self._pump_stitches(block=False)
        t_rendered = time.monotonic()
        # 4. the remaining stitches
        while self.stitch_queue or self.stitching:
            self._pump_stitches(block=True)
        self._cleanup_run_prefix(run)
        t_done = time.monotonic()
        # 5. report
        timings = {"ray_init_s": ray_init_s, "plan_s": t_planned - t0, "render_s": t_rendered - t_planned,
                   "stitch_s": self.stitch_seconds, "stitch_tail_s": t_done - t_rendered, "total_s": t_done - t0}
        run_info = {"catalog": self.catalog_uri, "output_root": self.output_root, "run_key": run, "device": device,
                    "started_at": started_at.isoformat(), "config": to_dict(cfg), "overwrite": self.overwrite,
                    "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}}
        ordered = [self.results[i] for i in self.items]
        report = build_report(items=ordered, run=run_info, timings=timings)
        uri = call_with_retries(lambda: write_report(report_uri(self.output_root, started_at), report),
                                what="write report")
        return DubRun(report, uri, ordered)

    def _plan(self, run: str) -> None:
        pending = {self.plan_task.remote(item, self.output_root, run, self.cfg, self.manifest.get(item.id),
                                         self.overwrite): item.id
                   for item in self.items.values()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item_id = pending.pop(done[0])
            try:
                outcome = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - the task itself died (worker crash)
                outcome = ItemResult(item_id, "failed", self.items[item_id].output,
                                     error=f"plan: {one_line(_task_cause(e))}", row=self.items[item_id].row)
            self._on_plan(outcome)

    def _on_plan(self, outcome: P.ItemPlan | ItemResult) -> None:
        if isinstance(outcome, ItemResult):
            self._finish(outcome)
            return
        item = outcome.item
        self.plans[item.id] = outcome
        self.work_seconds[item.id] = outcome.seconds
        if outcome.status == "skipped":
            if outcome.record is not None:  # published by a run that died before its manifest write
                self.manifest[item.id] = outcome.record
                self._write_manifest()
                self._remove_work(outcome.work)
            self._finish(ItemResult(item.id, "skipped", item.output, frames=outcome.n_frames, row=item.row,
                                    seconds=outcome.seconds))
            return
        self.shards_left[item.id] = len(outcome.shards)
        self.segments[item.id] = [0, 0]
        self.progress.frames_total += outcome.n_frames
        self._tick()

    def _on_shard(self, row: dict[str, Any]) -> None:
        item_id = str(row["item_id"])
        self.shards_left[item_id] -= 1
        self.work_seconds[item_id] += float(row["seconds"])
        if row["error"]:
            self._fail(item_id, str(row["error"]))
        else:
            self.segments[item_id][1 if row["reused"] else 0] += 1
            self.progress.frames_done += int(row["frames"])
            self._tick()
        if self.shards_left[item_id] == 0 and item_id not in self.results:
            self.stitch_queue.append(item_id)

    def _pump_stitches(self, block: bool) -> None:
        """Start queued stitches up to the limit; collect finished ones (waiting for one if `block`)."""
        while self.stitch_queue and len(self.stitching) < self.cfg.max_concurrent_stitches:
            item_id = self.stitch_queue.pop(0)
            self.stitching[self.stitch_task.remote(self.plans[item_id], self.cfg)] = item_id
        if not self.stitching:
            return
        done, _ = ray.wait(list(self.stitching), num_returns=1, timeout=None if block else 0)
        for ref in done:
            self._on_stitch(self.stitching.pop(ref), ref)

    def _on_stitch(self, item_id: str, ref: ray.ObjectRef) -> None:
        try:
            result: StitchResult | StitchFailure = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the task itself died (worker crash)
            self._fail(item_id, f"stitch: {one_line(_task_cause(e))}")
            return
        self.stitch_seconds += result.seconds
        if isinstance(result, StitchFailure):
            self.work_seconds[item_id] = self.work_seconds.get(item_id, 0.0) + result.seconds
            self._fail(item_id, f"stitch: {result.error}")
            return
        plan = self.plans[item_id]
        self.manifest[item_id] = manifest_entry(plan.key, result.output, result.frames, result.size, result.sha256)
        self._write_manifest()
        self._remove_work(plan.work)  # only now: the verified publish is recorded
        rendered, reused = self.segments[item_id]
        self._finish(ItemResult(item_id, "ok", result.output, frames=result.frames, row=plan.item.row,
                                seconds=self.work_seconds[item_id] + result.seconds, segments_rendered=rendered,
                                segments_reused=reused))

    def _write_manifest(self) -> None:
        call_with_retries(lambda: write_manifest(self.output_root, self.manifest), what="write manifest")

    def _remove_work(self, work: str) -> None:
        """Delete a finished item's work prefix; a failure only leaves files for a later run to clean."""
        try:
            call_with_retries(lambda: P.remove_prefix(work), what=f"remove {work}")
        except Exception as e:  # noqa: BLE001 - the output is published and recorded: not the item's failure
            logger.warning("could not remove %s: %s", work, one_line(e))

    def _cleanup_run_prefix(self, run: str) -> None:
        """Remove `_work/<run>` when nothing is left in it (failed items keep theirs for re-runs)."""
        prefix = storage.join(self.output_root, P.WORK_DIR, run)
        try:
            if not storage.ls(prefix):
                P.remove_prefix(prefix)
        except FileNotFoundError:
            pass


def _task_cause(error: Exception) -> BaseException:
    """The user's exception inside a RayTaskError (its message would carry a traceback)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
