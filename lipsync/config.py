"""Typed configuration: every run setting of every stage, and the one loader for them.

The run configs (frozen dataclasses) live here; the architectures (GeneratorConfig,
SyncNetConfig, the presets of lipsync/configs/models.yaml) live with the models, because they are saved
into each bundle and never change with a run.

`load_config(cls, path, overrides, flags)` is the only way entry points get a config:

    lipsync/configs/<name>.yaml (or `path`)  ->  `--set key=value` overrides  ->  command-line flags

then validates the result with pydantic (types and ranges declared on the fields below): an
unknown key (with a did-you-mean), a value of the wrong type or out of range is a ConfigError
(an InputError: one line, exit code 2) before any work starts. The dataclass defaults mirror
the YAML files (tests/test_config.py keeps them in step), so library callers that pass no config
get what the tools run with.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.resources
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, TypeVar

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from lipsync.errors import InputError

# The default YAML files ship inside the package (package data), so a wheel install finds them;
# users' own files are given as paths (`--config PATH`).
CONFIG_DIR = importlib.resources.files("lipsync") / "configs"

T = TypeVar("T")

# Field types with their ranges (pydantic reads these annotations).
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Crf = Annotated[int, Field(ge=0, le=51)]  # x264: 0 lossless .. 51 worst
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]  # lipsync.runtime.resolve_device
Precision = Literal["auto", "fp32", "bf16"]  # lipsync.runtime.autocast_dtype


class ConfigError(InputError):
    """A config file, override or flag is wrong (unknown key, bad type, out of range). Exit code 2."""


# Datasets and bundles written before the crop margin moved to the model preset recorded it in
# their geometry; it is ignored there (the preset, or the bundle's own crop_margin, decides).
LEGACY_GEOMETRY_KEYS = ("crop_margin",)
# Datasets and bundles written before audio was loudness-normalised have no loudness_lufs: their
# audio was used as recorded, so they are read with normalisation off.
LEGACY_AUDIO_DEFAULTS = {"loudness_lufs": None}


def recorded_audio_config(data: Mapping[str, Any] | None) -> "AudioConfig":
    """The AudioConfig a dataset's meta.json or a bundle.json recorded (legacy keys filled in)."""
    return from_dict(AudioConfig, {**LEGACY_AUDIO_DEFAULTS, **(data or {})})


# ---------------------------------------------------------------------------------------------
# prepare (and the audio / geometry a dataset and a bundle record)


@dataclass(frozen=True)
class AudioConfig:
    """Wav2Lip-style mel spectrogram and per-video-frame windows (see DESIGN.md, Audio)."""

    sample_rate: PositiveInt = 16000
    fps: PositiveInt = 25
    preemphasis: Fraction = 0.97
    n_fft: PositiveInt = 800
    hop_length: PositiveInt = 200
    win_length: PositiveInt = 800
    n_mels: PositiveInt = 80
    fmin: NonNegativeFloat = 55.0
    fmax: PositiveFloat = 7600.0
    min_level_db: float = -100.0
    ref_level_db: float = 20.0
    max_abs_value: PositiveFloat = 4.0
    mel_window: PositiveInt = 16  # mel frames per video frame window
    context: PositiveInt = 8  # +-frames of encoder features given to the generator
    feature_dim: PositiveInt = 512  # AudioEncoder output per frame
    # Shape the (2*context, feature_dim) feature stack is reshaped to for the generator
    # (C-order); `ave` 16x512 -> (32, 16, 16). Its product must equal 2 * context * feature_dim.
    context_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 16, 16)
    # STFT edge padding (center=True). "reflect" was the default of the older librosa Wav2Lip
    # used; librosa >= 0.10 defaults to "constant". Only the first and last two mel frames differ.
    stft_pad_mode: str = "reflect"
    # Integrated loudness (EBU R128, LUFS) every recording is normalised to before features, in
    # prepare (the training audio), render and dub alike (lipsync/audio/loudness.py); null = off.
    loudness_lufs: Annotated[float, Field(ge=-70.0, le=0.0)] | None = -23.0
    max_gain_db: NonNegativeFloat = 30.0  # the most a quiet recording is raised


@dataclass(frozen=True)
class GeometryConfig:
    """Crop box, mask and paste-back (see DESIGN.md, Geometry, and docs/GEOMETRY.md).

    The crop margin is not here: it belongs to the model preset (configs/models.yaml), which
    fixes the crop size S + 2m around the model's S x S; a bundle records the one it was trained with.
    """

    # MediaPipe Face Mesh indices standing in for the seed's 110-point lms[1], lms[31], lms[52].
    jaw_left: NonNegativeInt = 234
    jaw_right: NonNegativeInt = 454
    nose_bridge: NonNegativeInt = 195
    # Lower-face mask inside the S x S model crop, as fractions of S (x0, y0, x1, y1).
    mask_box: tuple[Fraction, Fraction, Fraction, Fraction] = (5 / 320, 5 / 320, 315 / 320, 310 / 320)
    # Width of the feathered blend border used when pasting, as a fraction of the box side.
    feather: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.08
    # Temporal smoothing of landmarks: centred moving-average window (frames, odd).
    smooth_window: PositiveInt = 5
    # Scale of the seed's square about its centre (1.0 = the seed's box; see docs/GEOMETRY.md).
    box_expand: PositiveFloat = 1.0


@dataclass(frozen=True)
class PrepareConfig:
    """`lipsync prepare` (configs/prepare.yaml)."""

    fps: PositiveInt = 25
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 95
    # Refuse a video where more than this fraction of frames has no detected face.
    max_no_face_fraction: Fraction = 0.5
    min_detection_confidence: Fraction = 0.5
    min_tracking_confidence: Fraction = 0.5
    max_duration_s: PositiveFloat = 1800.0
    audio: AudioConfig = field(default_factory=AudioConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)


# ---------------------------------------------------------------------------------------------
# render and dub


@dataclass(frozen=True)
class RenderConfig:
    """`lipsync render` and the dub actors (configs/render.yaml)."""

    batch_size: PositiveInt = 1  # frames per generator forward (1 is fastest on CPU, see BENCHMARKS.md)
    device: Device = "auto"
    precision: Precision = "auto"  # auto: bf16 where the device computes it natively (lipsync.runtime)
    channels_last: bool = True  # measured faster on CPU for this UNet
    crf: Crf = 20
    crf_enhance: Crf = 18
    x264_preset: str = "veryfast"
    pix_fmt: str = "yuv420p"
    audio_bitrate: str = "128k"
    feature_batch_size: PositiveInt = 64  # mel windows per AudioEncoder forward
    queue_depth: PositiveInt = 4  # batches in flight between decode, model and encode threads
    max_audio_seconds: PositiveFloat = 3600.0
    torch_threads: NonNegativeInt = 0  # 0 = leave torch's default
    x264_threads: NonNegativeInt = 0  # encoder threads per segment; 0 = ffmpeg decides (see BENCHMARKS.md, render)
    # generator runtime on the CPU: torch, or openvino (compiled in memory; extra `openvino`; measured
    # 3.3-4x the torch bf16 forward for st2d-328 here, docs/BENCHMARKS.md); GPUs always use torch
    backend: Literal["torch", "openvino"] = "torch"
    # What the mouth does where the audio has no voice (docs/QUALITY.md, lipsync/render/rest.py):
    # rest = the character's own closed mouth, cross-faded at pause edges; keep = the generator's.
    silence: Literal["keep", "rest"] = "rest"
    vad_threshold: Fraction = 0.5  # silero-vad speech probability above which a 32 ms window is voice
    vad_min_pause_frames: PositiveInt = 6  # voiceless runs shorter than this (240 ms) stay speech (hangover)
    rest_fade_frames: NonNegativeInt = 3  # frames of cross-fade inside each pause edge
    # The lower-face band taken from the resting template, as fractions of S (x0, y0, x1, y1), and
    # the width of its feathered edge as a fraction of S.
    rest_box: tuple[Fraction, Fraction, Fraction, Fraction] = (0.08, 0.22, 0.92, 0.9)
    rest_feather: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.08
    # Which template the mouth rests on: `pause` = the median-aperture frame of the footage's own pauses
    # (voice activity on its audio when the bundle was written: how this person looks when silent),
    # falling back to `closed` (the most closed real mouth) when the footage has fewer pause frames
    # than rest_min_pause_templates (docs/QUALITY.md, pauses).
    rest_template: Literal["pause", "closed"] = "pause"
    rest_min_pause_templates: PositiveInt = 8
    # Paste-back colour matching: the generated crop's per-channel mean over a border band of this
    # width (fraction of S) is shifted to the template's there (0 = off; docs/QUALITY.md, seam).
    colour_match_band: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.0
    # Centred moving average of the per-frame audio features over this many frames (odd; 1 = off):
    # steadier mouths at the cost of crisp onsets (measured in docs/QUALITY.md, temporal stability).
    feature_smooth_frames: PositiveInt = 1


@dataclass(frozen=True)
class DubConfig:
    """`lipsync dub` and jobs/batch_dub.py: the Ray pipeline (configs/dub.yaml, docs/CLUSTER.md).

    `render` holds the per-frame settings the render actors use; its defaults come from
    configs/render.yaml (NESTED_FILES). `render.device` is not used: `device` is.
    """

    shard_frames: PositiveInt = 250  # frames per render task (one encoded segment each)
    actors: PositiveInt = 1  # render actors (the minimum when max_actors > actors)
    max_actors: NonNegativeInt = 0  # > actors: an autoscaling pool of actors..max_actors; else a fixed pool
    device: Device = "auto"  # cpu | cuda | auto (cuda when the cluster has GPUs now)
    actor_cpus: PositiveFloat = 1.0  # CPUs reserved per render actor; its torch threads unless render.torch_threads
    actor_gpus: PositiveFloat = 1.0  # GPUs per render actor when device is cuda
    plan_cpus: NonNegativeFloat = 1.0  # per planning task (audio decode + audio encoder)
    stitch_cpus: NonNegativeFloat = 0.0  # per stitch task (ffmpeg -c copy + AAC): light, must not wait for actors
    max_concurrent_stitches: PositiveInt = 4  # stitch tasks in flight at once
    character_cache: PositiveInt = 2  # characters kept loaded per actor / planning worker (LRU)
    feature_cache: PositiveInt = 4  # items' audio features kept per actor (LRU)
    progress_interval_s: PositiveFloat = 10.0  # seconds between progress lines in job logs
    # seconds between rewrites of _reports/<run>-progress.json (counts, frames/s, ETA, failures)
    progress_record_interval_s: PositiveFloat = 30.0
    # frames/s for --dry-run estimates when no earlier report under the output root has one
    # (docs/BENCHMARKS.md: st2d-328 on 2 CPU cores, 1 actor; the cuda figure is an unmeasured placeholder)
    estimate_fps_cpu: PositiveFloat = 2.6
    estimate_fps_cuda: PositiveFloat = 100.0
    # Catalog rows may only write under the output root unless this is set (docs/RELIABILITY.md).
    allow_outputs_outside_root: bool = False
    # a PNG per dubbed item, <output_root>/_reports/previews/<id>.png (lipsync.render.preview): 4 frames from
    # one decode of the published output in its stitch task; the item's report entry names it
    preview: bool = True
    # per item, the mouth aperture of the published dub vs the character's footage (lipsync.eval.aperture,
    # as `lipsync eval --audio`): Face Mesh on every output frame in the stitch task, so off by default
    mouth_stats: bool = False
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        if self.max_actors and self.max_actors < self.actors:
            raise ValueError(f"max_actors must be 0 or >= actors ({self.actors}), got {self.max_actors}")


# ---------------------------------------------------------------------------------------------
# train


@dataclass(frozen=True)
class LossWeights:
    """Generator loss = l1 * L1 + ssim * (1 - SSIM) + sync * syncBCE + vgg * perceptual
    + mouth * L1 over `mouth_region` (the lips in the model crop; docs/QUALITY.md, issue 16)
    + adversarial * the non-saturating GAN loss of a patch discriminator on `mouth_region`
    (lipsync.models.discriminator; 0 = no discriminator is built)."""

    l1: NonNegativeFloat = 1.0
    ssim: NonNegativeFloat = 0.2
    sync: NonNegativeFloat = 0.03
    vgg: NonNegativeFloat = 0.01  # used only when TrainConfig.vgg_weights is set
    mouth: NonNegativeFloat = 3.0  # measured: aperture std ratio on unseen speech 0.60 -> 0.81, held-out LMD 4.76 -> 4.30
    # (x0, y0, x1, y1) fractions of S: where the mouth sits in the lower-face model crop
    mouth_region: tuple[Fraction, Fraction, Fraction, Fraction] = (0.15, 0.2, 0.85, 0.65)
    adversarial: NonNegativeFloat = 0.0  # measured at 0.03 and 0.1: smaller mouth spread on unseen speech, kept off


@dataclass(frozen=True)
class NegativeSampling:
    """Where a SyncNet negative pair's audio comes from (all frame distances in video frames)."""

    min_shift: PositiveInt = 5  # never closer than this: a mel window spans 5 frames, so no overlap
    max_shift: PositiveInt = 15  # "shifted" negatives are at min_shift..max_shift frames
    # This share of negatives takes audio from anywhere >= min_shift away (Wav2Lip's "any other
    # frame"); the rest is shifted by min_shift..max_shift. Measured on the Obama clip: training
    # with far negatives only generalises best (held-out balanced accuracy 0.71-0.72 vs 0.63 at 0.5).
    far_fraction: Fraction = 1.0

    def __post_init__(self) -> None:
        if self.max_shift < self.min_shift:
            raise ValueError(f"negatives need min_shift <= max_shift, got {self.min_shift} > {self.max_shift}")


AudioBackend = Literal["ave", "hubert", "wenet"]  # lipsync.audio.frontend; docs/AUDIO.md


@dataclass(frozen=True)
class AudioFeaturesConfig:
    """The audio front-end a character is trained with (recorded in its bundle; render and dub use
    that one). `ave`: our AudioEncoder over Wav2Lip mel windows (no weights here; see
    TrainConfig.audio_encoder). `hubert`: a local transformers HubertModel directory (the layout of
    facebook/hubert-large-ls960-ft). `wenet`: a local WeNet streaming encoder exported to ONNX."""

    backend: AudioBackend = "ave"
    weights: str | None = None  # hubert: a local directory; wenet: a local encoder .onnx file (or URIs)

    def __post_init__(self) -> None:
        if self.backend != "ave" and not self.weights:
            raise ValueError(f"audio_features.backend {self.backend!r} needs audio_features.weights "
                             "(--audio-weights PATH: the local model, see docs/AUDIO.md)")
        if self.backend == "ave" and self.weights:
            raise ValueError("audio_features.weights is for the hubert and wenet backends; "
                             "a pretrained ave AudioEncoder is given with audio_encoder (--audio-encoder)")


@dataclass(frozen=True)
class TrainConfig:
    """`lipsync train` and the Ray Train job (configs/train.yaml).

    The architecture is NOT here: it comes from the preset (configs/models.yaml) and is saved into
    every checkpoint and bundle. These are the numbers of one training run.
    """

    preset: str = "tiny"
    syncnet_steps: NonNegativeInt = 2000
    generator_steps: NonNegativeInt = 10000
    batch_size: PositiveInt = 8  # generator batch (per worker under Ray Train)
    syncnet_batch_size: PositiveInt = 32  # face/audio pairs per SyncNet step (half positives)
    lr: PositiveFloat = 1e-3  # generator (Adam)
    syncnet_lr: PositiveFloat = 1e-4  # SyncNet (Adam)
    grad_clip: NonNegativeFloat = 1.0  # max gradient norm; 0 disables clipping
    seed: int = 0
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1  # the LAST 10% of the frames; never trained on
    val_max_frames: PositiveInt = 256  # validation uses at most this many evenly spaced held-out frames
    checkpoint_every: PositiveInt = 500  # steps (SyncNet and generator steps are counted together)
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 10
    val_every: PositiveInt = 250
    sync_loss_after: NonNegativeInt = 0  # generator steps before the sync loss is switched on
    adversarial_after: NonNegativeInt = 0  # generator steps before the adversarial term (the discriminator trains from 0)
    discriminator_lr: PositiveFloat = 2e-4  # the mouth discriminator (Adam), when loss.adversarial > 0
    loss: LossWeights = field(default_factory=LossWeights)
    negatives: NegativeSampling = field(default_factory=NegativeSampling)
    val_negatives_per_frame: PositiveInt = 4  # SyncNet validation: negatives per held-out frame
    # SyncNet pairs face k with the mel window of frame k + sync_audio_offset. The window of frame j
    # starts AT j and spans ~5 frames; -2 centres it on the face. Eval reads it back from the
    # bundle (bundle.json train.config.sync_audio_offset).
    sync_audio_offset: int = -2
    sync_augment: bool = False  # SyncNet training faces: random shifts within the crop margin + mirroring
    # share of generator items whose reference frame is drawn from the training frames with the most
    # different mouth aperture (the far half); 0 = any other training frame (issue 16, QUALITY.md)
    reference_unlike: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    device: Device = "auto"
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (lipsync.runtime)
    loader_workers: NonNegativeInt = 0  # DataLoader worker processes (items are cheap: crops are preloaded)
    vgg_weights: str | None = None  # local path/URI of a torchvision-layout VGG19 state dict
    audio_encoder: str | None = None  # pretrained AudioEncoder (SyncTalk_2D audio_visual_encoder.pth)
    audio_features: AudioFeaturesConfig = field(default_factory=AudioFeaturesConfig)  # ave | hubert | wenet

    def __post_init__(self) -> None:
        if self.syncnet_batch_size % 2:
            raise ValueError("syncnet_batch_size must be even (positives and negatives come in pairs)")

    @property
    def total_steps(self) -> int:
        return self.syncnet_steps + self.generator_steps


# ---------------------------------------------------------------------------------------------
# eval


@dataclass(frozen=True)
class EvalConfig:
    """`lipsync eval` (configs/eval.yaml).

    `held_out_fraction` and `sync_audio_offset` are None by default: they are read from the
    bundle's recorded training config (its val_fraction and the SyncNet's trained pairing), so
    eval scores exactly the frames training held out. Set them only to override that.
    """

    held_out_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    sync_audio_offset: int | None = None
    sync_max_offset: PositiveInt = 10  # LSE offsets -10..+10 frames, as in the SyncNet evaluations
    metric_crop_size: PositiveInt = 320  # LMD and mouth metrics are measured in a crop of the face box at this size
    mouth_pad: NonNegativeFloat = 0.06  # the mouth region is the real lips' bounding box grown by this * crop size
    shuffle_shift: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5  # shuffled audio = features rolled by this fraction
    strip_frames: PositiveInt = 4  # rows of the PNG strip (evenly spaced evaluated frames)
    batch_size: PositiveInt = 8  # generator forward batch
    sync_batch_size: PositiveInt = 32
    device: Device = "auto"


# ---------------------------------------------------------------------------------------------
# the loader

# Each run config's YAML file in lipsync/configs/ (package data; a bare name) ...
CONFIG_FILES: dict[type, str] = {PrepareConfig: "prepare", RenderConfig: "render", DubConfig: "dub",
                                 TrainConfig: "train", EvalConfig: "eval"}
# ... and nested sections whose defaults come from another file (the dub actors render with
# configs/render.yaml; configs/dub.yaml lists only what it changes).
NESTED_FILES: dict[tuple[type, str], str] = {(DubConfig, "render"): "render"}


def resolve_path(name_or_path: str | Path) -> Path | importlib.resources.abc.Traversable:
    """A bare name like "prepare" means the packaged lipsync/configs/prepare.yaml; anything else is a path."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} or p.parent != Path("."):
        return p
    return CONFIG_DIR / f"{name_or_path}.yaml"


def load_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """A YAML mapping; ConfigError naming the file when it is missing, unreadable or not a mapping."""
    return read_yaml_file(resolve_path(name_or_path))


def read_yaml_file(path: Path | importlib.resources.abc.Traversable) -> dict[str, Any]:
    """The YAML mapping in the file `path` itself (no name lookup); ConfigError naming it."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(path, f"cannot read config file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(path, "a config file must be a mapping of key: value")
    return data


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """`["loss.l1=2", "steps=10"]` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(None, f"--set {item!r} is not key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(None, f"--set {item!r}: the value is not a YAML scalar") from None
        target = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(None, f"--set {item!r} conflicts with another --set of {part!r}")
        target[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, recursively for nested mappings."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _drop_none(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line flags that were not given are None: they do not override anything."""
    out = {}
    for k, v in flags.items():
        if isinstance(v, Mapping):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every settable key of `cls`, nested ones dotted ("render.crf")."""
    keys = []
    for f in dataclasses.fields(cls):
        sub = _nested_class(cls, f.name)
        keys += _dotted_keys(sub, f"{prefix}{f.name}.") if sub is not None else [prefix + f.name]
    return keys


def _check_keys(cls: type, data: Mapping[str, Any], where: str = "", root: type | None = None) -> None:
    """Unknown keys are errors (a typo must not pass silently), with the closest known key."""
    root = root or cls
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            wrong = f"{where}{key}"
            known = _dotted_keys(root)
            close = difflib.get_close_matches(wrong, known, n=1, cutoff=0.6) or \
                [k for k in known if k.rsplit(".", 1)[-1] == str(key)][:1]
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(names))}"
            raise ConfigError(None, f"unknown config key {wrong!r} for {root.__name__}{hint}")
        sub = _nested_class(cls, key)
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(None, f"config key {where}{key} must be a mapping of {sub.__name__} keys")
            _check_keys(sub, value, f"{where}{key}.", root)


@functools.cache
def _nested_classes(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {name: tp for name, tp in hints.items() if dataclasses.is_dataclass(tp)}


def _nested_class(cls: type, key: str) -> type | None:
    return _nested_classes(cls).get(key)


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _one_line(error: ValidationError) -> str:
    """pydantic's first error as `key.path: reason (got value)`."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    shown = first.get("input")
    got = "" if isinstance(shown, Mapping) else f" (got {shown!r})"
    more = error.error_count() - 1
    return f"config {where}: {message}{got}".replace("config :", "config:") + \
        (f"; and {more} more problem(s)" if more else "")


def from_dict(cls: type[T], data: Mapping[str, Any], source: str | Path | None = None) -> T:
    """Build and validate `cls` from a mapping: ConfigError (naming `source`) when anything is wrong."""
    try:
        _check_keys(cls, data)
        return _adapter(cls).validate_python(dict(data))
    except ValidationError as exc:
        raise ConfigError(source, _one_line(exc)) from None
    except ConfigError as exc:
        raise ConfigError(source, exc.problem) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] | None = None,
                flags: Mapping[str, Any] | None = None) -> T:
    """The config `cls` from its YAML file (or `path`), then `--set` overrides, then `flags`.

    `flags` holds command-line options (nested dicts for sections; None = not given).
    ConfigError (exit code 2) for an unknown key, a wrong type or a value out of range.
    """
    # A user's `path` is always a file path (`foo` is ./foo, not a packaged lipsync/configs/foo.yaml).
    source = Path(path) if path is not None else resolve_path(CONFIG_FILES[cls])
    data = read_yaml_file(source)
    for (owner, key), file in NESTED_FILES.items():
        if owner is cls:
            data[key] = merge(load_yaml(file), data.get(key) or {})
    data = merge(merge(data, parse_overrides(overrides)), _drop_none(flags or {}))
    return from_dict(cls, data)  # the message names the setting (file, --set or flag alike)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))
