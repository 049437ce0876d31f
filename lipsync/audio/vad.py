"""Voice activity per output video frame, and the rest weights the renderer blends with.

The detector is silero-vad, whose model ships inside its wheel (nothing is downloaded). It is
run once per item, over the same 16 kHz audio as the features, so every shard of an item sees
the same decision: a pause that crosses a shard boundary renders as if it were inside one.

    audio -> speech probability per 32 ms window  (speech_probabilities)
          -> voiced / unvoiced per 40 ms video frame  (voiced_frames: any overlapping window voiced)
          -> unvoiced runs shorter than vad_min_pause_frames count as voiced  (hangover inside words)
          -> rest weight per frame in [0, 1]: 1 in a pause, ramps of rest_fade_frames at its edges

All but the first step are pure functions of arrays (unit-tested without the model).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch

from lipsync.config import AudioConfig, RenderConfig

VAD_SAMPLE_RATE = 16000  # silero-vad runs at 8 or 16 kHz; the project's audio is 16 kHz
VAD_WINDOW = 512  # samples per silero-vad window at 16 kHz (32 ms)


def _windows(chunks: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    """Consecutive VAD_WINDOW-sample windows of a stream of chunks; the last one zero-padded."""
    carry = np.zeros(0, np.float32)
    for chunk in chunks:
        data = np.concatenate([carry, np.asarray(chunk, np.float32)])
        full = len(data) // VAD_WINDOW * VAD_WINDOW
        for i in range(0, full, VAD_WINDOW):
            yield data[i:i + VAD_WINDOW]
        carry = data[full:]
    if carry.size:
        yield np.pad(carry, (0, VAD_WINDOW - carry.size))


_thread_models = threading.local()  # one silero-vad model per thread (it keeps recurrent state)


def _thread_model():
    """This thread's silero-vad model, loaded from the installed wheel on the thread's first call.

    Loading costs 60-100 ms, which a planning worker paid per item (21% of its time in a profile
    of a 0.3 s-item catalog); the model keeps recurrent state, so threads do not share one and each
    call starts with reset_states().
    """
    model = getattr(_thread_models, "model", None)
    if model is None:
        from silero_vad import load_silero_vad  # its TorchScript model, from the installed wheel

        with warnings.catch_warnings():  # its loader's importlib.resources.path and torch.jit.load deprecations
            warnings.simplefilter("ignore", DeprecationWarning)
            model = _thread_models.model = load_silero_vad()
    return model


def speech_probabilities(wav: np.ndarray | Iterable[np.ndarray], sample_rate: int) -> np.ndarray:
    """(ceil(n_samples / 512),) float32 speech probability per 32 ms window of 16 kHz mono audio.

    `wav` is an array or an iterable of chunks (streamed: memory is the result, not the audio).
    """
    if sample_rate != VAD_SAMPLE_RATE:
        raise ValueError(f"voice activity needs {VAD_SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    chunks = [wav] if isinstance(wav, np.ndarray) else wav
    model = _thread_model()
    model.reset_states()
    probs = []
    with torch.inference_mode():
        for window in _windows(chunks):
            probs.append(float(model(torch.from_numpy(np.ascontiguousarray(window)), sample_rate)))
    return np.asarray(probs, np.float32)


def voiced_frames(probs: np.ndarray, n_frames: int, audio: AudioConfig, threshold: float) -> np.ndarray:
    """(n_frames,) bool: frame k is voiced when any VAD window overlapping its 1/fps of audio is.

    Frames past the last window (the audio's tail, N = ceil(duration * fps)) take the last window.
    """
    voiced_window = probs > threshold
    if voiced_window.size == 0:
        return np.zeros(n_frames, bool)
    per_frame = audio.sample_rate / audio.fps  # samples per video frame (640 at 16 kHz, 25 fps)
    k = np.arange(n_frames)
    first = np.minimum((k * per_frame) // VAD_WINDOW, voiced_window.size - 1).astype(np.int64)
    last = np.minimum((((k + 1) * per_frame) - 1) // VAD_WINDOW, voiced_window.size - 1).astype(np.int64)
    # any voiced window in [first, last]: a prefix sum over windows
    csum = np.concatenate([[0], np.cumsum(voiced_window)])
    return (csum[last + 1] - csum[first]) > 0


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-d bool array."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def fill_short_pauses(voiced: np.ndarray, min_pause: int) -> np.ndarray:
    """`voiced` with every unvoiced run shorter than `min_pause` frames turned voiced (hangover),
    so closures inside words and between close words do not rest the mouth."""
    out = voiced.copy()
    for a, b in runs(~voiced):
        if b - a < min_pause:
            out[a:b] = True
    return out


def rest_weights(voiced: np.ndarray, fade: int) -> np.ndarray:
    """(n,) float32 in [0, 1]: 0 where voiced, 1 inside a pause, ramping over `fade` frames inside
    each pause edge that borders speech (a pause at the start or end of the audio has no ramp there)."""
    n = len(voiced)
    weights = np.zeros(n, np.float32)
    for a, b in runs(~voiced):
        i = np.arange(a, b)
        up = np.ones(b - a) if a == 0 else (i - a + 1) / (fade + 1)
        down = np.ones(b - a) if b == n else (b - i) / (fade + 1)
        weights[a:b] = np.minimum(1.0, np.minimum(up, down))
    return weights


def frame_rest_weights(wav: np.ndarray | Iterable[np.ndarray], n_frames: int, audio: AudioConfig,
                       cfg: RenderConfig) -> np.ndarray | None:
    """The rest weight of each of the item's n_frames output frames; None when cfg.silence is keep."""
    if cfg.silence == "keep":
        return None
    probs = speech_probabilities(wav, audio.sample_rate)
    voiced = fill_short_pauses(voiced_frames(probs, n_frames, audio, cfg.vad_threshold), cfg.vad_min_pause_frames)
    return rest_weights(voiced, cfg.rest_fade_frames)


def pause_frames(wav: np.ndarray | Iterable[np.ndarray], n_frames: int, audio: AudioConfig,
                 cfg: RenderConfig) -> np.ndarray:
    """Indices of the frames fully inside a pause (rest weight 1) by cfg's VAD settings, whatever
    cfg.silence says: where a recording's speaker is silent (lipsync.render.rest, the footage's own)."""
    weights = frame_rest_weights(wav, n_frames, audio, replace(cfg, silence="rest"))
    return np.flatnonzero(weights >= 1.0)
