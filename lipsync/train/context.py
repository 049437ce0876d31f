"""Where a training run executes: the few things that differ between one process and Ray Train.

The Trainer only talks to a `RunContext`. `LocalContext` (here) is one process with a local run
directory; `cluster.train.RayTrainContext` maps the same calls onto Ray Train (prepare_model,
prepare_data_loader, ray.train.report / get_checkpoint). The library never imports Ray.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lipsync.errors import InputError
from lipsync.runtime import resolve_device
from lipsync.train import checkpoint as ckpt
from lipsync.train.metrics import CURVE_FILE, METRICS_FILE, MetricsLog


class RunContext:
    """One process, no run directory: nothing is resumed and checkpoints are dropped.

    Subclasses override what their environment provides. All methods are called on every rank.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        return resolve_device(requested)

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Move a model to the device (and, distributed, wrap it for data-parallel training)."""
        return model.to(device)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        """Distributed: give each rank its shard of the data (a DistributedSampler)."""
        return loader

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """A local directory holding the checkpoint to resume from, or None to start fresh."""
        yield None

    def save_checkpoint(self, written: Path | None, global_step: int, metrics: dict[str, Any]) -> None:
        """Publish a checkpoint directory that rank 0 wrote (`written` is None on other ranks)."""

    def write_metrics(self, log: MetricsLog, plot: bool) -> None:
        """Rank 0: make the metrics so far visible (metrics.jsonl; the loss curve when `plot`)."""

    def report(self, metrics: dict[str, Any]) -> None:
        """Called on every rank at each step that logged something (train losses every log_every
        steps, held-out metrics every val_every) and had no checkpoint (a checkpoint carries the
        same values in save_checkpoint). `metrics`: lipsync.train.metrics.report_values plus the
        step counters; only rank 0's hold values. Local runs have metrics.jsonl already: no-op."""

    def on_step(self, global_step: int) -> None:
        """Called after every optimizer step (a hook for tests that inject failures)."""


class LocalContext(RunContext):
    """One process with a run directory: <run_dir>/checkpoints/ckpt-<step>/, metrics.jsonl
    (rewritten at every log line), loss_curve.png (at every checkpoint). `resume=True` continues
    from the newest checkpoint there."""

    def __init__(self, run_dir: str | Path, resume: bool = False, keep: int = 2):
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.keep = keep

    def check(self, overwrite: bool = False) -> None:
        """Refuse to mix runs: an existing run directory needs --resume (or --overwrite to restart)."""
        existing = ckpt.latest_checkpoint(self.run_dir)
        if existing is not None and not self.resume:
            if not overwrite:
                raise InputError(self.run_dir, "run directory holds checkpoints of an earlier run: pass --resume "
                                               "to continue it or --overwrite to start over")
            shutil.rmtree(self.run_dir / ckpt.CHECKPOINTS_DIR)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        yield ckpt.latest_checkpoint(self.run_dir) if self.resume else None

    def save_checkpoint(self, written: Path | None, global_step: int, metrics: dict[str, Any]) -> None:
        if written is not None:
            final = ckpt.publish_checkpoint(written, self.run_dir, global_step, self.keep)
            for name in (METRICS_FILE, CURVE_FILE):  # the run dir's copies: the newest metrics and curve
                shutil.copyfile(final / name, self.run_dir / f".{name}.tmp")
                (self.run_dir / f".{name}.tmp").replace(self.run_dir / name)

    def write_metrics(self, log: MetricsLog, plot: bool) -> None:
        log.write(self.run_dir, plot=plot)
