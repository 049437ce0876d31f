"""The character bundle: everything render needs to dub with one trained character.

A directory URI (local or s3://), published atomically (storage.atomic_dir):
    bundle.json              {"bundle_format": 1, "name", "preset", "version", "generator", "syncnet",
                              "audio", "audio_features", "geometry", "crop_margin", "n_templates", "frame_size",
                              "dataset_meta", "train"}
    generator.safetensors    audio_encoder.safetensors    syncnet.safetensors (absent if no SyncNet)
    metrics.jsonl            loss_curve.png    the training history (absent in bundles saved without one)
    templates/full_body_img/{i}.jpg   templates/boxes.npy (n, 4) int32   templates/landmarks.npy (n, 468, 2)

`version` is the sha256 over the weight files (name and bytes, in WEIGHT_FILES order): two
bundles with the same version hold the same weights, and `load_character` refuses weights that
do not match it (a corrupt or partly replaced bundle). See docs/ARCHITECTURE.md.

"audio_features" {"backend": "ave" | "hubert" | "wenet", "weights": the path as given to train} is the
audio front-end the character was trained with; render and dub always use it (docs/AUDIO.md). The
hubert / wenet weights are not copied into the bundle (they are large and shared by characters):
they are loaded from that path when features are first computed. Bundles without the key are `ave`.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipsync import config as config_io
from lipsync.audio import frontend
from lipsync.config import (
    LEGACY_AUDIO_DEFAULTS,
    LEGACY_GEOMETRY_KEYS,
    AudioConfig,
    ConfigError,
    GeometryConfig,
    RenderConfig,
)
from lipsync.data import layout
from lipsync.errors import InputError, OutputExistsError
from lipsync.io import media, storage
from lipsync.models import (
    AudioEncoder,
    Generator,
    GeneratorConfig,
    SyncNet,
    SyncNetConfig,
    load_state,
    model_preset,
    save_state,
)

BUNDLE_FORMAT = 1
BUNDLE_FILE = "bundle.json"
GENERATOR_FILE = "generator.safetensors"
AUDIO_ENCODER_FILE = "audio_encoder.safetensors"
SYNCNET_FILE = "syncnet.safetensors"
WEIGHT_FILES = (GENERATOR_FILE, AUDIO_ENCODER_FILE, SYNCNET_FILE)
TEMPLATES_DIR = "templates"


@dataclass
class Character:
    """A loaded bundle: models in eval mode on one device, plus the template frames."""

    name: str
    preset: str
    version: str
    generator: nn.Module
    audio_encoder: nn.Module
    syncnet: nn.Module | None
    generator_config: GeneratorConfig
    audio: AudioConfig
    geometry: GeometryConfig
    template_dir: Path  # local dir holding full_body_img/{i}.jpg
    boxes: np.ndarray  # (n, 4) int32
    landmarks: np.ndarray  # (n, 468, 2) float32
    margin: int  # crop margin m: the model sees crop[m:m+S, m:m+S] of the (S+2m)^2 crop (from the preset)
    frame_size: tuple[int, int] = (0, 0)  # (width, height) of the template frames
    frames_without_face: frozenset[int] = frozenset()  # templates render writes unchanged
    footage_pauses: frozenset[int] = frozenset()  # templates inside a pause of the footage's audio (VAD)
    train: dict[str, Any] = field(default_factory=dict)  # bundle.json "train": the run's summary and config
    audio_backend: str = "ave"  # bundle.json "audio_features": the front-end the character was trained with
    audio_weights: str | None = None  # its local weights (hubert / wenet), loaded on first use
    _frontend: Any = field(default=None, repr=False)
    compiled_generator: Any = field(default=None, repr=False)  # lipsync.render.backend, set by prepare_for_inference

    def audio_frontend(self) -> Any:
        """The model `lipsync.audio.frame_features` runs: the AudioEncoder for `ave`, else the
        hubert / wenet model loaded (once) from `audio_weights` on the audio encoder's device."""
        if self.audio_backend == "ave":
            return self.audio_encoder
        if self._frontend is None:
            device = next(self.audio_encoder.parameters()).device
            self._frontend = frontend.load_frontend(self.audio_backend, self.audio_weights, device)
        return self._frontend

    def template_path(self, i: int) -> Path:
        return layout.frame_path(self.template_dir, i)

    @property
    def n_templates(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def size(self) -> int:
        """S: the side of the model's input and output crop."""
        return self.generator_config.size

    @property
    def crop_size(self) -> int:
        """S + 2 * margin: the crop cut from a frame, of which the model sees the inner S x S."""
        return self.generator_config.size + 2 * self.margin


def weights_version(directory: Path) -> str:
    """sha256 over the weight files present in `directory` (file name, then bytes, in WEIGHT_FILES order)."""
    h = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = Path(directory) / name
        if not path.is_file():
            continue
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _copy_templates(dataset_dir: Path, dest: Path, n_frames: int) -> None:
    """The dataset's frames, boxes and landmarks become the bundle's templates."""
    (dest / layout.FRAMES_DIR).mkdir(parents=True)
    for i in range(n_frames):
        shutil.copyfile(layout.frame_path(dataset_dir, i), dest / layout.FRAMES_DIR / f"{i}.jpg")
    boxes = np.load(dataset_dir / layout.BOXES_FILE).astype(np.int32)
    landmarks = np.load(dataset_dir / layout.LANDMARKS_FILE).astype(np.float32)
    if len(boxes) != n_frames or len(landmarks) != n_frames:
        raise InputError(dataset_dir, f"dataset has {n_frames} frames but {len(boxes)} boxes and "
                                      f"{len(landmarks)} landmark sets")
    np.save(dest / layout.BOXES_FILE, boxes)
    np.save(dest / layout.LANDMARKS_FILE, landmarks)


def footage_pauses(dataset_dir: Path, n_frames: int, audio: AudioConfig) -> list[int]:
    """The dataset frames inside a pause of its own audio (render.yaml's VAD settings): where the
    person is silent; the resting mouth is chosen among them (lipsync.render.rest)."""
    from lipsync.audio import vad  # silero-vad: only when a bundle is written

    wav = media.read_audio(dataset_dir / layout.AUDIO_FILE, audio.sample_rate)
    return vad.pause_frames(wav, n_frames, audio, config_io.load_config(RenderConfig)).tolist()


def save_bundle(out_uri: str, *, name: str, preset: str, generator: Generator, audio_encoder: AudioEncoder,
                syncnet: SyncNet | None, audio: AudioConfig, geometry: GeometryConfig, dataset_dir: str | Path,
                train_info: dict[str, Any], crop_margin: int | None = None, overwrite: bool = False,
                audio_backend: str = "ave", audio_weights: str | None = None,
                extra_files: dict[str, Path] | None = None) -> str:
    """Write a character bundle to `out_uri` (published whole, or not at all); returns its version.

    `crop_margin` is the one the model was trained with (default: the preset's). `audio_backend`
    and `audio_weights`: the audio front-end (`audio` must be its config, frontend.audio_config_for).
    `extra_files`: name -> local file copied beside bundle.json (the training history: metrics.jsonl,
    loss_curve.png); not part of the version, which covers the weights only.

    OutputExistsError when `out_uri` exists and not `overwrite`; InputError when `dataset_dir`
    is not a complete dataset.
    """
    if storage.exists(out_uri) and not overwrite:
        raise OutputExistsError(out_uri)
    dataset_dir = Path(dataset_dir)
    meta = layout.validate_dataset(dataset_dir)
    with storage.atomic_dir(out_uri, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        # 1. weights (safetensors; the architecture config also rides in each file's header)
        save_state(unwrap(generator), tmp / GENERATOR_FILE,
                   metadata={"config": json.dumps(config_io.to_dict(unwrap(generator).config))})
        save_state(unwrap(audio_encoder), tmp / AUDIO_ENCODER_FILE)
        if syncnet is not None:
            save_state(unwrap(syncnet), tmp / SYNCNET_FILE,
                       metadata={"config": json.dumps(config_io.to_dict(unwrap(syncnet).config))})
        version = weights_version(tmp)
        # 2. templates
        n = int(meta["n_frames"])
        _copy_templates(dataset_dir, tmp / TEMPLATES_DIR, n)
        for file_name, path in (extra_files or {}).items():  # not `name`: that is the character's
            shutil.copyfile(path, tmp / file_name)
        # 3. bundle.json, last
        info = {
            "bundle_format": BUNDLE_FORMAT,
            "name": name,
            "preset": preset,
            "version": version,
            "generator": config_io.to_dict(unwrap(generator).config),
            "syncnet": config_io.to_dict(unwrap(syncnet).config) if syncnet is not None else None,
            "audio": config_io.to_dict(audio),
            "audio_features": {"backend": frontend.check_backend(audio_backend), "weights": audio_weights},
            "geometry": config_io.to_dict(geometry),
            "crop_margin": model_preset(preset).crop_margin if crop_margin is None else int(crop_margin),
            "n_templates": n,
            "frame_size": list(meta.get("frame_size") or []),
            "frames_without_face": list(meta.get("frames_without_face") or []),
            "footage_pauses": footage_pauses(dataset_dir, n, audio),
            "dataset_meta": {k: v for k, v in meta.items() if k != "frames_without_face"}
            | {"frames_without_face": len(meta.get("frames_without_face") or [])},
            "train": train_info,
        }
        (tmp / BUNDLE_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=_json_default) + "\n")
    return version


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --- loading ---------------------------------------------------------------------------------------


def read_bundle_info(local: Path, uri: str) -> dict[str, Any]:
    path = local / BUNDLE_FILE
    if not path.is_file():
        raise InputError(uri, f"not a character bundle (no {BUNDLE_FILE})")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(uri, f"{BUNDLE_FILE} is corrupt ({exc})") from exc
    if not isinstance(info, dict):
        raise InputError(uri, f"{BUNDLE_FILE} is corrupt (not an object)")
    fmt = info.get("bundle_format")
    if fmt != BUNDLE_FORMAT:
        raise InputError(uri, f"bundle format {fmt!r} is not supported (this version reads {BUNDLE_FORMAT}); "
                              "train the character again")
    return info


def _config(cls, data: Any, uri: str, what: str):
    if not isinstance(data or {}, dict):
        raise InputError(uri, f"bundle has an incompatible {what} config (not a mapping)")
    try:
        return config_io.from_dict(cls, data or {})
    except (ConfigError, TypeError, ValueError) as exc:
        raise InputError(uri, f"bundle has an incompatible {what} config ({exc})") from None


def _load_module(module: nn.Module, path: Path, uri: str, device: str | torch.device) -> nn.Module:
    if not path.is_file():
        raise InputError(uri, f"bundle is missing {path.name}")
    load_state(module, path)  # InputError when unreadable or not fitting
    return module.to(device).eval()


def _load_templates(local: Path, uri: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    tdir = local / TEMPLATES_DIR
    try:
        boxes = np.load(tdir / layout.BOXES_FILE).astype(np.int32)
        landmarks = np.load(tdir / layout.LANDMARKS_FILE).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise InputError(uri, f"bundle templates are missing or corrupt ({exc})") from exc
    if boxes.shape != (n, 4) or landmarks.shape[0] != n or landmarks.shape[2:] != (2,):
        raise InputError(uri, f"bundle templates do not match n_templates={n}: boxes {boxes.shape}, "
                              f"landmarks {landmarks.shape}")
    if n < 1 or not (tdir / layout.FRAMES_DIR / f"{n - 1}.jpg").is_file():
        raise InputError(uri, f"bundle is missing template frames (no {layout.FRAMES_DIR}/{n - 1}.jpg)")
    return boxes, landmarks


# --- bounds: every size that allocates is checked before anything is built from it ----------------

MAX_MODEL_SIZE = 1024  # S: st2d-328 uses 320; activations grow with S^2
MAX_WIDTH = 4096  # channels of any stage (presets use <= 512)
MAX_EXPAND = 16
MAX_FRAME_SIDE = 8192  # template frames (8K is 7680 x 4320)
MAX_AUDIO_CONTEXT = 64  # +-frames of features per generator input (ave: 8)
MAX_N_FFT = 8192


def _fits_weights(cls, cfg, path: Path, uri: str, what: str) -> None:
    """The module `cls(cfg)` has exactly the tensors of `path` (built on the meta device: no memory)."""
    from safetensors import SafetensorError, safe_open

    from lipsync.models.pretrained import _state_mismatch

    if not path.is_file():
        raise InputError(uri, f"bundle is missing {path.name}")
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: torch.empty(tuple(f.get_slice(k).get_shape()), device="meta") for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(uri, f"{path.name} cannot be read as a safetensors file ({exc})") from None
    with torch.device("meta"):
        expected = cls(cfg).state_dict()
    problem = _state_mismatch(expected, found)
    if problem:
        raise InputError(uri, f"bundle.json's {what} config does not fit {path.name} ({problem})")


def _check_models(local: Path, uri: str, info: dict[str, Any], gen_cfg: GeneratorConfig, audio: AudioConfig,
                  margin: int, backend: str = "ave") -> None:
    """Architecture sizes bounded, consistent with the audio front-end, and fitting the weight files.

    The weights are hashed into the bundle's version, so checking the configs against their
    tensor shapes (read from the safetensors headers) catches any edit of bundle.json's
    architecture; the bounds catch what does not show in the weights (S, the audio geometry).
    The configs are not compared with configs/models.yaml: a bundle keeps the preset it was
    trained with, even after that file changes.
    """
    from lipsync.models.audio_encoder import EMBED_DIM, MEL_BINS, MEL_STEPS

    def bad(what: str) -> InputError:
        return InputError(uri, f"bundle.json: {what}")

    if not 2 ** len(gen_cfg.widths) <= gen_cfg.size <= MAX_MODEL_SIZE:
        raise bad(f"generator size {gen_cfg.size} is outside [{2 ** len(gen_cfg.widths)}, {MAX_MODEL_SIZE}]")
    if max(gen_cfg.widths) > MAX_WIDTH or gen_cfg.expand_ratio > MAX_EXPAND:
        raise bad(f"generator widths {list(gen_cfg.widths)} / expand_ratio {gen_cfg.expand_ratio} exceed "
                  f"{MAX_WIDTH} / {MAX_EXPAND}")
    if not 0 <= margin <= gen_cfg.size // 4:
        raise bad(f"crop_margin {margin} is outside [0, {gen_cfg.size // 4}] for a {gen_cfg.size} px model")
    if (audio.n_mels, audio.mel_window) != (MEL_BINS, MEL_STEPS) or (backend == "ave" and audio.feature_dim != EMBED_DIM):
        raise bad(f"audio n_mels/mel_window/feature_dim {audio.n_mels}/{audio.mel_window}/{audio.feature_dim} "
                  f"do not fit the AudioEncoder ({MEL_BINS}/{MEL_STEPS}/{EMBED_DIM})")
    if audio.feature_dim != frontend.FRAME_FEATURE_DIMS[backend]:
        raise bad(f"audio feature_dim {audio.feature_dim} is not the {backend} front-end's "
                  f"({frontend.FRAME_FEATURE_DIMS[backend]})")
    if not (1 <= audio.context <= MAX_AUDIO_CONTEXT and 1 <= audio.hop_length <= audio.win_length <= audio.n_fft
            <= MAX_N_FFT and 1000 <= audio.sample_rate <= 192000 and 1 <= audio.fps <= 120):
        raise bad(f"audio config out of range (context {audio.context}, hop/win/n_fft {audio.hop_length}/"
                  f"{audio.win_length}/{audio.n_fft}, sample_rate {audio.sample_rate}, fps {audio.fps})")
    if tuple(audio.context_shape) != tuple(gen_cfg.audio_shape):
        raise bad(f"audio context_shape {tuple(audio.context_shape)} != the generator's audio input "
                  f"{tuple(gen_cfg.audio_shape)}")
    if math.prod(audio.context_shape) != 2 * audio.context * audio.feature_dim:
        raise bad(f"audio context_shape {tuple(audio.context_shape)} does not hold 2 * context * feature_dim values")
    _fits_weights(Generator, gen_cfg, local / GENERATOR_FILE, uri, "generator")
    if info.get("syncnet") is not None:
        sync_cfg = _config(SyncNetConfig, info["syncnet"], uri, "syncnet")
        if max(sync_cfg.face_size) > MAX_MODEL_SIZE or max(sync_cfg.face_widths) > MAX_WIDTH \
                or not 0 <= sync_cfg.residual_blocks <= 8:
            raise bad(f"syncnet face_size {list(sync_cfg.face_size)} / face_widths {list(sync_cfg.face_widths)} / "
                      f"residual_blocks {sync_cfg.residual_blocks} out of range")
        _fits_weights(SyncNet, sync_cfg, local / SYNCNET_FILE, uri, "syncnet")


def _check_templates(local: Path, uri: str, info: dict[str, Any], geometry: GeometryConfig) -> None:
    """Frame size bounded and true to the template JPEGs; boxes finite, square and on the frame.

    `geometry.crop` accepts any square box with a positive side (parts outside the frame repeat
    its edge), and allocates side^2 pixels for it; `paste_back` the same. So a legal box here is
    square, has a side of at least 2 px (crop_boxes' minimum) and at most
    2 * max(W, H) * max(1, box_expand) (a face inside the frame, grown by box_expand), and
    overlaps the frame (overruns past the edges are legal, boxes entirely off it are not).
    """
    width, height = _frame_size(info, local, uri)
    first = local / TEMPLATES_DIR / layout.FRAMES_DIR / "0.jpg"
    try:
        from PIL import Image

        with Image.open(first) as im:  # reads the header only
            jpeg_size = im.size
    except Exception as exc:  # OSError, PIL's DecompressionBombError, ...
        raise InputError(uri, f"bundle template frame {layout.FRAMES_DIR}/0.jpg is missing or unreadable "
                              f"({exc})") from None
    if tuple(jpeg_size) != (width, height):
        raise InputError(uri, f"bundle.json frame_size {width}x{height} does not match the template frames "
                              f"({jpeg_size[0]}x{jpeg_size[1]})")
    try:
        raw = np.load(local / TEMPLATES_DIR / layout.BOXES_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(uri, f"bundle templates are missing or corrupt ({exc})") from None
    if raw.ndim != 2 or raw.shape[1:] != (4,) or raw.dtype.kind not in "iuf":
        raise InputError(uri, f"bundle boxes.npy must be (n, 4) numbers, got {raw.shape} {raw.dtype}")
    if raw.dtype.kind == "f" and not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
        raise InputError(uri, "bundle boxes.npy holds non-finite or fractional values")
    if raw.size and np.abs(raw.astype(np.float64)).max() >= 2 ** 31:
        raise InputError(uri, "bundle boxes.npy holds values outside the int32 range")
    boxes = raw.astype(np.int64)
    x0, y0, x1, y1 = boxes.T
    side = x1 - x0
    max_side = int(2 * max(width, height) * min(max(1.0, float(geometry.box_expand)), 4.0))
    problems = {
        "not square": side != y1 - y0,
        "degenerate (side < 2 px)": side < 2,
        f"larger than {max_side} px": side > max_side,
        f"entirely outside the {width}x{height} frame": (x1 <= 0) | (y1 <= 0) | (x0 >= width) | (y0 >= height),
    }
    for what, mask in problems.items():
        if mask.any():
            i = int(np.argmax(mask))
            raise InputError(uri, f"bundle boxes.npy: box {i} {tuple(int(v) for v in boxes[i])} is {what} "
                                  f"({int(mask.sum())} of {len(boxes)} boxes)")


def load_character(uri: str, device: str | torch.device = "cpu") -> Character:
    """Load a bundle (downloaded once per node when remote). InputError(uri, ...) when it is
    missing, corrupt (unreadable files, weights that do not match its version) or of another
    bundle format."""
    uri = str(uri)
    try:
        local = storage.cached_local_dir(uri)
    except FileNotFoundError as exc:
        raise InputError(uri, "character bundle not found") from exc
    info = read_bundle_info(local, uri)
    missing = [f for f in (GENERATOR_FILE, AUDIO_ENCODER_FILE) if not (local / f).is_file()]
    if missing:
        raise InputError(uri, f"bundle is missing {', '.join(missing)}")
    if weights_version(local) != info.get("version"):
        raise InputError(uri, "bundle weights do not match its version (corrupt or modified files)")
    gen_cfg = _config(GeneratorConfig, info.get("generator"), uri, "generator")
    audio = _config(AudioConfig, {**LEGACY_AUDIO_DEFAULTS, **(info.get("audio") or {})}, uri, "audio")
    try:
        backend, audio_weights = frontend.backend_of(info)
    except InputError as exc:
        raise InputError(uri, f"bundle.json: {exc.problem}") from None
    if backend != "ave" and not isinstance(audio_weights, str):
        raise InputError(uri, f"bundle.json: the {backend} audio front-end has no weights path")
    geometry_data = dict(info.get("geometry") or {})
    margin = info.get("crop_margin", geometry_data.get("crop_margin"))  # format-1 bundles kept it in geometry
    if not isinstance(margin, int) or margin < 0:
        raise InputError(uri, f"bundle.json has no valid crop_margin (got {margin!r})")
    geometry = _config(GeometryConfig, {k: v for k, v in geometry_data.items() if k not in LEGACY_GEOMETRY_KEYS},
                       uri, "geometry")
    _check_models(local, uri, info, gen_cfg, audio, margin, backend)  # sizes bounded and fitting the weights ...
    _check_templates(local, uri, info, geometry)  # ... and the boxes, before anything is built from them
    generator = _load_module(Generator(gen_cfg), local / GENERATOR_FILE, uri, device)
    audio_encoder = _load_module(AudioEncoder(), local / AUDIO_ENCODER_FILE, uri, device)
    syncnet = None
    if info.get("syncnet") is not None:
        sync_cfg = _config(SyncNetConfig, info["syncnet"], uri, "syncnet")
        syncnet = _load_module(SyncNet(sync_cfg), local / SYNCNET_FILE, uri, device)
    n = info.get("n_templates")
    if not isinstance(n, int):
        raise InputError(uri, "bundle.json has no n_templates")
    boxes, landmarks = _load_templates(local, uri, n)
    return Character(name=str(info.get("name")), preset=str(info.get("preset")), version=info["version"],
                     generator=generator, audio_encoder=audio_encoder, syncnet=syncnet, generator_config=gen_cfg,
                     audio=audio, geometry=geometry, template_dir=local / TEMPLATES_DIR, boxes=boxes,
                     landmarks=landmarks, margin=margin, frame_size=_frame_size(info, local, uri),
                     frames_without_face=frozenset(int(i) for i in info.get("frames_without_face") or []),
                     footage_pauses=_template_indices(info, "footage_pauses", n, uri),
                     train=info.get("train") if isinstance(info.get("train"), dict) else {},
                     audio_backend=backend, audio_weights=audio_weights)


def _template_indices(info: dict[str, Any], key: str, n: int, uri: str) -> frozenset[int]:
    """bundle.json[key]: a list of template indices (absent in older bundles: none)."""
    value = info.get(key) or []
    if not isinstance(value, list) or not all(isinstance(i, int) and 0 <= i < n for i in value):
        raise InputError(uri, f"bundle.json {key} must be a list of template indices below {n}")
    return frozenset(value)


def _frame_size(info: dict[str, Any], local: Path, uri: str) -> tuple[int, int]:
    size = info.get("frame_size") or []
    if not isinstance(size, list) or len(size) != 2:
        raise InputError(uri, "bundle.json has no frame_size")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= MAX_FRAME_SIDE for v in size):
        raise InputError(uri, f"bundle.json frame_size {size} is not two integers in [2, {MAX_FRAME_SIDE}]")
    return int(size[0]), int(size[1])


# --- is the character trained enough to render? ---------------------------------------------------

# Held-out L1 must be at most this fraction of the reference-copy baseline to count as "clearly
# below" it. A trained tiny character reaches ~0.57 of it (docs/TRAINING.md, 0.044 vs 0.077); a
# generator at or just under the baseline paints little more than a blurred copy of the template.
UNDERTRAINED_RATIO = 0.9


def undertrained(train: dict[str, Any]) -> tuple[float, float] | None:
    """(held-out L1, reference-copy L1) when the recorded held-out L1 is not clearly below the
    baseline (> UNDERTRAINED_RATIO x baseline); None when it is, or when either is not recorded
    (bundles trained without a held-out split say nothing)."""
    l1, ref = (train or {}).get("val_l1"), (train or {}).get("val_l1_reference_copy")
    numbers = [v for v in (l1, ref) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if len(numbers) != 2 or ref <= 0:
        return None
    return (float(l1), float(ref)) if l1 > UNDERTRAINED_RATIO * ref else None


def undertrained_warning(uri: str, train: dict[str, Any]) -> str | None:
    """The one warning line render and dub print for an undertrained character (None when fine)."""
    found = undertrained(train)
    if found is None:
        return None
    l1, ref = found
    return (f"{uri} looks undertrained: held-out L1 {l1:.3f} vs {ref:.3f} for copying the reference; "
            f"train longer (--steps)")


def read_train_info(uri: str) -> dict[str, Any]:
    """bundle.json's "train" section, reading only bundle.json; {} when it cannot be read (render's
    own checks report a missing or broken bundle)."""
    try:
        info = json.loads(storage.read_bytes(storage.join(str(uri), BUNDLE_FILE)))
    except Exception:  # noqa: BLE001 - a best-effort look before the real load
        return {}
    train = info.get("train") if isinstance(info, dict) else None
    return train if isinstance(train, dict) else {}
