"""Benchmark the batch dub at catalog scale: cost per item from 100 to 10,000 items (issue 10).

    .venv/bin/python bench/dub_scale.py --items 100,1000            # real runs (embedded Ray, tiny preset)
    .venv/bin/python bench/dub_scale.py --driver-only 100000        # the driver's bookkeeping alone
    .venv/bin/python bench/dub_scale.py --head --first-shard-only --items 100,10000,100000  # cold start alone
    .venv/bin/python bench/dub_scale.py --head --first-shard-only --items 100,100000 --repeat 5  # its spread

Real runs: a catalog of N items of 0.2-0.4 s of real speech (cut from ../shared/media clips at
different offsets; 50 distinct cuts shared by the rows), one tiny untrained character built from
3 s of the Obama clip, shard 25 frames (one shard per item), 1 actor, device cpu, embedded Ray.
Each size runs in a fresh child process (its own peak RSS: VmHWM). Prints per-item wall time, driver peak RSS,
manifest bytes written (every write under _manifest*, counted in the driver), the time to the
first rendered shard (from before Ray starts to the driver seeing the first shard row; and from
the job's start: plus the driver's own imports, timed in the child, which imports only what a
job's driver does: the parent builds the character and the cuts) and the plan share.

--head: each size runs against its own `ray start --head` (2 CPUs, started before the clock, stopped
by its process group; tests/servers.py starts it), as `ray job submit` finds its cluster: run_dub
connects instead of starting a private Ray, so the first-shard time is the job's own cold start.

--code DIR runs another checkout's cluster/ and lipsync/ (e.g. a copy of the code before issue
10) with the same catalog; --driver-only N feeds N synthetic shard rows through the driver's
bookkeeping (plan rows, per-item manifest records to a local dir, result spool, final report),
no Ray, no rendering.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import media_file, peak_rss_mb

HERE = Path(__file__).resolve().parent
CUTS = 50


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", default="100,1000", help="comma-separated catalog sizes")
    p.add_argument("--work", default="/tmp/lipsync-bench-scale")
    p.add_argument("--code", default=None, help="checkout whose cluster/ and lipsync/ to run (default this one)")
    p.add_argument("--driver-only", type=int, default=0, help="items for the driver-only measurement")
    p.add_argument("--legacy-manifest", type=int, default=0,
                   help="items for the cost of the old whole-file manifest rewrite (measured alone)")
    p.add_argument("--head", action="store_true", help="run against a separate Ray head (ray job submit's case)")
    p.add_argument("--first-shard-only", action="store_true",
                   help="stop each run once its first shard is rendered: the cold start alone, at any catalog size")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the sizes this many times, interleaved (1,2,..,1,2,..), and print min/median/max per size")
    p.add_argument("--address", default=None, help=argparse.SUPPRESS)  # child: the head's GCS address
    p.add_argument("--character", default=None, help=argparse.SUPPRESS)  # child: the bundle the parent made
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child: one real run, JSON out
    p.add_argument("--stop-at-first", action="store_true", help=argparse.SUPPRESS)  # child: --first-shard-only
    return p.parse_args()


def make_cuts(work: Path) -> list[Path]:
    """The CUTS speech cuts under work/cuts (made once: a child run only names them, so it imports
    no more than a job's driver does)."""
    out = work / "cuts"
    paths = [out / f"c{i:02d}.wav" for i in range(CUTS)]
    if all(p.exists() for p in paths):
        return paths
    from lipsync.io import media

    out.mkdir(parents=True, exist_ok=True)
    sources = [media.read_audio(media_file(n)) for n in ("sadtalker_RD_Radio34_002.wav", "sadtalker_chinese_news.wav")]
    for i, path in enumerate(paths):
        if not path.exists():
            wav = sources[i % 2]
            seconds = 0.2 + 0.2 * ((i * 7) % 10) / 9  # 0.2 .. 0.4 s
            start = int((0.3 + 0.17 * i) * 16000) % (len(wav) - 16000)
            media.write_wav(path, wav[start:start + int(seconds * 16000)])
    return paths


def write_catalog(path: Path, character: str, cuts: list[Path], n: int) -> Path:
    with open(path, "w") as f:
        f.write("id,character,audio\n")
        f.writelines(f"it{i:06d},{character},{cuts[i % len(cuts)]}\n" for i in range(n))
    return path


def count_manifest_bytes() -> list[int]:
    """Count bytes written under _manifest* by this process (old and new code write through these)."""
    from lipsync.io import storage

    written = [0]
    original = storage.write_text

    def write_text(uri, text, encoding="utf-8"):
        if "/_manifest" in str(uri):
            written[0] += len(text.encode(encoding))
        return original(uri, text, encoding)

    storage.write_text = write_text
    return written


class FirstShard(Exception):
    """Raised by the progress callback of a --first-shard-only run: the cold start is measured."""


def one_run(n: int, work: Path, character: str, address: str | None = None, stop_at_first: bool = False) -> dict:
    """Child process: one real run of n items; JSON on stdout. The character and the cuts were made
    by the parent, so this process imports what a job's driver imports, no more (RSS, import time).
    `stop_at_first`: the run is abandoned once the first shard is in (the process exits; the head
    that ran it is stopped by the parent)."""
    t_imports = time.monotonic()
    from cluster.dub import run_dub
    from lipsync.config import DubConfig, load_config

    imports_s = time.monotonic() - t_imports
    cuts = make_cuts(work)
    run_dir = Path(tempfile.mkdtemp(prefix=f"n{n}-", dir=work))
    catalog = write_catalog(run_dir / "catalog.csv", character, cuts, n)
    cfg = load_config(DubConfig, overrides=["shard_frames=25", "actors=1", "device=cpu", "render.crf=23"])
    written = count_manifest_bytes()
    first: list[float] = []
    t0 = time.monotonic()

    def progress(p) -> None:
        if p.frames_done and not first:
            first.append(time.monotonic() - t0)
            if stop_at_first:
                raise FirstShard

    def cold_start() -> dict:
        return {"items": n, "first_shard_s": first[0] if first else None, "driver_imports_s": imports_s,
                "first_shard_from_job_start_s": imports_s + first[0] if first else None,
                "peak_rss_mb": peak_rss_mb(), "ray": "connected to a head" if address else "embedded"}

    if stop_at_first:
        try:
            run_dub(str(catalog), str(run_dir / "out"), cfg, progress=progress, address=address)
        except FirstShard:
            pass
        return cold_start()
    run = run_dub(str(catalog), str(run_dir / "out"), cfg, progress=progress, address=address)
    wall = time.monotonic() - t0
    t = run.report["timings"]
    return {**cold_start(), "ok": run.report["counts"]["ok"], "frames": run.report["frames_rendered"],
            "wall_s": wall, "per_item_s": wall / n, "manifest_bytes": written[0],
            "plan_share": t.get("plan_s", 0) / t["total_s"], "ray_init_s": t.get("ray_init_s", 0)}


def driver_only(n: int) -> dict:
    """The driver's bookkeeping for n one-shard items, no Ray, no rendering."""
    from cluster import dub as D
    from lipsync.config import DubConfig, load_config
    from lipsync.dub import plan as P
    from lipsync.dub.catalog import CatalogItem
    from lipsync.dub.stitch import StitchResult

    cfg = load_config(DubConfig, overrides=["shard_frames=25"])
    root = tempfile.mkdtemp(prefix="driver-only-")
    written = count_manifest_bytes()
    rss0 = peak_rss_mb()
    t0 = time.monotonic()
    driver = D._Driver(n, "catalog.csv", root, cfg, None)
    key = {"format": 1, "audio_sha256": "0" * 64, "bundle_version": "v" * 16,
           "params": {"start_frame": 0, "crf": 20, "preset": "veryfast", "pix_fmt": "yuv420p", "audio_bitrate": "128k"}}
    for i in range(n):
        item = CatalogItem(f"it{i:06d}", "/chars/obama", f"/audio/{i}.wav", f"{root}/it{i:06d}.mp4", row=i + 1)
        plan = P.ItemPlan(item, "render", {**key, "output": item.output}, n_frames=8, duration=0.3,
                          work=f"{root}/_work/k/{item.id}", feats=f"{root}/_work/k/{item.id}/feats.npy",
                          shards=P.plan_shards(item.id, 8, 25), seconds=0.01)
        (row,) = D.shard_rows([plan], cfg)
        driver._on_row({**D.row_passport(row), "frames": 8, "reused": False, "seconds": 0.05, "error": ""})
        driver._pump_stitches = lambda block: None  # no Ray: "stitch" at once
        item_id = driver.stitch_queue.pop(0)
        driver._on_stitch_result(item_id, StitchResult(item.output, 8, 0.3, 0.02, 12345, "f" * 64))
    t_items = time.monotonic() - t0
    results = driver._spooled_results()
    report = D.build_report(items=results, run={}, timings={"total_s": 1.0})
    D.write_report(f"{root}/_reports/r.json", report)
    total = time.monotonic() - t0
    return {"items": n, "bookkeeping_s": t_items, "per_item_us": 1e6 * t_items / n, "report_s": total - t_items,
            "total_s": total, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0, "manifest_bytes": written[0],
            "report_bytes": os.path.getsize(f"{root}/_reports/r.json")}


def legacy_manifest(n: int) -> dict:
    """The pre-issue-10 manifest: the whole _manifest.json rewritten after each of n items."""
    from lipsync.dub.report import manifest_entry, write_manifest

    root = tempfile.mkdtemp(prefix="legacy-manifest-")
    written = count_manifest_bytes()
    entries: dict = {}
    t0 = time.monotonic()
    for i in range(n):
        entries[f"it{i:06d}"] = manifest_entry({"format": 1, "audio_sha256": "0" * 64}, f"{root}/it{i:06d}.mp4", 8,
                                               12345, "f" * 64)
        write_manifest(root, entries)
    return {"items": n, "legacy_manifest_s": time.monotonic() - t0, "manifest_bytes": written[0]}


def start_head():
    """A 2-CPU `ray start --head` in its own process group (the tests' helper; stopped by the caller)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from servers import start_ray_head

    return start_ray_head(num_cpus=2)


def main() -> int:
    args = parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    code = Path(args.code).resolve() if args.code else HERE.parent
    sys.path[:0] = [str(HERE), str(code)]
    if args.one:
        result = one_run(args.one, work, args.character, args.address, args.stop_at_first)
        print("RESULT " + json.dumps(result), flush=True)
        if args.stop_at_first:
            os._exit(0)  # the abandoned run's Ray Data threads would hold the interpreter open
        return 0
    if args.legacy_manifest:
        print(json.dumps(legacy_manifest(args.legacy_manifest)), flush=True)
        return 0
    if args.driver_only:
        print(json.dumps(driver_only(args.driver_only)), flush=True)
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(HERE)]), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}  # as the tests: the --head Ray runs without token auth
    from dub import build_character

    character = build_character(work, "tiny")
    make_cuts(work)
    sizes = [int(x) for x in args.items.split(",")] * max(1, args.repeat)
    results: list[dict] = []
    for n in sizes:
        head = start_head() if args.head else None
        try:
            proc = subprocess.run([sys.executable, str(code / "bench" / "dub_scale.py"), "--one", str(n), "--work",
                                   str(work), "--code", str(code), "--character", character]
                                  + (["--address", head.gcs_address] if head else [])
                                  + (["--stop-at-first"] if args.first_shard_only else []),
                                  cwd=code, env=env, capture_output=True, text=True, check=False)
        finally:
            if head is not None:
                head.stop()
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        result = lines[-1][len("RESULT "):]
        print(result, flush=True)
        results.append(json.loads(result))
    if args.repeat > 1:
        print(first_shard_table(results))
    return 0


def first_shard_table(results: list[dict]) -> str:
    """Markdown: per catalog size, the first shard from the job start over the repeats (min / median / max)."""
    rows = ["| items | runs | first shard from the job start: min / median / max s |", "|---|---|---|"]
    for n in dict.fromkeys(r["items"] for r in results):
        times = sorted(r["first_shard_from_job_start_s"] for r in results
                       if r["items"] == n and r["first_shard_from_job_start_s"] is not None)
        if not times:
            rows.append(f"| {n:,} | 0 | no shard rendered |")
            continue
        rows.append(f"| {n:,} | {len(times)} | {times[0]:.1f} / {statistics.median(times):.1f} / {times[-1]:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
