"""Benchmark batch dubbing: Ray pipeline with 1 and 2 actors vs rendering the items one by one.

    .venv/bin/python bench/dub.py [--preset st2d-328] [--seconds 4] [--shard-frames 50] [--device cpu]

A catalog of real speech clips (cut to --seconds each) against one character built from 3 s of
the real Obama clip with an untrained generator of --preset (speed does not depend on the
weights). Measures end-to-end frames/s, the share of wall time spent planning and stitching
(goal: stitching < 3%), and compares with `lipsync.render.render` called for each item in turn
in one process. Prints a table and records it in docs/BENCHMARKS.md (its own section).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine_line, media_file, record_section  # noqa: E402

sys.path.insert(0, str(REPO))  # cluster/ (an installed package too, but not in every venv)

SECTION = "Batch dubbing: Ray pipeline vs one-by-one render (bench/dub.py)"
CLIPS = ["sadtalker_RD_Radio34_002.wav", "sadtalker_chinese_news.wav", "iplap_audio2.wav"]
CHARACTER_FRAMES = 75  # 3 s of the Obama clip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="st2d-328", help="generator preset (tiny | st2d-160 | st2d-328)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds of each clip")
    p.add_argument("--shard-frames", type=int, default=50)
    p.add_argument("--actors", default="1,2", help="comma-separated actor counts to run")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per model replica, the same for render() and each actor (CPU)")
    p.add_argument("--work", default="/tmp/lipsync-bench-dub", help="scratch directory (kept between runs)")
    p.add_argument("--no-write", action="store_true", help="do not record the table in docs/BENCHMARKS.md")
    p.add_argument("--baseline-only", default=None, help=argparse.SUPPRESS)  # catalog: run the baseline, print JSON
    p.add_argument("--baseline-out", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def build_character(work: Path, preset: str) -> str:
    """Prepare 3 s of the Obama clip once, then save an untrained `preset` bundle."""
    import torch

    from lipsync.bundle import save_bundle
    from lipsync.config import AudioConfig, GeometryConfig, PrepareConfig
    from lipsync.data.prepare import prepare
    from lipsync.io import media
    from lipsync.models import build_generator, build_syncnet
    from lipsync.models.audio_encoder import AudioEncoder

    bundle = work / f"character_{preset}"
    if bundle.exists():
        return str(bundle)
    ds = work / "obama3s_ds"
    if not ds.exists():
        source = media_file("edtalk_uncrop_Obama.mp4")
        media.write_wav(work / "clip.wav", media.read_audio(source)[: CHARACTER_FRAMES * 16000 // 25])
        with media.VideoWriter(work / "clip.mp4", 450, 450, media.EncodeSettings(crf=12),
                               audio=work / "clip.wav") as w:
            for i, frame in enumerate(media.iter_video_frames(source)):
                if i == CHARACTER_FRAMES:
                    break
                w.write(frame)
        prepare(str(work / "clip.mp4"), "obama3s", str(ds), PrepareConfig())
    torch.manual_seed(0)
    save_bundle(str(bundle), name="obama3s", preset=preset, generator=build_generator(preset),
                audio_encoder=AudioEncoder(), syncnet=build_syncnet(preset), audio=AudioConfig(),
                geometry=GeometryConfig(), dataset_dir=str(ds), train_info={"steps": 0})
    return str(bundle)


def build_catalog(work: Path, character: str, seconds: float) -> tuple[Path, list[dict]]:
    from lipsync.io import media

    rows = []
    for name in CLIPS:
        wav = media.read_audio(media_file(name))[: int(seconds * 16000)]
        path = work / "audio" / f"{Path(name).stem}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        media.write_wav(path, wav)
        rows.append({"id": Path(name).stem, "character": character, "audio": str(path)})
    catalog = work / "catalog.csv"
    with open(catalog, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "character", "audio"])
        writer.writeheader()
        writer.writerows(rows)
    return catalog, rows


def run_sequential_isolated(catalog: Path, out: Path, device: str, threads: int) -> dict:
    """run_sequential in a fresh interpreter (like an actor), not in this process that prepared the
    character (mediapipe, TF Lite thread pools) and ran Ray drivers."""
    cmd = [sys.executable, __file__, "--baseline-only", str(catalog), "--baseline-out", str(out),
           "--device", device, "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"baseline failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_sequential(rows: list[dict], out: Path, device: str, threads: int) -> dict:
    """Each item with lipsync.render.render, one after another, in this process."""
    from lipsync.bundle import load_character
    from lipsync.device import resolve_device
    from lipsync.config import DubConfig, load_config
    from lipsync.render import render
    from lipsync.render.pipeline import prepare_for_inference

    shutil.rmtree(out, ignore_errors=True)
    cfg = dataclasses.replace(load_config(DubConfig).render, device=device, torch_threads=threads)
    started = time.perf_counter()
    character = load_character(rows[0]["character"], device=resolve_device(device))
    prepare_for_inference(character, cfg)
    frames = 0
    for row in rows:
        frames += render(row["character"], row["audio"], str(out / f"{row['id']}.mp4"), cfg,
                         character=character).frames
    wall = time.perf_counter() - started
    return {"mode": "render() one by one", "actors": "-", "frames": frames, "wall_s": wall,
            "fps": frames / wall, "plan_pct": None, "stitch_pct": None, "tail_pct": None}


def run_pipeline(catalog: Path, out: Path, actors: int, shard_frames: int, device: str, threads: int) -> dict:
    import ray

    from cluster.dub import run_dub
    from lipsync.config import DubConfig, load_config

    shutil.rmtree(out, ignore_errors=True)
    cores = os.cpu_count() or 1
    options = {"actors": actors, "shard_frames": shard_frames, "device": device}
    if device == "cpu":
        options["actor_cpus"] = threads
    cfg = load_config(DubConfig, flags=options)
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, logging_level="WARNING")
    ray_init = time.perf_counter() - t0
    try:
        run = run_dub(str(catalog), str(out), cfg)
    finally:
        ray.shutdown()
    report, t = run.report, run.report["timings"]
    assert report["counts"]["ok"] == len(report["items"]), report["counts"]
    total = t["total_s"]
    return {"mode": "ray pipeline", "actors": str(actors), "frames": report["frames_rendered"], "wall_s": total,
            "fps": report["frames_rendered"] / total, "plan_pct": 100 * t["plan_s"] / total,
            "stitch_pct": 100 * t["stitch_s"] / total, "tail_pct": 100 * t["stitch_tail_s"] / total,
            "ray_init_s": ray_init}


def table(results: list[dict], baseline_fps: float) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.1f}%"

    lines = ["| mode | actors | frames | wall s | frames/s | vs one-by-one | plan | stitch (task time) | after last shard |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['actors']} | {r['frames']} | {r['wall_s']:.1f} | {r['fps']:.2f} | "
                     f"{r['fps'] / baseline_fps:.2f}x | {pct(r['plan_pct'])} | {pct(r['stitch_pct'])} | "
                     f"{pct(r['tail_pct'])} |")
    return "\n".join(lines)


def markdown_body(args: argparse.Namespace, results: list[dict], n_items: int, load_at_start: float) -> str:
    from lipsync.config import DubConfig, load_config

    inits = ", ".join(f"{r['actors']} actors: {r['ray_init_s']:.1f} s" for r in results if "ray_init_s" in r)
    command = ("python bench/dub.py " + " ".join(sys.argv[1:])).strip()
    return (
        f"{machine_line()}; 1-min load average at start {load_at_start:.1f} (the machine is shared)\n\n"
        f"Command: `{command}`. Catalog: {n_items} real speech clips x {args.seconds:g} s, character "
        f"`{args.preset}` (untrained weights, {CHARACTER_FRAMES} templates at 450x450), shard {args.shard_frames} "
        f"frames, device {args.device}, crf {load_config(DubConfig).render.crf}; {args.threads} torch thread(s) per model "
        f"replica in every mode (render() and each actor).\n\n"
        f"Pipeline wall time starts after `ray.init` (local Ray start: {inits}). Plan and stitch are shares of "
        f"that wall time: stitch = summed stitch task time (it overlaps rendering), after last shard = wall "
        f"time from the last rendered shard to the end. The one-by-one row is the faster of two runs (before "
        f"and after the pipeline runs), each in a fresh interpreter.\n\n{table(results, results[0]['fps'])}\n"
    )


def main() -> None:
    args = parse_args()
    if args.baseline_only:
        with open(args.baseline_only) as f:
            rows = list(csv.DictReader(f))
        print(json.dumps(run_sequential(rows, Path(args.baseline_out), args.device, args.threads)))
        return
    load_at_start = os.getloadavg()[0]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    character = build_character(work, args.preset)
    catalog, rows = build_catalog(work, character, args.seconds)

    # The baseline runs before and after the pipeline runs and the faster one counts: on a shared
    # machine the load changes while the benchmark runs, and this keeps it from favouring Ray.
    baseline = run_sequential_isolated(catalog, work / "out_sequential", args.device, args.threads)
    results = [run_pipeline(catalog, work / f"out_actors{actors}", actors, args.shard_frames, args.device,
                            args.threads) for actors in (int(a) for a in args.actors.split(","))]
    again = run_sequential_isolated(catalog, work / "out_sequential", args.device, args.threads)
    print(f"one-by-one baseline: {baseline['wall_s']:.1f} s before, {again['wall_s']:.1f} s after the pipeline runs")
    results.insert(0, min(baseline, again, key=lambda r: r["wall_s"]))
    body = markdown_body(args, results, len(rows), load_at_start)
    print(body)
    if not args.no_write:
        record_section(SECTION, body)


if __name__ == "__main__":
    main()
