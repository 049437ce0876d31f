"""`train_character`: dataset URI -> character bundle URI in one process (what `lipsync train` runs),
and `export_bundle`, which turns a final training state into a bundle (also used by the Ray driver).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lipsync import config as config_io
from lipsync.audio import frontend
from lipsync.bundle import save_bundle
from lipsync.config import TrainConfig
from lipsync.data import layout
from lipsync.data.dataset import dataset_configs
from lipsync.errors import InputError, OutputExistsError
from lipsync.io import storage
from lipsync.models import (
    AudioEncoder,
    Generator,
    GeneratorConfig,
    SyncNet,
    SyncNetConfig,
    model_preset,
)
from lipsync.runtime import resolve_device
from lipsync.train.context import LocalContext
from lipsync.train.metrics import CURVE_FILE, METRICS_FILE, MetricsLog
from lipsync.train.preflight import TrainPlan, check_training
from lipsync.train.trainer import ProgressFn, StopFn, Trainer


@dataclass
class TrainResult:
    out: str
    version: str
    run_dir: str
    syncnet_steps: int
    generator_steps: int
    seconds: float
    summary: dict[str, Any]


def default_run_dir(out_uri: str) -> Path:
    """Where checkpoints go when no run directory is given: beside a local bundle (`<out>.run`),
    in the local cache for a remote one."""
    if not storage.is_remote(out_uri):
        return Path(str(out_uri).rstrip("/") + ".run")
    digest = hashlib.sha256(str(out_uri).encode()).hexdigest()[:16]
    return storage.default_cache_root() / "runs" / f"{storage.name(out_uri)}-{digest}"


def local_dataset(dataset_uri: str) -> Path:
    """A local directory with the dataset (downloaded once for s3://), validated."""
    try:
        local = storage.cached_local_dir(dataset_uri)
    except FileNotFoundError as exc:
        raise InputError(dataset_uri, "dataset directory not found") from exc
    layout.validate_dataset(local)
    return local


def export_bundle(state: dict[str, Any], out_uri: str, dataset_dir: str | Path, train_info: dict[str, Any],
                  name: str | None = None, overwrite: bool = False, metrics: MetricsLog | None = None) -> str:
    """Rebuild the models from a training state (see lipsync.train.checkpoint) and save a bundle;
    `metrics` (the run's history) goes beside bundle.json as metrics.jsonl and loss_curve.png."""
    if state.get("generator") is None or state.get("audio_encoder") is None:
        raise ValueError("training state has no trained generator / audio encoder yet")
    generator = Generator(config_io.from_dict(GeneratorConfig, state["generator_config"]))
    generator.load_state_dict(state["generator"])
    syncnet = SyncNet(config_io.from_dict(SyncNetConfig, state["syncnet_config"]))
    syncnet.load_state_dict(state["syncnet"])
    encoder = AudioEncoder()
    encoder.load_state_dict(state["audio_encoder"])
    meta = layout.validate_dataset(Path(dataset_dir))
    audio, geometry = dataset_configs(meta)
    backend, weights = frontend.backend_of(state.get("train_config"))  # the front-end the run trained with
    with tempfile.TemporaryDirectory(prefix="lipsync-history-") as tmp:
        extra = {}
        if metrics is not None:
            metrics.write(Path(tmp))
            extra = {n: Path(tmp) / n for n in (METRICS_FILE, CURVE_FILE)}
            train_info = {**train_info, "history": METRICS_FILE, "loss_curve": CURVE_FILE}
        return save_bundle(out_uri, name=name or meta.get("name") or storage.name(out_uri), preset=state["preset"],
                           generator=generator.eval(), audio_encoder=encoder.eval(), syncnet=syncnet.eval(),
                           audio=frontend.audio_config_for(audio, backend), geometry=geometry,
                           dataset_dir=dataset_dir, train_info=train_info, crop_margin=int(state["crop_margin"]),
                           overwrite=overwrite, audio_backend=backend, audio_weights=weights, extra_files=extra)


def train_character(dataset_uri: str, out_uri: str, cfg: TrainConfig, *, run_dir: str | Path | None = None,
                    resume: bool = False, overwrite: bool = False, name: str | None = None,
                    progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                    on_plan: Callable[[TrainPlan], None] | None = None) -> TrainResult:
    """Train a character from a prepared dataset and publish its bundle at `out_uri`.

    Checkpoints go to `run_dir` (default: see default_run_dir); `resume` continues from its
    newest checkpoint. Input problems (missing/incompatible dataset, a split too short for the
    batches or SyncNet's negatives, existing output without `overwrite`, unknown preset or device,
    missing weight files) raise InputError before training starts. `on_plan` gets the run's plan
    (stages and steps) once those checks pass.
    """
    started = time.perf_counter()
    # 1. inputs and output, cheapest checks first; nothing is written before they pass
    model_preset(cfg.preset)
    resolve_device(cfg.device)
    if storage.exists(out_uri) and not overwrite:
        raise OutputExistsError(out_uri)
    dataset_dir = local_dataset(dataset_uri)
    plan = check_training(cfg, layout.read_meta(dataset_dir), dataset_uri)
    context = LocalContext(run_dir or default_run_dir(out_uri), resume=resume, keep=cfg.keep_checkpoints)
    context.check(overwrite=overwrite)
    if on_plan is not None:
        on_plan(plan)
    # 2. train
    trainer = Trainer(cfg, dataset_dir, context, progress=progress, should_stop=should_stop)
    trainer.setup()
    try:
        trainer.train()
        # 3. save
        summary = trainer.summary()
        version = export_bundle(trainer.final_state(), out_uri, dataset_dir, summary, name=name, overwrite=overwrite,
                                metrics=trainer.metrics)
    finally:
        # 4. cleanup
        trainer.cleanup()
    return TrainResult(out=str(out_uri), version=version, run_dir=str(context.run_dir),
                       syncnet_steps=trainer.syncnet_step, generator_steps=trainer.generator_step,
                       seconds=time.perf_counter() - started, summary=summary)
