"""A prepared dataset directory -> torch Datasets for the two training stages.

`load_frames` reads a dataset once: every frame's crop at the preset's crop size (S + 2m) as uint8
(each JPEG is decoded exactly once), and every frame's (80, 16) mel window. The frames are split in
time: the LAST `val_fraction` of them are the validation split and are never trained on (a random
split would leak near-identical neighbouring frames into validation).

Items are dicts of float32 tensors. Model inputs are built by lipsync.data.inputs, the module
render uses too, so a character is rendered exactly as it was trained.

Randomness (reference frames, negative audio) comes from a generator seeded by
(seed, epoch, index), never from global state: an item is a pure function of those three numbers,
so runs repeat exactly and a resumed run sees the batches the interrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lipsync.audio.features import context_stack
from lipsync.audio.mel import mel_windows
from lipsync.config import (
    LEGACY_GEOMETRY_KEYS,
    AudioConfig,
    ConfigError,
    GeometryConfig,
    NegativeSampling,
    from_dict,
    recorded_audio_config,
)
from lipsync.data import layout
from lipsync.data.inputs import generator_input, to_chw
from lipsync.errors import InputError
from lipsync.face import geometry
from lipsync.io import media

ProgressFn = Callable[[int, int], None]

MIN_TRAIN_FRAMES = 2  # a reference must be a different training frame than the target
VAL_EPOCH = -1  # the fixed "epoch" that makes validation items the same at every evaluation


@dataclass(frozen=True)
class Split:
    """Frame indices [0, n_train) train, [n_train, n_frames) validation."""

    n_frames: int
    n_train: int

    @property
    def train(self) -> np.ndarray:
        return np.arange(self.n_train)

    @property
    def val(self) -> np.ndarray:
        return np.arange(self.n_train, self.n_frames)


def val_frames(split: Split, max_frames: int) -> np.ndarray:
    """The held-out frames validation uses: at most `max_frames` of them, evenly spaced."""
    val = split.val
    if val.size <= max_frames:
        return val
    return val[np.linspace(0, val.size - 1, max_frames).round().astype(int)]


def split_frames(n_frames: int, val_fraction: float) -> Split:
    """Hold out the last `val_fraction` of the frames (at least one frame when the fraction > 0)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(np.ceil(n_frames * val_fraction)) if val_fraction > 0 else 0
    if n_frames - n_val < MIN_TRAIN_FRAMES:
        raise ValueError(f"{n_frames} frames leave fewer than {MIN_TRAIN_FRAMES} training frames "
                         f"with val_fraction={val_fraction}")
    return Split(n_frames=n_frames, n_train=n_frames - n_val)


@dataclass
class CharacterFrames:
    """Everything the training stages read from one dataset, in memory."""

    root: Path
    meta: dict
    crops: np.ndarray  # (n, C, C, 3) uint8 BGR, C = size + 2 * margin
    mel_windows: np.ndarray  # (n, n_mels, mel_window) float32, window k belongs to frame k
    size: int  # S: the model's view is crops[:, m:m+S, m:m+S]
    margin: int
    audio: AudioConfig
    geometry: GeometryConfig
    split: Split
    apertures: np.ndarray | None = None  # (n,) float32 inner-lip aperture per frame (geometry.mouth_aperture)

    @property
    def n_frames(self) -> int:
        return len(self.crops)

    def sync_window(self, k: int, offset: int) -> np.ndarray:
        """(n_mels, mel_window): the mel window SyncNet pairs with face k -- that of frame k + offset
        (clamped to the video), see TrainConfig.sync_audio_offset."""
        return self.mel_windows[min(max(k + offset, 0), self.n_frames - 1)]

    def model_view(self, k: int) -> np.ndarray:
        """(S, S, 3) uint8: the inner part of frame k's crop that the model sees and paints."""
        return geometry.inner(self.crops[k], self.margin)

    def shifted_view(self, k: int, dx: int, dy: int) -> np.ndarray:
        """(S, S, 3) uint8: the model view moved by (dx, dy) pixels, |dx|, |dy| <= margin."""
        m, s = self.margin, self.size
        if max(abs(dx), abs(dy)) > m:
            raise ValueError(f"shift ({dx}, {dy}) exceeds the crop margin {m}")
        return self.crops[k][m + dy : m + dy + s, m + dx : m + dx + s]


def dataset_configs(meta: dict) -> tuple[AudioConfig, GeometryConfig]:
    """The audio and geometry configs the dataset was prepared with (recorded in meta.json)."""
    cfg = meta.get("config") or {}
    geometry_data = {k: v for k, v in (cfg.get("geometry") or {}).items() if k not in LEGACY_GEOMETRY_KEYS}
    try:
        return recorded_audio_config(cfg.get("audio")), from_dict(GeometryConfig, geometry_data)
    except ConfigError as exc:
        raise InputError(None, f"dataset meta.json holds an incompatible config: {exc.problem}") from None



def read_crops(root: Path, boxes: np.ndarray, crop_size: int, progress: ProgressFn | None = None) -> np.ndarray:
    """Decode every frame once and keep only its (crop_size, crop_size, 3) uint8 crop."""
    n = len(boxes)
    crops = np.empty((n, crop_size, crop_size, 3), dtype=np.uint8)
    for k in range(n):
        crops[k] = geometry.crop(media.read_image(layout.frame_path(root, k)), boxes[k], crop_size)
        if progress:
            progress(k + 1, n)
    return crops


def load_frames(root: str | Path, size: int, margin: int, val_fraction: float,
                geometry_cfg: GeometryConfig | None = None, progress: ProgressFn | None = None) -> CharacterFrames:
    """Read a prepared dataset directory (validated first) into memory for training.

    `geometry_cfg` overrides the dataset's own geometry; `margin` is the preset's crop margin.
    """
    root = Path(root)
    meta = layout.validate_dataset(root)
    audio_cfg, geometry_cfg_ds = dataset_configs(meta)
    geometry_cfg = geometry_cfg or geometry_cfg_ds
    n = int(meta["n_frames"])
    boxes = np.load(root / layout.BOXES_FILE)
    mel = np.load(root / layout.MEL_FILE)
    if boxes.shape != (n, 4):
        raise InputError(root / layout.BOXES_FILE, f"expected ({n}, 4) boxes, got {boxes.shape}")
    if mel.ndim != 2 or mel.shape[0] != audio_cfg.n_mels:
        raise InputError(root / layout.MEL_FILE, f"expected ({audio_cfg.n_mels}, T) mel, got {mel.shape}")
    try:
        split = split_frames(n, val_fraction)
    except ValueError as exc:
        raise InputError(root, str(exc)) from exc
    landmarks = np.load(root / layout.LANDMARKS_FILE)
    if landmarks.shape[0] != n:
        raise InputError(root / layout.LANDMARKS_FILE, f"expected {n} frames of landmarks, got {landmarks.shape}")
    crops = read_crops(root, boxes, size + 2 * margin, progress)
    return CharacterFrames(root=root, meta=meta, crops=crops, mel_windows=mel_windows(mel, n, audio_cfg),
                           size=size, margin=margin, audio=audio_cfg, geometry=geometry_cfg, split=split,
                           apertures=geometry.mouth_aperture(landmarks))


# --- items -----------------------------------------------------------------------------------------


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    # SeedSequence takes non-negative entries; shift the fixed validation epoch (-1) into range.
    return np.random.default_rng([seed, epoch + 2, index])


# --- stage 1: SyncNet pairs ------------------------------------------------------------------------


def negative_frame(k: int, frames: np.ndarray, rng: np.random.Generator, neg: NegativeSampling) -> int:
    """A frame of `frames` (sorted, contiguous) whose audio does not belong to frame k's face."""
    lo, hi = int(frames[0]), int(frames[-1])
    dist = np.abs(frames - k)
    far = frames[dist >= neg.min_shift]
    if far.size == 0:
        raise ValueError(f"split of {frames.size} frames is too short for negatives {neg.min_shift}+ frames away")
    if rng.random() >= neg.far_fraction:
        shifts = [s for s in range(neg.min_shift, neg.max_shift + 1) for s in (s, -s) if lo <= k + s <= hi]
        if shifts:
            return k + int(shifts[rng.integers(len(shifts))])
    return int(far[rng.integers(far.size)])


class SyncPairs(Dataset):
    """Face/audio pairs for SyncNet. Each frame of `indices` gives 1 + `negatives_per_frame` items:
    first its face with its own mel window (label 1), then the same face with audio from other
    frames of the same split (label 0). Training uses one negative per positive (balanced
    batches); validation may use more to measure the negative side with less noise.

    Items: face (3, S, S) in [0, 1] (the model view; the training step cuts the lower face), mel
    (1, n_mels, mel_window), label (). Face k's own audio is `frames.sync_window(k, audio_offset)`.
    With `augment`, faces are shifted by up to the crop margin and mirrored half of the time (a
    mirrored mouth makes the same sound): 450 frames are few, and SyncNet memorises them otherwise.
    """

    def __init__(self, frames: CharacterFrames, indices: np.ndarray, negatives: NegativeSampling, seed: int,
                 fixed: bool = False, negatives_per_frame: int = 1, audio_offset: int = 0, augment: bool = False):
        self.frames = frames
        self.augment = augment
        self.audio_offset = audio_offset
        self.indices = np.asarray(indices)
        self.negatives = negatives
        self.seed = seed
        self.epoch = VAL_EPOCH if fixed else 0
        self.fixed = fixed
        self.per_frame = 1 + negatives_per_frame
        if self.indices.size < 1 or negatives_per_frame < 1:
            raise ValueError("SyncPairs needs at least one frame and one negative per frame")

    def set_epoch(self, epoch: int) -> None:
        if not self.fixed:
            self.epoch = epoch

    def __len__(self) -> int:
        return self.per_frame * self.indices.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = int(self.indices[i // self.per_frame])
        positive = i % self.per_frame == 0
        rng = item_rng(self.seed, self.epoch, i)
        audio_frame = k if positive else negative_frame(k, self.indices, rng, self.negatives)
        return {
            "face": torch.from_numpy(to_chw(self.face(k, rng))),
            "mel": torch.from_numpy(self.frames.sync_window(audio_frame, self.audio_offset)[None].copy()),
            "label": torch.tensor(1.0 if positive else 0.0),
        }


    def face(self, k: int, rng: np.random.Generator) -> np.ndarray:
        if not self.augment:
            return self.frames.model_view(k)
        m = self.frames.margin
        dx, dy = (int(v) for v in rng.integers(-m, m + 1, size=2))
        view = self.frames.shifted_view(k, dx, dy)
        return view[:, ::-1] if rng.random() < 0.5 else view


# --- stage 2: generator samples --------------------------------------------------------------------


class GeneratorSamples(Dataset):
    """Items for the generator, one per target frame of `indices`.

    input (6, S, S): inputs.generator_input(reference, target view) -- the view of a random OTHER
        training frame (the identity/texture hint) ++ the target's view with the lower face masked
    target (3, S, S): the target's model view, in [0, 1]
    audio (*context_shape): the +-context stack of per-frame audio features
    mel (1, n_mels, mel_window): the window SyncNet pairs with the target (for the sync loss)
    """

    def __init__(self, frames: CharacterFrames, indices: np.ndarray, features: np.ndarray, seed: int,
                 fixed: bool = False, audio_offset: int = 0, reference_unlike: float = 0.0):
        if features.shape[0] != frames.n_frames:
            raise ValueError(f"need one feature row per frame ({frames.n_frames}), got {features.shape}")
        self.frames = frames
        self.indices = np.asarray(indices)
        self.features = features
        self.audio_offset = audio_offset
        self.references = frames.split.train
        self.seed = seed
        self.epoch = VAL_EPOCH if fixed else 0
        self.fixed = fixed
        if reference_unlike > 0 and frames.apertures is None:
            raise ValueError("reference_unlike needs the frames' mouth apertures (CharacterFrames.apertures)")
        self.reference_unlike = reference_unlike

    def set_epoch(self, epoch: int) -> None:
        if not self.fixed:
            self.epoch = epoch

    def __len__(self) -> int:
        return self.indices.size

    def reference_frame(self, i: int, k: int) -> int:
        """A training frame other than k (the references are the contiguous frames 0 .. n_train - 1).

        With probability `reference_unlike` (training targets only) it is drawn from the half of the
        training frames whose mouth aperture is farthest from the target's: a reference whose mouth
        differs from the target's makes copying it pay less, so the mouth has to come from the audio.
        """
        rng = item_rng(self.seed, self.epoch, i)
        n_train = self.references.size
        if k >= n_train:  # a validation target: any training frame
            return int(rng.integers(n_train))
        if self.reference_unlike > 0 and rng.random() < self.reference_unlike:
            return int(rng.choice(self.unlike_references(k)))
        r = int(rng.integers(n_train - 1))
        return r + 1 if r >= k else r  # draw from the other n_train - 1 frames

    def unlike_references(self, k: int) -> np.ndarray:
        """The training frames (k excluded) in the far half by |aperture - aperture of k|."""
        a = self.frames.apertures[: self.references.size]
        distance = np.abs(a - a[k])
        far = np.argsort(distance, kind="stable")[::-1]  # farthest first; k itself (distance 0) is last
        return far[: max(1, (a.size - 1) // 2)]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k = int(self.indices[i])
        view = self.frames.model_view(k)
        ref = self.frames.model_view(self.reference_frame(i, k))
        return {
            "input": torch.from_numpy(generator_input(ref, view, self.frames.geometry)),
            "target": torch.from_numpy(to_chw(view)),
            "audio": torch.from_numpy(context_stack(self.features, k, self.frames.audio)),
            "mel": torch.from_numpy(self.frames.sync_window(k, self.audio_offset)[None].copy()),
            "frame": torch.tensor(k),
        }
