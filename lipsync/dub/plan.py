"""Plan one catalog item: validate its audio, decide skip or render, compute features, cut shards.

An item's frames [0, n) are split into shards of `shard_frames`; each shard becomes one encoded
segment, rendered anywhere (render_segment is a pure function of the frame range), stored at

    <output_root>/_work/<run_key>/<item id>/feats.npy         (N, 512) float32 audio features
    <output_root>/_work/<run_key>/<item id>/rest.npy          (N,) float32 rest weights (pauses; absent: none)
    <output_root>/_work/<run_key>/<item id>/input.json        the item's input key (below)
    <output_root>/_work/<run_key>/<item id>/seg_<shard:05d>.mp4
    <output_root>/_work/<run_key>/<item id>/output.json       what the stitch published (below)

`run_key` hashes the settings that change how a segment is cut and encoded (shard size, x264
preset, pixel format), so segments of an earlier, interrupted run with the same settings
are found again and reused. `input.json` guards the rest: when an item's input key changed
(new audio, retrained character, other crf), its old work prefix is deleted before planning.

The input key (also stored in the manifest, see report.py) is what makes a finished output
reusable: sha256 of the audio bytes, the character bundle's version, the render parameters that
change pixels, and the output URI.

Outputs are never replaced by accident (see `output_state`). A file at an item's output counts
as this job's own when the manifest entry of that item (or, after a crash between publishing and
the manifest write, the item's `output.json`, written just before the publish) names the same
output URI and the file still has the recorded size and sha256 (entries written before sizes
and hashes were recorded: the recorded frame count). An item is skipped only when its output is
its own in that sense *and* the input key is equal. A file that is not its own (another tool's,
a hand-edited one, another row's from an earlier catalog) fails the item with a one-line reason
and stays as it is, unless the row's `overwrite` column or the run's overwrite allows replacing it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lipsync.audio import loudness
from lipsync.config import DubConfig, RenderConfig
from lipsync.dub.catalog import CatalogItem, normalise_uri
from lipsync.errors import InputError
from lipsync.io import media, storage

WORK_DIR = "_work"
FEATS_FILE = "feats.npy"
REST_FILE = "rest.npy"
INPUT_FILE = "input.json"
PUBLISH_RECORD_FILE = "output.json"
HASH_CHUNK = 1 << 20
KEY_FORMAT = 1  # bump when the meaning of a key changes, so old outputs are re-rendered


@dataclass(frozen=True)
class Shard:
    """Output frames [frame_start, frame_end) of one item: one render task, one segment."""

    item_id: str
    index: int
    frame_start: int
    frame_end: int

    @property
    def frames(self) -> int:
        return self.frame_end - self.frame_start


def split_frames(n_frames: int, shard_frames: int) -> list[tuple[int, int]]:
    """[0, n) as consecutive half-open ranges of `shard_frames` (the last one may be shorter)."""
    if shard_frames < 1:
        raise ValueError(f"shard_frames must be >= 1, got {shard_frames}")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    return [(a, min(a + shard_frames, n_frames)) for a in range(0, n_frames, shard_frames)]


def plan_shards(item_id: str, n_frames: int, shard_frames: int) -> list[Shard]:
    return [Shard(item_id, i, a, b) for i, (a, b) in enumerate(split_frames(n_frames, shard_frames))]


# ---------------------------------------------------------------------------------------------
# keys and the work layout


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def run_key(cfg: DubConfig) -> str:
    """Short hash of the settings shared by every segment of a run (see the module docstring)."""
    r = cfg.render
    return _digest({"format": KEY_FORMAT, "shard_frames": cfg.shard_frames, "preset": r.x264_preset,
                    "pix_fmt": r.pix_fmt})[:16]


def item_crf(item: CatalogItem, render: RenderConfig) -> int:
    """The catalog row's crf, else the run's."""
    return render.crf if item.crf is None else item.crf


def input_key(item: CatalogItem, audio_sha256: str, bundle_version: str, render: RenderConfig) -> dict[str, Any]:
    """Everything an output depends on; equal keys (and an existing output) mean: skip the item."""
    return {
        "format": KEY_FORMAT,
        "audio_sha256": audio_sha256,
        "bundle_version": bundle_version,
        "params": {"start_frame": item.start_frame, "crf": item_crf(item, render), "preset": render.x264_preset,
                   "pix_fmt": render.pix_fmt, "audio_bitrate": render.audio_bitrate,
                   "silence": silence_params(render), "precision": render.precision,
                   "colour_match_band": render.colour_match_band,
                   "feature_smooth_frames": render.feature_smooth_frames},
        "output": item.output,
    }


def silence_params(render: RenderConfig) -> dict[str, Any]:
    """The settings that decide what pauses look like (lipsync.audio.vad, lipsync.render.rest)."""
    if render.silence == "keep":
        return {"mode": "keep"}
    return {"mode": render.silence, "vad_threshold": render.vad_threshold,
            "vad_min_pause_frames": render.vad_min_pause_frames, "rest_fade_frames": render.rest_fade_frames,
            "rest_box": list(render.rest_box), "rest_feather": render.rest_feather}


def work_prefix(output_root: str, key: str, item_id: str) -> str:
    return storage.join(output_root, WORK_DIR, key, item_id)


def segment_uri(prefix: str, index: int) -> str:
    return storage.join(prefix, f"seg_{index:05d}.mp4")


# ---------------------------------------------------------------------------------------------
# loaded characters and features


class LruCache:
    """The last `capacity` values loaded with `loader(uri)` (the least recently used goes first).

    Actors and planning workers see a few characters (and an item's features) again and again;
    loading a character reads weights and template JPEGs, so it is done once per process, not
    once per shard.
    """

    def __init__(self, loader: Callable[[str], Any], capacity: int = 2):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._loader = loader
        self._capacity = capacity
        self._items: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.loads = 0  # how many times `loader` ran (tests, stats)

    def get(self, uri: str) -> Any:
        if uri in self._items:
            self._items.move_to_end(uri)
            return self._items[uri]
        value = self._loader(uri)
        self.loads += 1
        self._items[uri] = value
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)
        return value


# ---------------------------------------------------------------------------------------------
# planning one item


@dataclass
class ItemPlan:
    """What the driver needs to render, stitch and report one item."""

    item: CatalogItem
    status: str  # "render" | "skipped"
    key: dict[str, Any]
    n_frames: int = 0
    duration: float = 0.0  # seconds of audio
    work: str = ""  # the item's work prefix
    feats: str = ""  # URI of feats.npy
    rest: str = ""  # URI of rest.npy ("" when the item has no pause or silence is keep)
    shards: list[Shard] = field(default_factory=list)
    seconds: float = 0.0  # time spent planning
    existing: str = "absent"  # what was at the output when planned: absent | own | changed | foreign
    overwrite: bool = False  # the row or the run allows replacing a file that is not this job's
    record: dict[str, Any] | None = None  # skipped: a manifest entry to (re)write (from output.json)
    warning: str | None = None  # the character looks undertrained (lipsync.bundle.undertrained_warning)


# ---------------------------------------------------------------------------------------------
# outputs: whose file is at the output URI?


def output_state(output: str, entry: dict[str, Any] | None) -> str:
    """"absent", "own" (the file `entry` recorded), "changed" (entry names this output but the file
    differs from it) or "foreign" (no entry for this output)."""
    if not storage.exists(output):
        return "absent"
    if entry is None or normalise_uri(str(entry.get("output", ""))) != normalise_uri(output):
        return "foreign"
    return "own" if matches_record(output, entry) else "changed"


def matches_record(uri: str, entry: dict[str, Any]) -> bool:
    """The file at `uri` is the one `entry` describes: its size and sha256 when recorded, else its
    video frame count (entries from before hashes were recorded)."""
    if "sha256" in entry and "size" in entry:
        fs, path = storage.filesystem(uri)
        return fs.size(path) == entry["size"] and uri_sha256(uri) == entry["sha256"]
    try:
        with storage.local_copy(uri) as local:
            return media.count_video_frames(local) == int(entry.get("frames", -1))
    except InputError:  # not a readable video any more
        return False


def uri_sha256(uri: str) -> str:
    """sha256 of the bytes at `uri`, streamed (no local copy of a remote file)."""
    h = hashlib.sha256()
    with storage.open_uri(uri, "rb") as f:
        for block in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def read_publish_record(work: str) -> dict[str, Any] | None:
    """The item's output.json (what its last stitch published), or None when absent/unreadable."""
    uri = storage.join(work, PUBLISH_RECORD_FILE)
    if not storage.exists(uri):
        return None
    try:
        record = storage.read_json(uri)
    except ValueError:  # corrupt (a storage error propagates: retried, never read as "no record")
        return None
    return record if isinstance(record, dict) else None


def refuse_output(output: str, state: str) -> InputError:
    why = ("differs from the file this job published there (size/sha256 changed since)" if state == "changed"
           else "exists and was not written by this job (no manifest entry of this item for it)")
    return InputError(output, f"output {why}; it is left as it is: set the row's overwrite column or "
                              f"the run's overwrite to replace it")


def plan_item(item: CatalogItem, *, output_root: str, run: str, cfg: DubConfig, characters: LruCache,
              manifest_entry: dict[str, Any] | None, overwrite: bool = False, dry_run: bool = False) -> ItemPlan:
    """Plan `item`; raises InputError (bad audio, bad bundle, an output that is not this job's)
    for the caller to record as failed.

    `dry_run`: steps 0-3 as in a real run, then the audio is validated and its frame count taken
    from the container's header (`probe_frames`) instead of decoding it; nothing is written or
    deleted and no features are computed (the plan has no feats and no work files).

    Steps: (0) whose file is at the output (refused unless own or overwrite), (1) fetch the
    audio and hash it, (2) load the character (cached) for its version and audio encoder,
    (3) skip when the output is this job's own and the manifest key is equal, (4) decode and
    validate the audio, (5) reset a stale work prefix, (6) compute and store the features,
    (7) cut shards.
    """
    from lipsync.audio import vad  # torch: on the planning worker, not in the driver
    from lipsync.bundle import undertrained_warning
    from lipsync.render import audio_features, load_audio

    started = time.perf_counter()
    work = work_prefix(output_root, run, item.id)
    overwrite = overwrite or item.overwrite
    # 0. the output: this job's own (manifest entry, else the record of a publish whose manifest
    #    write a crash cut off), absent, or someone else's file
    entry, adopted = manifest_entry, False
    if entry is None or normalise_uri(str(entry.get("output", ""))) != normalise_uri(item.output):
        record = read_publish_record(work)
        if record is not None and normalise_uri(str(record.get("output", ""))) == normalise_uri(item.output):
            entry, adopted = record, True
    existing = output_state(item.output, entry)
    if existing in ("changed", "foreign") and not overwrite:
        raise refuse_output(item.output, existing)
    # 1. audio bytes
    if not storage.exists(item.audio):
        raise InputError(item.audio, "audio file not found")
    with storage.local_copy(item.audio) as audio_path:
        audio_sha = storage.file_sha256(audio_path)
        # 2. character
        character = characters.get(item.character)
        key = input_key(item, audio_sha, character.version, cfg.render)
        warning = undertrained_warning(item.character, getattr(character, "train", {}))
        # 3. skip a finished item (its own output, verified above, made from the same inputs)
        if existing == "own" and entry is not None and entry.get("key") == key:
            if not adopted and not dry_run and storage.exists(work):
                remove_prefix(work)  # left by a run that died after its manifest write
            return ItemPlan(item, "skipped", key, n_frames=int(entry.get("frames", 0)), work=work,
                            seconds=time.perf_counter() - started, existing=existing,
                            record=dict(entry) if adopted else None, warning=warning)
        if dry_run:
            n_frames, duration = probe_frames(item.audio, audio_path, cfg, character.audio)
            return ItemPlan(item, "render", key, n_frames=n_frames, duration=duration, work=work,
                            shards=plan_shards(item.id, n_frames, cfg.shard_frames),
                            seconds=time.perf_counter() - started, existing=existing, overwrite=overwrite,
                            warning=warning)
        # 4. decode + validate (empty, corrupt, too long -> InputError), named by the catalog's URI
        try:
            wav = loudness.normalise(load_audio(audio_path, cfg.render, character.audio.sample_rate),
                                     character.audio, inplace=True)  # the level the character was trained at
        except InputError as e:
            raise InputError(item.audio, e.problem) from None
    duration = wav.size / character.audio.sample_rate
    # 5. a work prefix left by a run with other inputs holds segments of other pixels: drop it
    reset_stale_work(work, key)
    # 6. features, shared with the render actors through storage
    feats = audio_features(character, wav, cfg.render.feature_batch_size,
                           cfg.render.feature_smooth_frames)  # (N, D)
    feats_uri = storage.join(work, FEATS_FILE)
    save_array(feats_uri, feats)
    rest = vad.frame_rest_weights(wav, len(feats), character.audio, cfg.render)  # (N,) or None
    rest_uri = ""
    if rest is not None and rest.any():
        rest_uri = storage.join(work, REST_FILE)
        save_array(rest_uri, rest)
    storage.write_json(storage.join(work, INPUT_FILE), key)
    # 7. shards
    shards = plan_shards(item.id, len(feats), cfg.shard_frames)
    return ItemPlan(item, "render", key, n_frames=len(feats), duration=duration, work=work, feats=feats_uri,
                    rest=rest_uri,
                    shards=shards, seconds=time.perf_counter() - started, existing=existing, overwrite=overwrite,
                    warning=warning)


def probe_frames(uri: str, audio_path, cfg: DubConfig, audio_cfg) -> tuple[int, float]:
    """(video frames, seconds) of an audio file from its header, validated like load_audio (no decode).

    The frame count is that of the decoded audio (num_video_frames of the samples at the
    character's rate; `header_seconds`): exact for WAV/FLAC/OGG, so it equals a real run's.
    """
    from lipsync.audio.mel import num_video_frames

    try:
        info = media.probe(audio_path)
    except InputError as e:
        raise InputError(uri, e.problem) from None
    limit = cfg.render.max_audio_seconds
    if not info.has_audio:
        raise InputError(uri, "has no audio track")
    if info.duration > limit + 0.5:
        raise InputError(uri, f"audio is {info.duration:.0f} s long; the maximum is {limit:g} s "
                              f"(raise max_audio_seconds to allow it)")
    samples = round(header_seconds(audio_path, info.duration) * audio_cfg.sample_rate)
    if samples < audio_cfg.sample_rate / 25:
        raise InputError(uri, "audio is shorter than one video frame (40 ms)")
    return num_video_frames(samples, audio_cfg), samples / audio_cfg.sample_rate


def header_seconds(audio_path, fallback: float) -> float:
    """Exact duration from the file's header where libsndfile reads it (WAV, FLAC, OGG: sample
    count / rate), else `fallback` (ffmpeg's banner, to the centisecond)."""
    import soundfile

    try:
        info = soundfile.info(str(audio_path))
    except Exception:  # noqa: BLE001 - not a format libsndfile knows (mp3, m4a, ...)
        return fallback
    return info.frames / info.samplerate if info.samplerate else fallback


def plan_to_json(plan: ItemPlan) -> str:
    """What the stitcher needs of a plan, as one JSON string (carried in Ray Data rows); the
    shards are not stored: plan_from_json cuts them again from n_frames."""
    return json.dumps({"item": dataclasses.asdict(plan.item), "status": plan.status, "key": plan.key,
                       "n_frames": plan.n_frames, "duration": plan.duration, "work": plan.work, "feats": plan.feats,
                       "rest": plan.rest,
                       "seconds": plan.seconds, "existing": plan.existing, "overwrite": plan.overwrite,
                       "record": plan.record, "n_shards": len(plan.shards), "warning": plan.warning}, sort_keys=True)


def plan_from_json(text: str, shard_frames: int) -> ItemPlan:
    d = json.loads(text)
    item = CatalogItem(**d["item"])
    shards = plan_shards(item.id, d["n_frames"], shard_frames) if d["status"] == "render" else []
    if d["status"] == "render" and len(shards) != d["n_shards"]:
        raise ValueError(f"plan of {item.id}: {d['n_shards']} shards planned, {len(shards)} at {shard_frames} frames")
    return ItemPlan(item, d["status"], d["key"], n_frames=d["n_frames"], duration=d["duration"], work=d["work"],
                    feats=d["feats"], rest=d.get("rest", ""), shards=shards, seconds=d["seconds"],
                    existing=d["existing"],
                    overwrite=d["overwrite"], record=d["record"], warning=d.get("warning"))


def stale_work(output_root: str, run: str) -> list[str]:
    """`_work/<key>` prefixes of runs with other settings (other run keys): never reused by this
    run, listed in its report for an operator to delete (their segments cannot be stitched with
    this run's)."""
    root = storage.join(output_root, WORK_DIR)
    try:
        return [storage.join(root, name) for name in storage.ls(root) if name != run and not name.startswith(".")]
    except FileNotFoundError:
        return []


def reset_stale_work(work: str, key: dict[str, Any]) -> None:
    """Delete `work` unless it was written for the same input key (its segments are then reusable)."""
    marker = storage.join(work, INPUT_FILE)
    if not storage.exists(marker):
        return
    try:
        same = storage.read_json(marker) == key
    except ValueError:  # corrupt; a storage error propagates (retried) rather than deleting segments
        same = False
    if not same:
        remove_prefix(work)


def remove_prefix(uri: str) -> None:
    """Delete a work prefix and everything under it (absent is fine)."""
    try:
        storage.rm(uri, recursive=True)
    except FileNotFoundError:
        pass


def save_array(uri: str, array: np.ndarray) -> None:
    with storage.atomic_file(uri) as tmp:
        with open(tmp, "wb") as f:  # np.save on a path would append ".npy" to the temp name
            np.save(f, np.ascontiguousarray(array, np.float32))


def load_array(uri: str) -> np.ndarray:
    with storage.local_copy(uri) as path:
        return np.load(path)
