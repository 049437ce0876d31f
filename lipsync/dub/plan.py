"""Plan one catalog item: validate its audio, decide skip or render, compute features, cut shards.

An item's frames [0, n) are split into shards of `shard_frames`; each shard becomes one encoded
segment, rendered anywhere (render_segment is a pure function of the frame range), stored at

    <output_root>/_work/<run_key>/<item id>/feats.npy         (N, 512) float32 audio features
    <output_root>/_work/<run_key>/<item id>/input.json        the item's input key (below)
    <output_root>/_work/<run_key>/<item id>/seg_<shard:05d>.mp4

`run_key` hashes the settings that change how a segment is cut and encoded (shard size, x264
preset, pixel format), so segments of an earlier, interrupted run with the same settings
are found again and reused. `input.json` guards the rest: when an item's input key changed
(new audio, retrained character, other crf), its old work prefix is deleted before planning.

The input key (also stored in the manifest, see report.py) is what makes a finished output
reusable: sha256 of the audio bytes, the character bundle's version, the render parameters that
change pixels, and the output URI.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lipsync.config import DubConfig, RenderConfig
from lipsync.dub.catalog import CatalogItem
from lipsync.errors import InputError
from lipsync.io import storage

WORK_DIR = "_work"
FEATS_FILE = "feats.npy"
INPUT_FILE = "input.json"
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
                   "pix_fmt": render.pix_fmt, "audio_bitrate": render.audio_bitrate},
        "output": item.output,
    }


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
    shards: list[Shard] = field(default_factory=list)
    seconds: float = 0.0  # time spent planning


def plan_item(item: CatalogItem, *, output_root: str, run: str, cfg: DubConfig, characters: LruCache,
              manifest_entry: dict[str, Any] | None) -> ItemPlan:
    """Plan `item`; raises InputError (bad audio, bad bundle) for the caller to record as failed.

    Steps: (1) fetch the audio and hash it, (2) load the character (cached) for its version and
    audio encoder, (3) skip when the output and an equal manifest key exist, (4) decode and
    validate the audio, (5) reset a stale work prefix, (6) compute and store the features,
    (7) cut shards.
    """
    from lipsync.render import audio_features, load_audio

    started = time.perf_counter()
    # 1. audio bytes
    if not storage.exists(item.audio):
        raise InputError(item.audio, "audio file not found")
    with storage.local_copy(item.audio) as audio_path:
        audio_sha = storage.file_sha256(audio_path)
        # 2. character
        character = characters.get(item.character)
        key = input_key(item, audio_sha, character.version, cfg.render)
        # 3. skip a finished item
        if manifest_entry is not None and manifest_entry.get("key") == key and storage.exists(item.output):
            return ItemPlan(item, "skipped", key, n_frames=int(manifest_entry.get("frames", 0)),
                            seconds=time.perf_counter() - started)
        # 4. decode + validate (empty, corrupt, too long -> InputError), named by the catalog's URI
        try:
            wav = load_audio(audio_path, cfg.render, character.audio.sample_rate)
        except InputError as e:
            raise InputError(item.audio, e.problem) from None
    duration = wav.size / character.audio.sample_rate
    # 5. a work prefix left by a run with other inputs holds segments of other pixels: drop it
    work = work_prefix(output_root, run, item.id)
    reset_stale_work(work, key)
    # 6. features, shared with the render actors through storage
    feats = audio_features(character, wav, cfg.render.feature_batch_size)  # (N, 512)
    feats_uri = storage.join(work, FEATS_FILE)
    save_array(feats_uri, feats)
    storage.write_json(storage.join(work, INPUT_FILE), key)
    # 7. shards
    shards = plan_shards(item.id, len(feats), cfg.shard_frames)
    return ItemPlan(item, "render", key, n_frames=len(feats), duration=duration, work=work, feats=feats_uri,
                    shards=shards, seconds=time.perf_counter() - started)


def reset_stale_work(work: str, key: dict[str, Any]) -> None:
    """Delete `work` unless it was written for the same input key (its segments are then reusable)."""
    marker = storage.join(work, INPUT_FILE)
    if not storage.exists(marker):
        return
    try:
        same = storage.read_json(marker) == key
    except (ValueError, OSError):
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
