"""Render: a character bundle + an audio file -> a dubbed video.

`render_segment` is the unit the cluster job runs per shard: frames [a, b) of an item depend only
on (character, audio features, a, b, start_frame), so shards rendered anywhere and concatenated
equal one render of the whole item. Inside a segment three stages overlap:

    reader thread:  template JPEG -> crop -> model inputs   (batches of B frames)
    this thread:    generator forward                        (the only stage that uses the device)
    writer thread:  crop -> paste-back -> ffmpeg encoder pipe
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lipsync.audio import frontend, loudness, vad
from lipsync.audio.features import context_range
from lipsync.bundle import Character, load_character
from lipsync.config import RenderConfig
from lipsync.errors import InputError, OutputExistsError
from lipsync.face import geometry
from lipsync.io import media, storage
from lipsync.render.paint import (
    model_crop,
    model_input,
    paint,
    painted_frame,
    prepare_for_inference,
)
from lipsync.render.rest import RestingMouth, resting_mouth
from lipsync.runtime import resolve_device

ProgressFn = Callable[[int, int], None]

FEATURE_CHUNK_FRAMES = 1024  # mel windows built per chunk, so memory stays flat with audio length


@dataclass
class SegmentStats:
    frames: int = 0
    no_face: int = 0  # template frames without a detected face: written unchanged
    nonfinite: int = 0  # model outputs with NaN/inf: the template frame is written instead
    resting: int = 0  # frames inside a pause: the resting mouth, no generator output
    seconds: float = 0.0
    model_seconds: float = 0.0


@dataclass
class RenderResult:
    out: str
    frames: int
    duration: float
    stats: SegmentStats = field(default_factory=SegmentStats)


@dataclass
class _Batch:
    indices: list[int]  # output frame indices k
    frames: list[np.ndarray]  # full template frames (H, W, 3)
    boxes: list[np.ndarray]
    crops: list[np.ndarray]  # (S+2m, S+2m, 3) crops
    passthrough: list[bool]  # no face in the template: written unchanged
    inputs: np.ndarray  # (B, 6, S, S) float32
    audio: np.ndarray  # (B, *context_shape) float32
    rest: np.ndarray | None = None  # (B,) rest weights (pauses, lipsync.audio.vad); None: no pause

    @property
    def all_resting(self) -> bool:
        """Every frame is fully at rest: the generator's output would not be used."""
        return self.rest is not None and bool((self.rest >= 1.0).all())


_END = object()


# ---------------------------------------------------------------------------------------------
# audio


def load_audio(audio_path: str | Path, cfg: RenderConfig, sample_rate: int) -> np.ndarray:
    """Decode and validate the audio: empty, corrupt, non-audio and too-long inputs are InputErrors.

    Too long is refused before decoding when the container's duration says so, and otherwise
    while decoding: at most max_audio_seconds (+1 sample) is ever decoded, in bounded chunks
    into one float32 array (see media.read_audio).
    """
    info = media.probe(audio_path)
    if not info.has_audio:
        raise InputError(audio_path, "has no audio track")
    limit = cfg.max_audio_seconds
    hint = "(raise max_audio_seconds to allow it)"
    # header durations are approximate: allow half a second, the decoded length decides exactly
    if info.duration > limit + 0.5:
        raise InputError(audio_path, f"audio is {info.duration:.0f} s long; the maximum is {limit:g} s {hint}")
    max_samples = int(limit * sample_rate)
    wav = media.read_audio(audio_path, sample_rate, max_samples=max_samples, info=info)
    if wav.size > max_samples:
        raise InputError(audio_path, f"audio is longer than the maximum of {limit:g} s {hint}")
    if wav.size < sample_rate / 25:  # less than one video frame
        raise InputError(audio_path, "audio is shorter than one video frame (40 ms)")
    return wav


AUDIO_CHUNK_SAMPLES = frontend.AUDIO_CHUNK_SAMPLES  # samples per push in audio_features (~33 s at 16 kHz)


def audio_features(character: Character, wav, batch_size: int = 64, smooth_frames: int = 1) -> np.ndarray:
    """Per-output-frame features (N, feature_dim), N = ceil(duration * fps), computed in chunks by
    the character's own audio front-end (bundle.json audio_features: ave | hubert | wenet).

    `wav` is a float32 mono array or an iterable of such chunks (e.g. media.iter_audio). The
    front-end runs chunk by chunk (lipsync.audio.frame_features), so besides the result only
    bounded blocks are held; for an array the result is allocated once, N known in advance.
    For `ave` these are the AudioEncoder's 512 values per frame over the Wav2Lip mel windows.
    """
    backend = getattr(character, "audio_backend", "ave")
    model = character.audio_encoder if backend == "ave" else character.audio_frontend()
    feats = frontend.frame_features(backend, model, wav, character.audio, batch_size=batch_size,
                                    chunk_frames=FEATURE_CHUNK_FRAMES)
    return smooth_features(feats, smooth_frames)


def smooth_features(feats: np.ndarray, window: int) -> np.ndarray:
    """(N, D) features averaged over a centred window of `window` frames (odd; edges use what
    exists). A pure function of the whole item's features, so shards cut anywhere agree."""
    if window <= 1:
        return feats
    if window % 2 == 0:
        raise ValueError(f"feature_smooth_frames must be odd, got {window}")
    half = window // 2
    csum = np.concatenate([np.zeros((1, feats.shape[1]), np.float64), np.cumsum(feats, axis=0, dtype=np.float64)])
    k = np.arange(len(feats))
    lo, hi = np.maximum(k - half, 0), np.minimum(k + half + 1, len(feats))
    return ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the three stages


def _read_batches(character: Character, feats: np.ndarray, a: int, b: int, start_frame: int, batch_size: int,
                  rest: np.ndarray | None = None) -> Iterator[_Batch]:
    """Template frames for output frames [a, b), cropped and turned into model inputs."""
    no_face = character.frames_without_face
    for lo in range(a, b, batch_size):
        hi = min(b, lo + batch_size)
        batch = _Batch(list(range(lo, hi)), [], [], [], [], None, context_range(feats, lo, hi, character.audio),
                       None if rest is None or not rest[lo:hi].any() else rest[lo:hi])
        inputs = []
        for k in batch.indices:
            t = geometry.bounce(k + start_frame, character.n_templates)
            frame = media.read_image(character.template_path(t))
            box = character.boxes[t]
            crop_full, face = model_crop(character, frame, box)
            batch.frames.append(frame)
            batch.boxes.append(box)
            batch.crops.append(crop_full)
            batch.passthrough.append(t in no_face)
            inputs.append(model_input(character, face))
        batch.inputs = np.stack(inputs)
        yield batch


def _paste(character: Character, batch: _Batch, outputs: np.ndarray | None, stats: SegmentStats,
           mouth: RestingMouth | None, colour_band: float) -> Iterator[np.ndarray]:
    for i in range(len(batch.indices)):
        frame = batch.frames[i]
        if batch.passthrough[i]:
            stats.no_face += 1
            yield frame
            continue
        weight = 0.0 if batch.rest is None else float(batch.rest[i])
        stats.resting += weight >= 1.0
        painted = painted_frame(character, frame, batch.boxes[i], batch.crops[i],
                                None if outputs is None else outputs[i], mouth, weight, colour_band)
        if painted is None:
            stats.nonfinite += 1
            yield frame
            continue
        yield painted


class _Stage(threading.Thread):
    """A daemon thread that moves items between bounded queues and remembers its exception."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as e:  # re-raised in the caller's thread
            self.error = e


def _put(q: queue.Queue, item, stop: threading.Event, consumer: threading.Thread | None = None) -> bool:
    """Put unless stopped or the consumer died (then the item could never be taken)."""
    while not stop.is_set() and (consumer is None or consumer.is_alive()):
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, producer: threading.Thread, stop: threading.Event):
    """Next item; _END when stopped or the producer died without sending one (its error is raised later)."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if not producer.is_alive() and q.empty():
                return _END
    return _END


def render_segment(character: Character, feats: np.ndarray, a: int, b: int, out_path: str | Path, *,
                   cfg: RenderConfig = RenderConfig(), crf: int | None = None, start_frame: int = 0,
                   audio_path: str | Path | None = None, progress: ProgressFn | None = None,
                   rest: np.ndarray | None = None) -> SegmentStats:
    """Render output frames [a, b) into an H.264 mp4 at `out_path` (a local file).

    `rest`: the item's (N,) rest weights (lipsync.audio.vad.frame_rest_weights) or None (no pauses).
    """
    if not 0 <= a < b <= len(feats):
        raise ValueError(f"frame range [{a}, {b}) is not inside [0, {len(feats)})")
    if rest is not None and len(rest) != len(feats):
        raise ValueError(f"{len(rest)} rest weights for {len(feats)} frames")
    mouth = resting_mouth(character, cfg) if rest is not None and rest[a:b].any() else None
    started = time.perf_counter()
    settings = media.EncodeSettings(crf=cfg.crf if crf is None else crf, preset=cfg.x264_preset,
                                    pix_fmt=cfg.pix_fmt, audio_bitrate=cfg.audio_bitrate, threads=cfg.x264_threads)
    width, height = character.frame_size
    stats = SegmentStats()
    stop = threading.Event()
    to_model: queue.Queue = queue.Queue(cfg.queue_depth)
    to_writer: queue.Queue = queue.Queue(cfg.queue_depth)

    def read() -> None:
        for batch in _read_batches(character, feats, a, b, start_frame, cfg.batch_size, rest):
            if not _put(to_model, batch, stop):
                return
        _put(to_model, _END, stop)

    with media.VideoWriter(out_path, width, height, settings, audio=audio_path) as writer:

        def write() -> None:
            while True:
                item = _get(to_writer, model_thread, stop)
                if item is _END:
                    return
                batch, outputs = item
                for frame in _paste(character, batch, outputs, stats, mouth, cfg.colour_match_band):
                    writer.write(frame)
                stats.frames += len(batch.indices)
                if progress:
                    progress(stats.frames, b - a)

        model_thread = threading.current_thread()
        reader, painter = _Stage(read), _Stage(write)
        reader.start()
        painter.start()
        try:
            while True:
                batch = _get(to_model, reader, stop)
                if batch is _END:
                    break
                t0 = time.perf_counter()
                outputs = None if batch.all_resting else paint(character, batch.inputs, batch.audio, cfg)
                stats.model_seconds += time.perf_counter() - t0
                if not _put(to_writer, (batch, outputs), stop, painter):
                    break
            _put(to_writer, _END, stop, painter)
            painter.join()
        finally:
            stop.set()
            reader.join()
            painter.join(timeout=30)
        for stage in (reader, painter):
            if stage.error is not None:
                raise stage.error
    stats.seconds = time.perf_counter() - started
    return stats


# ---------------------------------------------------------------------------------------------
# one file


def render(character_uri: str, audio_uri: str, out_uri: str, cfg: RenderConfig = RenderConfig(), *,
           enhance: bool = False, crf: int | None = None, start_frame: int = 0, overwrite: bool = False,
           progress: ProgressFn | None = None, character: Character | None = None) -> RenderResult:
    """Dub `audio_uri` with the character at `character_uri`; the mp4 appears at `out_uri` only when done."""
    # 1. check inputs and output (storage problems are one line here, before any work)
    if start_frame < 0:
        raise InputError(None, f"--start-frame must be >= 0, got {start_frame}")
    storage.check_output_path(out_uri)
    if storage.exists(out_uri) and not overwrite:
        raise OutputExistsError(out_uri)
    storage.check_readable(audio_uri)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    # 2. load the character (once), decode the audio, compute features
    if character is None:
        character = load_character(character_uri, device=resolve_device(cfg.device))
        prepare_for_inference(character, cfg)
    with storage.local_copy(audio_uri) as audio_path:
        wav = loudness.normalise(load_audio(audio_path, cfg, character.audio.sample_rate), character.audio,
                                 inplace=True)  # to the level the character was trained at
        feats = audio_features(character, wav, cfg.feature_batch_size, cfg.feature_smooth_frames)
        rest = vad.frame_rest_weights(wav, len(feats), character.audio, cfg)  # None when silence is keep
        # 3. render all frames into one file, audio muxed in the same pass, then publish
        with storage.atomic_file(out_uri) as tmp:
            stats = render_segment(character, feats, 0, len(feats), tmp, cfg=cfg,
                                   crf=crf if crf is not None else (cfg.crf_enhance if enhance else cfg.crf),
                                   start_frame=start_frame, audio_path=audio_path, progress=progress, rest=rest)
    return RenderResult(out=out_uri, frames=len(feats), duration=wav.size / character.audio.sample_rate,
                        stats=stats)
