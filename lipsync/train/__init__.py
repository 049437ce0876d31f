"""Training: stage 1 SyncNet, stage 2 the generator; one library for `lipsync train` and Ray Train."""

from lipsync.train.api import (
    TrainResult,
    default_run_dir,
    export_bundle,
    local_dataset,
    train_character,
)
from lipsync.train.context import LocalContext, RunContext
from lipsync.train.trainer import Trainer

__all__ = [
    "LocalContext",
    "RunContext",
    "TrainResult",
    "Trainer",
    "default_run_dir",
    "export_bundle",
    "local_dataset",
    "train_character",
]
