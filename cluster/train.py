"""Character training on Ray Train: the library's Trainer inside `ray.train.torch.TorchTrainer`.

    driver: check inputs -> TorchTrainer(train_loop_per_worker, ScalingConfig, RunConfig).fit()
            -> final checkpoint -> save_bundle (lipsync.train.export_bundle)
    worker: dataset from storage (once per node) -> Trainer(cfg, dataset, RayTrainContext) -> train

Everything model-related is lipsync.train.Trainer; `RayTrainContext` maps its few environment
calls onto Ray Train: `prepare_model` (DDP, gloo on CPU / nccl on GPU), `prepare_data_loader`
(a DistributedSampler per rank), `ray.train.report(metrics, checkpoint=...)` (rank 0 writes the
checkpoint directory, every rank reports; at every log step without a checkpoint the same report
carries losses and held-out metrics, and rank 0 prints them as a `[train] step ...` line in the
job log), and `ray.train.get_checkpoint()` to resume after a
worker failure (FailureConfig(max_failures)) or when a run of the same name is started again on
the same storage path. Checkpoints go to RunConfig(storage_path) -- a local/shared path or
s3://, reached with the same endpoint as lipsync.io.storage (credentials: the nodes' own).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer
from torch import nn
from torch.utils.data import DataLoader

from lipsync import config as config_io
from lipsync.config import PrepareConfig, TrainConfig
from lipsync.data import layout
from lipsync.data.prepare import prepare
from lipsync.errors import InputError, OutputExistsError
from lipsync.io import storage
from lipsync.models import model_preset
from lipsync.train import checkpoint as ckpt
from lipsync.train import export_bundle, local_dataset
from lipsync.train.context import RunContext
from lipsync.train.metrics import report_line
from lipsync.train.preflight import TrainPlan, check_training
from lipsync.train.trainer import Trainer, run_summary

FAILURE_MARKER = "_injected_failure"  # see RayTrainContext.on_step


class RayTrainContext(RunContext):
    """The Trainer's environment inside a Ray Train worker."""

    def __init__(self, fail_at_step: int | None = None, failure_marker: str | None = None):
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.fail_at_step = fail_at_step
        self.failure_marker = failure_marker

    def device(self, requested: str) -> torch.device:
        return ray.train.torch.get_device()  # cuda:<local rank> with use_gpu, else cpu

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        return ray.train.torch.prepare_model(model)  # to the device; DDP when world_size > 1

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return ray.train.torch.prepare_data_loader(loader)  # DistributedSampler when world_size > 1

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with private_copy(checkpoint) as directory:
            yield directory

    def save_checkpoint(self, written: Path | None, global_step: int, metrics: dict[str, Any]) -> None:
        checkpoint = Checkpoint.from_directory(str(written)) if written is not None else None
        self._print(metrics)
        ray.train.report(metrics, checkpoint=checkpoint)

    def report(self, metrics: dict[str, Any]) -> None:
        """Losses and held-out metrics at a log step: ray.train.report on every rank (a barrier), and
        rank 0's line in the job log (worker stdout reaches the driver's log)."""
        self._print(metrics)
        ray.train.report(metrics)

    def _print(self, metrics: dict[str, Any]) -> None:
        if self.is_main and any("/" in k for k in metrics):
            print(report_line(metrics), flush=True)

    def on_step(self, global_step: int) -> None:
        """Testing hook: fail once at `fail_at_step`. The marker in the run's storage survives the
        worker restart, so the retried attempt runs through."""
        if self.fail_at_step is None or global_step != self.fail_at_step or not self.is_main:
            return
        if self.failure_marker is None or storage.exists(self.failure_marker):
            return
        storage.write_text(self.failure_marker, f"failed once at step {global_step}\n")
        raise RuntimeError(f"injected failure at step {global_step} (fail_at_step)")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: read the dataset (cached per node) and run the library's Trainer."""
    cfg = config_io.from_dict(TrainConfig, config["train"])
    dataset_dir = storage.cached_local_dir(config["dataset"])
    context = RayTrainContext(config.get("fail_at_step"), config.get("failure_marker"))
    trainer = Trainer(cfg, dataset_dir, context)
    trainer.setup()
    try:
        trainer.train()
    finally:
        trainer.cleanup()


@contextlib.contextmanager
def private_copy(checkpoint: Checkpoint) -> Iterator[Path]:
    """The checkpoint as a local directory that only this process reads.

    A checkpoint on a local (or shared) filesystem is read where it lies. A remote one is
    downloaded into a temporary directory of this process's own, removed afterwards. Not
    `Checkpoint.as_directory()`: it downloads every process on a node into one shared directory
    (/tmp/checkpoint_tmp_<uuid>), and a rank that takes the download lock after another rank's
    download has finished downloads again over the files that rank is reading -- the resumed
    rank then reads a torn state.pt ("PytorchStreamReader failed reading file", seen in CI with
    two workers on one node).
    """
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    with tempfile.TemporaryDirectory(prefix="lipsync-checkpoint-") as tmp:
        yield Path(checkpoint.to_directory(tmp))


# ---------------------------------------------------------------------------------------------
# driver


@dataclass
class RayTrainResult:
    out: str
    version: str
    checkpoint_uri: str  # the final checkpoint in the run's storage (a path, or s3://...)
    run_name: str
    seconds: float
    summary: dict[str, Any]


def run_storage(storage_path: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: s3:// goes through a pyarrow wrapper around
    lipsync.io.storage's fsspec filesystem, so a custom endpoint and the credentials from the
    environment apply (Ray's default S3 filesystem would ignore LIPSYNC_S3_ENDPOINT)."""
    if not storage.is_remote(storage_path):
        return str(Path(storage.filesystem(storage_path)[1])), None
    fs, path = storage.filesystem(storage_path)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def run_config(storage_path: str, name: str, cfg: TrainConfig, max_failures: int) -> RunConfig:
    path, filesystem = run_storage(storage_path)
    return RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        worker_runtime_env={"env_vars": worker_env()},  # storage endpoint and cache dir (never secrets)
    )


WORKER_ENV_NAMES = (storage.ENDPOINT_ENV, storage.FALLBACK_ENDPOINT_ENV, storage.CACHE_DIR_ENV)


def worker_env() -> dict[str, str]:
    """Non-secret settings the workers need to reach storage the way this driver does.

    Only the S3 endpoint and the cache dir: a runtime_env is written in plain text to Ray's
    session logs (runtime_env_agent.log, job tables), so credentials never go through it.
    Workers get credentials the standard AWS ways: an instance role, the shared credentials
    file (~/.aws/credentials, AWS_SHARED_CREDENTIALS_FILE), or the environment of `ray start`
    on each node (docs/STORAGE.md).
    """
    return {k: os.environ[k] for k in WORKER_ENV_NAMES if os.environ.get(k)}


def train_on_ray(dataset_uri: str, out_uri: str, cfg: TrainConfig, *, storage_path: str, name: str,
                 num_workers: int = 1, use_gpu: bool = False, cpus_per_worker: float = 1.0,
                 max_failures: int = 2, overwrite: bool = False, fail_at_step: int | None = None,
                 on_plan: Callable[[TrainPlan], None] | None = None) -> RayTrainResult:
    """Train a character with `num_workers` data-parallel Ray Train workers; write its bundle.

    Checkpoints go to `<storage_path>/<name>`; starting a run whose name already has checkpoints
    there resumes it. Input problems raise InputError before any worker starts (a split too short
    for the batches or SyncNet's negatives included: lipsync.train.preflight); `on_plan` then gets
    the run's plan.
    """
    started = time.perf_counter()
    # 1. inputs and output
    model_preset(cfg.preset)
    if storage.exists(out_uri) and not overwrite:
        raise OutputExistsError(out_uri)
    dataset_dir = local_dataset(dataset_uri)  # the driver needs the templates for the bundle
    if num_workers < 1:
        raise InputError(None, f"num_workers must be >= 1, got {num_workers}")
    plan = check_training(cfg, layout.read_meta(dataset_dir), dataset_uri, num_workers)  # before any worker
    if on_plan is not None:
        on_plan(plan)
    # 2. train
    loop_config = {"train": config_io.to_dict(cfg), "dataset": str(dataset_uri), "fail_at_step": fail_at_step,
                   "failure_marker": storage.join(storage_path, name, FAILURE_MARKER)}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=run_config(storage_path, name, cfg, max_failures),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name!r} finished without a checkpoint")
    # 3. save: the driver turns the final checkpoint into the bundle
    with private_copy(result.checkpoint) as directory:
        state, metrics = ckpt.read_checkpoint(directory)
    summary = run_summary(state, metrics, num_workers, "cuda" if use_gpu else "cpu")
    version = export_bundle(state, out_uri, dataset_dir, summary, overwrite=overwrite, metrics=metrics)
    return RayTrainResult(out=str(out_uri), version=version, checkpoint_uri=checkpoint_uri(storage_path, result),
                          run_name=name, seconds=time.perf_counter() - started, summary=summary)


def checkpoint_uri(storage_path: str, result: Any) -> str:
    """The final checkpoint as a URI lipsync.io.storage reads (Ray reports a filesystem path)."""
    path = str(result.checkpoint.path)
    return f"{storage.protocol(storage_path)}://{path}" if storage.is_remote(storage_path) else path


def prepare_on_ray(video_uri: str, name: str, dataset_uri: str, cfg: PrepareConfig, overwrite: bool = False) -> str:
    """Run `lipsync.data.prepare.prepare` as one Ray task (on any node; the dataset goes to
    `dataset_uri`, typically s3://). Landmarks are detected sequentially inside that task."""

    @ray.remote(num_cpus=1, runtime_env={"env_vars": worker_env()})
    def prepare_task() -> int:
        return prepare(video_uri, name, dataset_uri, cfg, overwrite=overwrite).n_frames

    ray.get(prepare_task.remote())
    return dataset_uri
