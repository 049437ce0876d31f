"""Benchmark character training on the real Obama clip: does held-out L1 fall, and how fast are steps?

    .venv/bin/python bench/train.py [--minutes 10] [--syncnet-steps 300] [--preset tiny] [--ray-steps 30]

1. Quality: stage 1 (SyncNet, --syncnet-steps), then the generator for --minutes of wall time.
   Held-out validation L1 (the last 10% of the frames, never trained on) at generator step 0 and
   at the end, beside the L1 of the reference-copy baseline (the reference crop used as the
   prediction) and the SyncNet's held-out balanced accuracy.
2. Throughput: generator steps/s under Ray Train with 1 worker (2 CPUs) and 2 workers (1 CPU each,
   DDP over gloo) on a local Ray with --cpus CPUs, --ray-steps generator steps each.
Prints a table and records it in docs/BENCHMARKS.md (section "Training").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import bench_dataset, machine_line, record_section  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--minutes", type=float, default=10.0, help="generator training time budget")
    p.add_argument("--syncnet-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ray-steps", type=int, default=30, help="generator steps per Ray Train throughput run")
    p.add_argument("--workers", default="1,2", help="Ray Train worker counts to time")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray used for the throughput runs")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the quality run")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--no-write", action="store_true", help="do not record in docs/BENCHMARKS.md")
    return p.parse_args()


def quality(dataset: Path, args: argparse.Namespace) -> dict:
    """Held-out L1 before and after a time budget of generator training (one process)."""
    from lipsync.config import TrainConfig, load_config
    from lipsync.train import Trainer

    cfg = load_config(TrainConfig, None, [f"preset={args.preset}", f"syncnet_steps={args.syncnet_steps}",
                                   "generator_steps=1000000", f"batch_size={args.batch_size}", "val_every=100",
                                   "log_every=10", "checkpoint_every=1000000", "device=cpu"])
    deadline: list[float] = []

    def out_of_time() -> bool:
        if trainer.syncnet_step < cfg.syncnet_steps:
            return False
        if not deadline:
            deadline.append(time.monotonic() + 60 * args.minutes)
        return time.monotonic() >= deadline[0]

    trainer = Trainer(cfg, dataset, should_stop=out_of_time)
    trainer.setup()
    t0 = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t0
    final = trainer.validate_generator()
    records = trainer.metrics.records
    start = next(r for r in records if r["stage"] == "generator" and r["stage_step"] == 0)
    gen = [r for r in records if r["stage"] == "generator" and "loss" in r]
    rate = ((gen[-1]["stage_step"] - gen[0]["stage_step"]) / (gen[-1]["time"] - gen[0]["time"])
            if len(gen) > 1 else float("nan"))
    return {
        "syncnet_steps": trainer.syncnet_step,
        "syncnet_val_acc": trainer.metrics.last("syncnet", "val_acc"),
        "generator_steps": trainer.generator_step,
        "val_l1_step0": start["val_l1"],
        "val_l1_final": final["val_l1"],
        "val_l1_reference_copy": start["val_l1_reference_copy"],
        "generator_steps_per_s": rate,
        "seconds": elapsed,
    }


def ray_throughput(dataset: Path, args: argparse.Namespace) -> list[dict]:
    """Generator steps/s with 1 and 2 Ray Train workers (same per-worker batch)."""
    import ray

    from cluster.train import train_on_ray
    from lipsync.config import TrainConfig, load_config
    from lipsync.train.checkpoint import read_checkpoint

    rows = []
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        for n in [int(x) for x in args.workers.split(",")]:
            cfg = load_config(TrainConfig, None, [f"preset={args.preset}", "syncnet_steps=0",
                                           f"generator_steps={args.ray_steps}", f"batch_size={args.batch_size}",
                                           "log_every=5", "val_every=100000", f"checkpoint_every={args.ray_steps}",
                                           "device=cpu"])
            with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
                t0 = time.perf_counter()
                result = train_on_ray(str(dataset), f"{tmp}/bundle", cfg, storage_path=f"{tmp}/ray", name=f"w{n}",
                                      num_workers=n, cpus_per_worker=args.cpus / n, max_failures=0)
                wall = time.perf_counter() - t0
                _, metrics = read_checkpoint(Path(result.checkpoint_uri))
            gen = [r for r in metrics.records if r["stage"] == "generator" and "loss" in r]
            # from the first logged step on: excludes start-up and data loading
            rate = (gen[-1]["stage_step"] - gen[0]["stage_step"]) / (gen[-1]["time"] - gen[0]["time"])
            rows.append({"workers": n, "cpus_per_worker": args.cpus / n, "steps_per_s": rate,
                         "samples_per_s": rate * n * args.batch_size, "wall_s": wall,
                         "steps": result.summary["generator_steps"]})
    finally:
        ray.shutdown()
    return rows


def main() -> int:
    args = parse_args()
    import torch

    dataset = bench_dataset()
    command = "python bench/train.py " + " ".join(sys.argv[1:])
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [machine_line() + f"; load average at start {load}", "", f"Command: `{command.strip()}`; dataset: the 20 s Obama clip (500 frames, "
             f"450 train / 50 held out), preset {args.preset}, batch {args.batch_size}.", ""]
    if not args.skip_quality:
        torch.set_num_threads(args.threads)
        q = quality(dataset, args)
        lines += [
            f"Quality, one process, {torch.get_num_threads()} threads, {args.minutes:g} min generator budget "
            f"after {q['syncnet_steps']} SyncNet steps:",
            "",
            "| measure | value |",
            "|---|---|",
            f"| SyncNet held-out balanced accuracy | {q['syncnet_val_acc']:.3f} |",
            f"| generator steps in budget | {q['generator_steps']} ({q['generator_steps_per_s']:.2f} steps/s) |",
            f"| held-out L1, step 0 | {q['val_l1_step0']:.4f} |",
            f"| held-out L1, after budget | {q['val_l1_final']:.4f} |",
            f"| held-out L1, reference-copy baseline | {q['val_l1_reference_copy']:.4f} |",
            "",
        ]
    if not args.skip_ray:
        rows = ray_throughput(dataset, args)
        lines += [f"Ray Train throughput (local Ray, {args.cpus} CPUs, {args.ray_steps} generator steps, "
                  f"per-worker batch {args.batch_size}):", "",
                  "| workers | CPUs/worker | steps/s | samples/s | wall s (incl. start-up) |", "|---|---|---|---|---|"]
        lines += [f"| {r['workers']} | {r['cpus_per_worker']:g} | {r['steps_per_s']:.3f} | {r['samples_per_s']:.2f} "
                  f"| {r['wall_s']:.0f} |" for r in rows]
        lines.append("")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        record_section("Training", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
