"""Training checkpoints: one directory per checkpoint holding state.pt (+ the metrics so far).

state.pt is `torch.save` of a plain dict (tensors, numbers, strings, lists, dicts only), read back
with `torch.load(..., weights_only=True)`, so loading never runs pickled code:
    format            CHECKPOINT_FORMAT
    syncnet_step      SyncNet steps done
    generator_step    generator steps done
    preset            preset name
    crop_margin       the crop margin m the model was trained with (crop = S + 2m)
    generator_config  GeneratorConfig dict   } the architectures: a resumed run rebuilds the
    syncnet_config    SyncNetConfig dict     } models from these, never from flags
    train_config      TrainConfig dict (of the run that wrote it)
    dataset           {"name", "n_frames", "sha256"}: resuming on another dataset is refused
    syncnet, syncnet_optim, generator, generator_optim      state dicts
    audio_encoder     the encoder whose outputs are the `ave` features (None before stage 1 ends)
    features_from     "syncnet" or "pretrained:<file name>"
    discriminator, discriminator_optim, discriminator_config
                      the mouth discriminator (loss.adversarial > 0), else None; never in a bundle
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from lipsync.errors import InputError
from lipsync.models.pretrained import read_torch_file
from lipsync.train.metrics import METRICS_FILE, MetricsLog

CHECKPOINT_FORMAT = 1
STATE_FILE = "state.pt"
CHECKPOINTS_DIR = "checkpoints"
PREFIX = "ckpt-"


def write_checkpoint(directory: Path, state: dict[str, Any], metrics: MetricsLog) -> Path:
    """Write state.pt, metrics.jsonl and loss_curve.png into `directory` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, **state}, directory / STATE_FILE)
    metrics.write(directory)
    return directory


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], MetricsLog]:
    """(state, metrics) of a checkpoint directory; InputError when it is missing or unreadable."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise InputError(directory, f"not a training checkpoint (no {STATE_FILE})")
    state = read_torch_file(path, "training checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"checkpoint format {state.get('format') if isinstance(state, dict) else None} "
                               f"is not {CHECKPOINT_FORMAT}")
    metrics_path = Path(directory) / METRICS_FILE
    metrics = MetricsLog.from_jsonl(metrics_path.read_text()) if metrics_path.is_file() else MetricsLog()
    return state, metrics


# --- a local run directory: <run_dir>/checkpoints/ckpt-<global step> -------------------------------


def checkpoint_name(global_step: int) -> str:
    return f"{PREFIX}{global_step:08d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Published checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def publish_checkpoint(written: Path, run_dir: Path, global_step: int, keep: int) -> Path:
    """Move a fully written checkpoint directory into the run directory (one rename when on the
    same filesystem), then delete all but the newest `keep` checkpoints."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(global_step)
    staging = root / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.move(str(written), staging)  # may copy across filesystems; the rename below is atomic
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final
