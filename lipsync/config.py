"""Typed configuration: frozen dataclasses loaded from the YAML files in configs/.

Every stage reads its numbers from here; code paths never hard-code a value that has a config key.
`load(cls, name_or_path, overrides)` builds a dataclass from YAML plus `key=value` overrides
(dotted keys reach nested dataclasses).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

T = TypeVar("T")


@dataclass(frozen=True)
class AudioConfig:
    """Wav2Lip-style mel spectrogram and per-video-frame windows (see DESIGN.md, Audio)."""

    sample_rate: int = 16000
    fps: int = 25
    preemphasis: float = 0.97
    n_fft: int = 800
    hop_length: int = 200
    win_length: int = 800
    n_mels: int = 80
    fmin: float = 55.0
    fmax: float = 7600.0
    min_level_db: float = -100.0
    ref_level_db: float = 20.0
    max_abs_value: float = 4.0
    mel_window: int = 16  # mel frames per video frame window
    context: int = 8  # +-frames of encoder features given to the generator
    feature_dim: int = 512  # AudioEncoder output per frame
    # Shape the (2*context, feature_dim) feature stack is reshaped to for the generator
    # (C-order); `ave` 16x512 -> (32, 16, 16). Its product must equal 2 * context * feature_dim.
    context_shape: tuple[int, int, int] = (32, 16, 16)
    # STFT edge padding (center=True). "reflect" was the default of the older librosa Wav2Lip
    # used; librosa >= 0.10 defaults to "constant". Only the first and last two mel frames differ.
    stft_pad_mode: str = "reflect"

    @property
    def mel_frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length  # 80 for the defaults


@dataclass(frozen=True)
class GeometryConfig:
    """Crop box, mask and paste-back (see DESIGN.md, Geometry, and docs/GEOMETRY.md)."""

    # MediaPipe Face Mesh indices standing in for the seed's 110-point lms[1], lms[31], lms[52].
    jaw_left: int = 234
    jaw_right: int = 454
    nose_bridge: int = 195
    # Lower-face mask inside the S x S model crop, as fractions of S (x0, y0, x1, y1).
    mask_box: tuple[float, float, float, float] = (5 / 320, 5 / 320, 315 / 320, 310 / 320)
    # Width of the feathered blend border used when pasting, as a fraction of the box side.
    feather: float = 0.08
    # Temporal smoothing of landmarks: centred moving-average window (frames, odd).
    smooth_window: int = 5
    crop_margin: int = 4  # the model sees crop[m:m+S, m:m+S] of the (S+2m)^2 crop
    # Scale of the seed's square about its centre (1.0 = the seed's box; see docs/GEOMETRY.md).
    box_expand: float = 1.0


@dataclass(frozen=True)
class PrepareConfig:
    fps: int = 25
    jpeg_quality: int = 95
    # Refuse a video where more than this fraction of frames has no detected face.
    max_no_face_fraction: float = 0.5
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    max_duration_s: float = 1800.0
    audio: AudioConfig = field(default_factory=AudioConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)


@dataclass(frozen=True)
class RenderConfig:
    """`lipsync render` and the dub actors (see configs/render.yaml)."""

    batch_size: int = 1  # frames per generator forward (1 is fastest on CPU, see BENCHMARKS.md)
    device: str = "auto"
    bf16: bool = True  # autocast on GPU only
    channels_last: bool = True  # measured faster on CPU for this UNet
    crf: int = 20
    crf_enhance: int = 18
    x264_preset: str = "veryfast"
    pix_fmt: str = "yuv420p"
    audio_bitrate: str = "128k"
    feature_batch_size: int = 64  # mel windows per AudioEncoder forward
    queue_depth: int = 4  # batches in flight between decode, model and encode threads
    max_audio_seconds: float = 3600.0
    torch_threads: int = 0  # 0 = leave torch's default


@dataclass(frozen=True)
class DubConfig:
    """`lipsync dub` and jobs/batch_dub.py: the Ray pipeline (see configs/dub.yaml, docs/CLUSTER.md).

    `render` holds the per-frame settings the render actors use; its defaults come from
    configs/render.yaml (see lipsync.dub.load_config). `render.device` is not used: `device` is.
    """

    shard_frames: int = 250  # frames per render task (one encoded segment each)
    actors: int = 1  # render actors (the minimum when max_actors > actors)
    max_actors: int = 0  # > actors: an autoscaling pool of actors..max_actors; else a fixed pool
    device: str = "auto"  # cpu | cuda | auto (cuda when the cluster has GPUs now)
    actor_cpus: float = 1.0  # CPUs reserved per render actor; its torch threads unless render.torch_threads
    actor_gpus: float = 1.0  # GPUs per render actor when device is cuda
    plan_cpus: float = 1.0  # per planning task (audio decode + audio encoder)
    stitch_cpus: float = 0.0  # per stitch task (ffmpeg -c copy + AAC): light, must not wait for actors
    max_concurrent_stitches: int = 4  # stitch tasks in flight at once
    character_cache: int = 2  # characters kept loaded per actor / planning worker (LRU)
    feature_cache: int = 4  # items' audio features kept per actor (LRU)
    progress_interval_s: float = 10.0  # seconds between progress lines in job logs
    render: RenderConfig = field(default_factory=RenderConfig)


def _coerce(tp: Any, value: Any) -> Any:
    """Turn a YAML value into the annotated type (nested dataclasses, tuples, floats)."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {})
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value))
    if tp is float and isinstance(value, (int, str)):
        return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error (typos must not pass)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown config keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {k: _coerce(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        data = data.setdefault(p, {})
    data[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["train.lr=1e-3", "steps=10"]` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set_dotted(out, key.strip(), yaml.safe_load(raw))
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_path(name_or_path: str | Path) -> Path:
    """A bare name like "prepare" means configs/prepare.yaml."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} and p.exists():
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


def load_yaml(name_or_path: str | Path) -> dict[str, Any]:
    with open(resolve_path(name_or_path)) as f:
        return yaml.safe_load(f) or {}


def load(cls: type[T], name_or_path: str | Path | None = None, overrides: list[str] | dict | None = None) -> T:
    """Load dataclass `cls` from a YAML config (or defaults) plus overrides."""
    data = load_yaml(name_or_path) if name_or_path is not None else {}
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    return from_dict(cls, _merge(data, extra))
