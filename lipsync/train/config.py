"""TrainConfig: the run configuration of `lipsync train` and of the Ray Train job (configs/train.yaml).

The architecture is NOT here: it comes from the preset (configs/models.yaml) and is saved into
every checkpoint and bundle. These are the numbers of one training run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from lipsync import config as config_io
from lipsync.data.dataset import NegativeSampling

DEVICES = ("auto", "cpu", "cuda")


def _coerce_float_strings(obj: object) -> None:
    """YAML 1.1 reads `1e-4` (no dot) as a string; accept it for float fields, reject other text."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.type in ("float", float) and isinstance(value, str):
            try:
                object.__setattr__(obj, f.name, float(value))
            except ValueError:
                raise ValueError(f"{type(obj).__name__}.{f.name} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class LossWeights:
    """Generator loss = l1 * L1 + ssim * (1 - SSIM) + sync * syncBCE + vgg * perceptual."""

    l1: float = 1.0
    ssim: float = 0.2
    sync: float = 0.03
    vgg: float = 0.01  # used only when TrainConfig.vgg_weights is set

    def __post_init__(self) -> None:
        _coerce_float_strings(self)


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "tiny"
    syncnet_steps: int = 2000
    generator_steps: int = 10000
    batch_size: int = 8  # generator batch (per worker under Ray Train)
    syncnet_batch_size: int = 32  # face/audio pairs per SyncNet step (half positives)
    lr: float = 1e-3  # generator (Adam)
    syncnet_lr: float = 1e-4  # SyncNet (Adam)
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    seed: int = 0
    val_fraction: float = 0.1  # the LAST 10% of the frames; never trained on
    val_max_frames: int = 256  # validation uses at most this many evenly spaced held-out frames
    checkpoint_every: int = 500  # steps (SyncNet and generator steps are counted together)
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int = 250
    sync_loss_after: int = 0  # generator steps before the sync loss is switched on
    loss: LossWeights = field(default_factory=LossWeights)
    negatives: NegativeSampling = field(default_factory=NegativeSampling)
    val_negatives_per_frame: int = 4  # SyncNet validation: negatives per held-out frame
    # SyncNet pairs face k with the mel window of frame k + sync_audio_offset. The window of frame j
    # starts AT j and spans ~5 frames; -2 centres it on the face. Eval must use the same pairing
    # (bundle.json train.config.sync_audio_offset).
    sync_audio_offset: int = -2
    sync_augment: bool = False  # SyncNet training faces: random shifts within the crop margin + mirroring
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # bf16 autocast for forward passes on CUDA (never on CPU)
    loader_workers: int = 0  # DataLoader worker processes (items are cheap: crops are preloaded)
    vgg_weights: str | None = None  # local path/URI of a torchvision-layout VGG19 state dict
    audio_encoder: str | None = None  # pretrained AudioEncoder (SyncTalk_2D audio_visual_encoder.pth)

    def __post_init__(self) -> None:
        _coerce_float_strings(self)
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        for name in ("syncnet_steps", "generator_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "syncnet_batch_size", "checkpoint_every", "log_every", "val_every",
                     "keep_checkpoints", "val_max_frames", "val_negatives_per_frame"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.syncnet_batch_size % 2:
            raise ValueError("syncnet_batch_size must be even (positives and negatives come in pairs)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        n = self.negatives
        if not 1 <= n.min_shift <= n.max_shift or not 0.0 <= n.far_fraction <= 1.0:
            raise ValueError(f"negatives need 1 <= min_shift <= max_shift and far_fraction in [0, 1], got {n}")

    @property
    def total_steps(self) -> int:
        return self.syncnet_steps + self.generator_steps


def load_train_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """configs/train.yaml (or `path`) plus `key=value` overrides."""
    return config_io.load(TrainConfig, path or "train", overrides)
