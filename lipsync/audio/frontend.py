"""The audio front-ends (`ave`, `hubert`, `wenet`) behind one dispatch function, `frame_features`.

Every front-end turns 16 kHz mono audio into exactly one feature row per 25 fps output video
frame, N = num_video_frames(n_samples) = ceil(duration * fps), so render, dub, train and eval
treat them alike; only the row width (`AudioConfig.feature_dim`) and the generator's stack shape
(`AudioConfig.context_shape`, 2 * context rows reshaped) differ:

    backend  per-frame row                                   feature_dim  context stack (+-8 rows)
    ave      AudioEncoder(80x16 mel window)                  512          (32, 16, 16)
    hubert   HuBERT frames 2k and 2k+1 (50 Hz x 1024)        2048         (32, 32, 32)
    wenet    16 WeNet encoder outputs (x 512) around frame k 8192         (256, 16, 32)

All of them stream: audio comes in chunks (an array is cut into chunks) and features go out in
blocks, so memory is bounded by the chunk sizes, not by the length of the audio. The model of
each backend is loaded once by `load_frontend` from a local path (never from a hub); the models
themselves do no I/O. See docs/AUDIO.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipsync.audio.features import iter_features
from lipsync.audio.mel import num_video_frames
from lipsync.config import AudioConfig
from lipsync.errors import InputError

BACKENDS = ("ave", "hubert", "wenet")
DEFAULT_BACKEND = "ave"

# Width of one video frame's feature row, and the +-context stack the generator reads, per backend
# (must agree with lipsync.models.generator.AUDIO_FEATURE_SHAPES; tests check it).
FRAME_FEATURE_DIMS: dict[str, int] = {"ave": 512, "hubert": 2048, "wenet": 8192}
CONTEXT_SHAPES: dict[str, tuple[int, int, int]] = {"ave": (32, 16, 16), "hubert": (32, 32, 32),
                                                   "wenet": (256, 16, 32)}
# The optional dependencies each backend needs: (import names, the pip extra that installs them).
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "hubert": (("transformers",), "hubert"),
    "wenet": (("onnxruntime", "kaldi_native_fbank"), "wenet"),
}

AUDIO_CHUNK_SAMPLES = 1 << 19  # samples per push when the audio is one array (~33 s at 16 kHz)
FEATURE_CHUNK_FRAMES = 1024  # video frames per block of features


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InputError(None, f"unknown audio front-end {backend!r} (choose from: {', '.join(BACKENDS)})")
    return backend


def audio_config_for(audio: AudioConfig, backend: str) -> AudioConfig:
    """`audio` with the per-frame feature width and the context stack shape of `backend`."""
    check_backend(backend)
    return dataclasses.replace(audio, feature_dim=FRAME_FEATURE_DIMS[backend],
                               context_shape=CONTEXT_SHAPES[backend])


def backend_of(info: dict[str, Any] | None) -> tuple[str, str | None]:
    """(backend, weights) recorded in a bundle.json / training state; bundles before the field: ave."""
    section = (info or {}).get("audio_features") or {}
    if not isinstance(section, dict):
        raise InputError(None, f"audio_features must be a mapping, got {section!r}")
    return check_backend(str(section.get("backend") or DEFAULT_BACKEND)), section.get("weights")


def require_extra(backend: str, weights: str | None = None) -> None:
    """InputError naming the pip extra when a backend's optional packages are not installed."""
    if backend not in EXTRAS:
        return
    modules, extra = EXTRAS[backend]
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(weights, f"the {backend} audio front-end needs {', '.join(missing)}: "
                                  f"pip install 'lipsync[{extra}]' (or pip install -e '.[{extra}]')")


def load_frontend(backend: str, weights: str | None, device: str | torch.device = "cpu") -> Any:
    """The model of a `hubert` or `wenet` front-end, from local weights (files only, no download).

    InputError naming the extra when its packages are missing, and naming the weights path when
    it is missing or is not such a model. `ave` has no model here (the bundle's AudioEncoder).
    """
    check_backend(backend)
    if backend == "ave":
        raise ValueError("the ave front-end's model is the bundle's AudioEncoder")
    if not weights:
        raise InputError(None, f"the {backend} audio front-end needs weights (--audio-weights PATH)")
    require_extra(backend, weights)
    if backend == "hubert":
        from lipsync.audio.hubert import load_hubert

        return load_hubert(weights, device)
    from lipsync.audio.wenet import load_wenet

    return load_wenet(weights, device)


def _chunks(wav: np.ndarray | Iterable[np.ndarray]) -> tuple[Iterator[np.ndarray], int | None]:
    if isinstance(wav, np.ndarray):
        if wav.ndim != 1 or wav.size == 0:
            raise ValueError(f"expected non-empty mono audio of shape (n_samples,), got {wav.shape}")
        return (wav[i:i + AUDIO_CHUNK_SAMPLES] for i in range(0, wav.size, AUDIO_CHUNK_SAMPLES)), wav.size
    return iter(wav), None


def iter_frame_features(backend: str, model: Any, wav: np.ndarray | Iterable[np.ndarray], cfg: AudioConfig, *,
                        batch_size: int = 64, device: str | torch.device | None = None,
                        chunk_frames: int = FEATURE_CHUNK_FRAMES) -> Iterator[np.ndarray]:
    """(rows, cfg.feature_dim) float32 blocks of per-video-frame features for frames 0, 1, 2, ...

    `model`: the AudioEncoder (ave) or what `load_frontend` returned. `cfg` must be the
    backend's AudioConfig (audio_config_for). `batch_size` is the ave encoder's batch.
    """
    check_backend(backend)
    if cfg.feature_dim != FRAME_FEATURE_DIMS[backend]:
        raise ValueError(f"{backend} features are {FRAME_FEATURE_DIMS[backend]} wide, cfg.feature_dim is "
                         f"{cfg.feature_dim} (use audio_config_for)")
    chunks, _ = _chunks(wav)
    if backend == "ave":
        if device is None:
            device = next(model.parameters()).device
        yield from iter_features(model, chunks, cfg, batch_size=batch_size, device=device,
                                 chunk_frames=chunk_frames)
    elif backend == "hubert":
        from lipsync.audio.hubert import iter_hubert_features

        yield from iter_hubert_features(model, chunks, cfg, chunk_frames=chunk_frames)
    else:
        from lipsync.audio.wenet import iter_wenet_features

        yield from iter_wenet_features(model, chunks, cfg, chunk_frames=chunk_frames)


def frame_features(backend: str, model: Any, wav: np.ndarray | Iterable[np.ndarray], cfg: AudioConfig, *,
                   batch_size: int = 64, device: str | torch.device | None = None,
                   chunk_frames: int = FEATURE_CHUNK_FRAMES) -> np.ndarray:
    """All per-video-frame features of `wav` (an array or an iterable of chunks): (N, feature_dim).

    N = ceil(n_samples * fps / sample_rate). The one way train, render, dub planning and eval
    compute features; for an array the result is allocated once (N is known in advance), for
    chunks the blocks are concatenated at the end.
    """
    n_samples = wav.size if isinstance(wav, np.ndarray) else None
    out = np.empty((num_video_frames(n_samples, cfg), cfg.feature_dim), np.float32) if n_samples else None
    blocks, k = [], 0
    for block in iter_frame_features(backend, model, wav, cfg, batch_size=batch_size, device=device,
                                     chunk_frames=chunk_frames):
        if out is not None:
            out[k:k + len(block)] = block
        else:
            blocks.append(block)
        k += len(block)
    if out is None:
        out = np.concatenate(blocks) if blocks else np.zeros((0, cfg.feature_dim), np.float32)
    if k != len(out):
        raise AssertionError(f"{backend} front-end gave {k} feature rows, expected {len(out)}")
    return out


@contextlib.contextmanager
def local_weights(weights: str, kind: str, directory: bool) -> Iterator[Path]:
    """A local path for `weights`: an existing local file or directory, or a storage URI (s3://)
    fetched (a directory into the local cache, a file into a temporary copy for the duration).
    A name that is neither, e.g. a hub id such as "facebook/hubert-large-ls960-ft", is refused:
    nothing is ever downloaded from a model hub."""
    from lipsync.io import storage

    if storage.is_remote(weights):
        if not storage.exists(weights):
            raise InputError(weights, f"{kind} not found")
        if directory:
            yield storage.cached_local_dir(weights)
        else:
            with storage.local_copy(weights) as path:
                yield Path(path)
        return
    path = Path(str(weights).removeprefix("file://")).expanduser()
    if not path.exists():
        raise InputError(weights, f"{kind} not found (a local path is needed: models are never downloaded "
                                  "at run time; docs/AUDIO.md says where to get the weights)")
    if directory and not path.is_dir():
        raise InputError(weights, f"{kind} must be a directory (config.json + model weights)")
    if not directory and not path.is_file():
        raise InputError(weights, f"{kind} must be a file")
    yield path
