"""Issue 10: the streaming dub at catalog scale: per-item manifest records, progress record, dry run.

Real Ray (the suite's Ray head, 2 CPUs), real ffmpeg, real speech cut to ~0.3 s (8 frames, one
shard each) from ../shared/media, the tiny untrained character of tests/test_dub_ray.py. Drivers
run as `python jobs/batch_dub.py --address HEAD` subprocesses, so that one can be killed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_dub_ray import character  # noqa: F401 - fixture

from lipsync.config import DubConfig, load_config
from lipsync.dub import manifest
from lipsync.dub.report import Progress, read_manifest, write_manifest
from lipsync.io import media, storage

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["sadtalker_RD_Radio34_002.wav", "sadtalker_chinese_news.wav"]
CLIP_S = 0.3  # 7.5 -> 8 frames: one shard of 25
DRIVER_TIMEOUT_S = 240


def test_manifest_records_merge_over_a_legacy_manifest_and_eta(tmp_path):
    """Pure logic: records override legacy entries, corrupt records are ignored; the ETA counts
    unplanned items at the planned mean."""
    from lipsync.dub.progress import eta_seconds, remaining_frames

    root = str(tmp_path)
    write_manifest(root, {"a": {"output": "a-old"}, "b": {"output": "b"}})
    assert manifest.write_record(root, "a", {"output": "a-new"}) > 0
    manifest.write_record(root, "c", {"output": "c"})
    (tmp_path / "_manifest" / "d.json").write_text("{not json")
    assert manifest.read_all(root) == {"a": {"output": "a-new"}, "b": {"output": "b"}, "c": {"output": "c"}}
    assert manifest.read_entry(root, "b", read_manifest(root)["b"]) == {"output": "b"}
    assert manifest.read_entry(root, "d", None) is None
    from lipsync.dub.plan import stale_work

    (tmp_path / "_work" / "otherkey" / "x").mkdir(parents=True)
    (tmp_path / "_work" / "thiskey").mkdir()
    assert stale_work(root, "thiskey") == [str(tmp_path / "_work" / "otherkey")]
    p = Progress(items_total=10, frames_total=400, frames_done=100, started=time.monotonic() - 10.0)
    assert remaining_frames(p, items_planned=4, items_pending=6) == 300 + 100 * 6
    assert 89.0 < eta_seconds(p, 4, 6) < 91.0  # 900 frames at ~10 frames/s


@pytest.fixture(scope="module")
def short_audio(tmp_path_factory, media_dir) -> list[Path]:
    """Ten 0.3 s cuts of real speech at different offsets."""
    root = tmp_path_factory.mktemp("short_audio")
    paths = []
    for i in range(10):
        wav = media.read_audio(media_dir / SOURCES[i % 2])
        start = int((0.2 + 0.35 * (i // 2)) * 16000)
        paths.append(root / f"s{i}.wav")
        media.write_wav(paths[-1], wav[start:start + int(CLIP_S * 16000)])
    return paths


def write_catalog(path: Path, bundle: str, audio: list[Path], ids: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "character", "audio", "crf"])
        w.writeheader()
        w.writerows({"id": i, "character": bundle, "audio": str(a), "crf": 18} for i, a in zip(ids, audio))
    return path


def start_driver(ray_head, catalog: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "jobs/batch_dub.py", "--catalog", str(catalog), "--output-root", str(out),
            "--address", ray_head.gcs_address, "--shard-frames", "25", "--actors", "1", "--device", "cpu", *extra]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=DRIVER_TIMEOUT_S)
    return proc.returncode, out.decode(errors="replace")


def reports(out: Path) -> list[Path]:
    return sorted((out / "_reports").glob("*.json")) if (out / "_reports").exists() else []


@pytest.mark.integration
@pytest.mark.media
def test_dry_run_then_an_interrupted_run_then_a_rerun_that_skips_exactly_the_finished_items(
        ray_head, character, short_audio, tmp_path, capsys):  # noqa: F811
    sys.path.insert(0, str(REPO / "jobs"))
    import batch_dub

    out = tmp_path / "out"
    ids = [f"item{i}" for i in range(8)]
    catalog = write_catalog(tmp_path / "catalog.csv", character, short_audio, ids)

    # --dry-run: plans every row, renders and writes nothing
    assert batch_dub.main(["--catalog", str(catalog), "--output-root", str(out), "--shard-frames", "25",
                           "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "items 8: 8 to render, 0 skipped" in printed and "estimated render time" in printed, printed
    assert not out.exists()
    from lipsync.dub.dryrun import dry_run

    planned = dry_run(str(catalog), str(out), load_config(DubConfig, overrides=["shard_frames=25"]))
    assert (planned.to_render, planned.shards) == (8, 8) and f"frames to render {planned.frames} " in printed

    # a run whose driver is killed once some items are published; its progress record stays
    proc = start_driver(ray_head, catalog, out, "--set", "progress_record_interval_s=0.5")
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    progress_seen: dict | None = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            records = list((out / "_manifest").glob("*.json")) if (out / "_manifest").exists() else []
            for p in reports(out):
                if p.name.endswith("-progress.json") and progress_seen is None:
                    progress_seen = json.loads(p.read_text())
            if len(records) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be interrupted: " + finish(proc)[1][-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver only (its own session); Ray reaps its workers
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert progress_seen is not None, "no progress record while the run ran"
    assert {"ok", "failed", "planned", "total"} <= set(progress_seen["counts"]) and "eta_s" in progress_seen
    assert progress_seen["counts"]["total"] == 8
    published = {p.stem for p in out.glob("item*.mp4")}
    assert 2 <= len(published) < 8, published
    left = reports(out)
    assert [p.name for p in left if not p.name.endswith("-progress.json")] == []  # no final report ...
    assert any(p.name.endswith("-progress.json") for p in left)  # ... but an account of the run

    # the dry run now counts the published items as skips
    again = dry_run(str(catalog), str(out), load_config(DubConfig, overrides=["shard_frames=25"]))
    assert again.skipped == len(published) and again.to_render == 8 - len(published)

    # the re-run skips exactly the finished items and renders the others
    rc, log = finish(start_driver(ray_head, catalog, out))
    assert rc == 0, log[-3000:]
    final = [p for p in reports(out) if not p.name.endswith("-progress.json")]
    assert len(final) == 1
    report = json.loads(final[0].read_text())
    status = {r["id"]: r["status"] for r in report["items"]}
    assert {i for i, s in status.items() if s == "skipped"} == published, (status, published)
    assert all(s == "ok" for i, s in status.items() if i not in published)
    assert all(r["segments_rendered"] == 0 for r in report["items"] if r["status"] == "skipped")
    # the dry run's frame count is the real run's
    assert sum(r["frames"] for r in report["items"]) == planned.frames
    assert sorted(manifest.read_all(str(out))) == sorted(ids)
    assert report["manifest_bytes_written"] > 0 and report["stale_work"] == []
    assert not (out / "_reports" / (final[0].stem + "-progress.json")).exists()  # superseded by the report


@pytest.mark.integration
@pytest.mark.media
def test_two_concurrent_runs_over_disjoint_halves_keep_all_their_manifest_entries(
        ray_head, character, short_audio, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    ids = [f"half{i}" for i in range(6)]
    cats = [write_catalog(tmp_path / f"cat{k}.csv", character, short_audio[3 * k:3 * k + 3], ids[3 * k:3 * k + 3])
            for k in range(2)]
    # half a CPU per actor and per plan task: two drivers fit on the 2-CPU head at once
    shares = ["--set", "actor_cpus=0.5", "--set", "plan_cpus=0.5"]
    procs = [start_driver(ray_head, c, out, *shares) for c in cats]
    results = [finish(p) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], [log[-2000:] for _, log in results]
    entries = manifest.read_all(str(out))
    assert sorted(entries) == ids
    for item_id, entry in entries.items():
        assert entry["sha256"] == storage.file_sha256(out / f"{item_id}.mp4")
    assert len([p for p in reports(out) if not p.name.endswith("-progress.json")]) == 2


# --- cold start (time to the first shard) -----------------------------------------------------------


def test_importing_the_dub_module_leaves_out_the_heavy_libraries_no_worker_needs_at_start():
    """Every plan, render and stitch worker imports cluster.dub before its first row, and the
    driver imports it first of all: it must not bring torch (the model code is imported inside
    what runs on workers), the evaluation stack (torchmetrics, transformers, matplotlib) or
    scipy.signal/librosa.core (measured: 4.2 s of a cold worker's start, 2 s of the driver's;
    docs/BENCHMARKS.md "Cold start")."""
    heavy = ["torch", "torchmetrics", "transformers", "matplotlib", "scipy.signal", "librosa.core", "numba",
             "onnxruntime", "mediapipe", "lipsync.render", "lipsync.bundle"]
    code = ("import sys, cluster.dub, lipsync.dub.plan, lipsync.audio.loudness; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"cluster.dub imports {out.stdout.strip()} at start"


def test_the_audio_package_exports_load_on_first_use():
    import lipsync.audio as audio
    from lipsync.audio import MelStream, frame_features
    from lipsync.audio.frontend import frame_features as direct
    from lipsync.audio.mel import MelStream as direct_stream

    assert frame_features is direct and MelStream is direct_stream
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        audio.no_such_name  # noqa: B018


def test_first_characters_are_the_distinct_characters_of_the_first_rows_up_to_the_cache():
    from cluster.dub import first_characters
    from lipsync.dub.catalog import CatalogItem

    items = [CatalogItem(f"i{k}", c, "a.wav", f"o{k}.mp4", row=k + 1) for k, c in enumerate("abacdb")]
    cfg = load_config(DubConfig, overrides=["character_cache=2"])
    assert first_characters(items, cfg) == ("a", "b")
    assert first_characters(items, load_config(DubConfig, overrides=["character_cache=8"])) == ("a", "b", "c", "d")
    assert first_characters(items, cfg, rows=1) == ("a",)
    assert first_characters([], cfg) == ()


def test_the_catalog_is_parsed_without_the_cyclic_collector_and_frozen_after():
    """_long_lived_objects: no collection inside (a cycle made there survives), the objects frozen
    after it, the collector's state restored (also when it was off before)."""
    import gc
    import weakref

    from cluster.dub import _long_lived_objects

    class Node:
        pass

    assert gc.isenabled()
    try:
        with _long_lived_objects():
            assert not gc.isenabled()
            node = Node()
            node.self = node  # a cycle only the collector could free
            ref = weakref.ref(node)
            del node
            assert ref() is not None
        assert gc.isenabled() and gc.get_freeze_count() > 0
        gc.collect()
        assert ref() is not None  # frozen: later collections do not scan it
        gc.disable()
        with _long_lived_objects():
            pass
        assert not gc.isenabled()
        gc.enable()
        gc.unfreeze()
        with pytest.raises(ValueError), _long_lived_objects():
            raise ValueError("a rejected catalog")
        assert gc.isenabled() and gc.get_freeze_count() == 0  # nothing frozen for a run that never started
    finally:
        gc.enable()
        gc.unfreeze()
    gc.collect()
    assert ref() is None  # unfrozen, the cycle is collected


def test_the_catalog_goes_to_the_pipeline_in_contiguous_chunks_with_their_legacy_entries():
    """Every item once, in catalog order, in at most `chunks` rows; each chunk carries only its
    own items' legacy manifest entries; PlanRows reads a chunk back item by item."""
    import json
    import pickle

    from cluster.dub import catalog_rows
    from lipsync.dub.catalog import CatalogItem

    items = [CatalogItem(f"i{k}", "c", f"a{k}.wav", f"o{k}.mp4", row=k + 1, crf=k % 3 or None) for k in range(11)]
    legacy = {"i1": {"frames": 1}, "i9": {"frames": 9}, "gone": {"frames": 0}}
    for chunks, expected in ((4, [3, 3, 3, 2]), (1, [11]), (50, [1] * 11)):
        rows = catalog_rows(items, legacy, chunks)
        parts = [pickle.loads(r["items"]) for r in rows]
        assert [len(p) for p in parts] == expected
        assert [i for p in parts for i in p] == items
        for part, row in zip(parts, rows):
            assert json.loads(row["legacy"]) == {i.id: legacy[i.id] for i in part if i.id in legacy}
    assert catalog_rows([], legacy, 4) == []


@pytest.mark.media
def test_a_render_actor_loads_its_first_characters_at_start_and_survives_one_that_does_not_load(
        character, tmp_path):  # noqa: F811
    from cluster.dub import RenderShards

    cfg = load_config(DubConfig, overrides=["device=cpu"])
    missing = str(tmp_path / "no_such_character")
    actor = RenderShards(cfg, "cpu", warm=(missing, character))
    assert actor.characters.loads == 1  # the good one, loaded (and warmed up) before any row
    actor.characters.get(character)
    assert actor.characters.loads == 1  # the first shard of it does not load it again
