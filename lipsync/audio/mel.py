"""Wav2Lip-style mel spectrogram and the per-video-frame mel windows cut from it.

Pipeline (all numbers from `AudioConfig`; defaults in brackets):
    wav (float32 mono @ sample_rate [16 kHz])
      -> preemphasis y[n] = x[n] - k x[n-1]                   [k = 0.97]
      -> |STFT| (n_fft, hop_length, win_length, hann, center)  [800, 200, 800]
      -> mel filterbank (n_mels, fmin, fmax, slaney)           [80, 55 Hz, 7600 Hz]
      -> dB: 20 log10(max(floor, x)) - ref_level_db            [floor = 10^(min_level_db/20) = 1e-5, ref 20]
      -> symmetric normalisation to [-max_abs_value, max_abs_value]   [4]
The STFT is centred, so a signal of n samples gives 1 + n // hop_length mel frames
(80 per second: 8.00 s -> 641).

Video frame k (at `fps`) reads the `mel_window` [16] mel frames starting at mel frame
(k * sample_rate) // (hop_length * fps), i.e. int(80 * k / 25) computed exactly in integers.
See docs/AUDIO.md.
"""

from __future__ import annotations

import functools

import numpy as np

from lipsync.config import AudioConfig


def num_video_frames(n_samples: int, cfg: AudioConfig) -> int:
    """Video frames needed to cover `n_samples` of audio: ceil(n_samples * fps / sample_rate).

    Integer arithmetic so that exact durations do not round up by float error
    (8.00 s at 16 kHz -> 200 frames; one more sample -> 201; 0 samples -> 0).
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    return -(-n_samples * cfg.fps // cfg.sample_rate)


def mel_window_start(k: int | np.ndarray, cfg: AudioConfig) -> int | np.ndarray:
    """First mel frame of video frame k's window: floor(k * mel_frames_per_second / fps), exactly."""
    return (k * cfg.sample_rate) // (cfg.hop_length * cfg.fps)


def silence_value(cfg: AudioConfig) -> float:
    """The normalised mel value of digital silence (the bottom of the range: -max_abs_value)."""
    return -cfg.max_abs_value


# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, 3 mels per 200 Hz;
# logarithmic above, 27 mels per factor 6.4 (1 kHz is mel 15).
_LINEAR_HZ_PER_MEL = 200.0 / 3
_LOG_MIN_HZ = 1000.0
_LOG_MIN_MEL = _LOG_MIN_HZ / _LINEAR_HZ_PER_MEL  # 15
_LOG_STEP = np.log(6.4) / 27.0  # natural log of Hz per mel above 1 kHz


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, np.float64)
    log_part = _LOG_MIN_MEL + np.log(np.maximum(hz, _LOG_MIN_HZ) / _LOG_MIN_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_MIN_HZ, log_part, hz / _LINEAR_HZ_PER_MEL)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    log_part = _LOG_MIN_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_MIN_MEL) - _LOG_MIN_MEL))
    return np.where(mel >= _LOG_MIN_MEL, log_part, _LINEAR_HZ_PER_MEL * mel)


@functools.lru_cache(maxsize=8)
def _mel_basis(cfg: AudioConfig) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 filterbank; cached because configs are frozen (hashable).

    Triangles on the Slaney mel scale with Slaney ("area") normalisation, i.e. what
    librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) returns, bit for bit (tests/test_audio.py):
    band i rises from edge f[i] to f[i+1] and falls to f[i+2] (n_mels + 2 edges evenly spaced in
    mel from fmin to fmax), and is scaled by 2 / (f[i+2] - f[i]); as in librosa, the triangle is
    rounded to float32 first and the scaled value again. numpy only: librosa's import costs a worker ~1.5 s.
    """
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))  # (n_mels + 2,)
    bins = np.fft.rfftfreq(cfg.n_fft, 1.0 / cfg.sample_rate)  # (1 + n_fft // 2,) Hz of each FFT bin
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rising = (bins - lo) / (mid - lo)  # (n_mels, n_bins)
    falling = (hi - bins) / (hi - mid)
    basis = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    basis *= 2.0 / (hi - lo)  # float64 product rounded to float32 in place
    basis.setflags(write=False)  # shared by every caller through the cache
    return basis


def preemphasis(x: np.ndarray, k: float, previous: float = 0.0) -> np.ndarray:
    """y[n] = x[n] - k * x[n-1] (a first-order high-pass that lifts the consonants), x[-1] = `previous`
    (0 for a whole signal; the last sample of the chunk before when streaming), in float64 then
    rounded to float32.

    The same numbers as scipy.signal.lfilter([1, -k], [1], x, zi=[-k * previous]) (two-term sums
    are exact in either order); numpy alone, because importing scipy.signal costs a render or plan
    worker 0.7 s (docs/BENCHMARKS.md, cold start).
    """
    x = np.asarray(x).astype(np.float64)
    y = x.copy()
    y[1:] -= k * x[:-1]
    if y.size:
        y[0] -= k * previous
    return y.astype(np.float32)


def _amp_to_db(x: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    floor = 10.0 ** (cfg.min_level_db / 20.0)  # 1e-5 for min_level_db = -100
    return 20.0 * np.log10(np.maximum(floor, x)) - cfg.ref_level_db


def _normalize(db: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Map [min_level_db, 0] dB linearly onto [-m, m] (m = max_abs_value), clipping outside."""
    m = cfg.max_abs_value
    scaled = 2.0 * m * ((db - cfg.min_level_db) / -cfg.min_level_db) - m
    return np.clip(scaled, -m, m)


def melspectrogram(wav: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Normalised mel spectrogram of a mono waveform.

    wav: (n_samples,) float mono at cfg.sample_rate, values in [-1, 1]; must not be empty.
    Returns (n_mels, 1 + n_samples // hop_length) float32 in [-max_abs_value, max_abs_value].
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n_samples,), got {wav.shape}")
    if wav.size == 0:
        raise ValueError("cannot compute a mel spectrogram of empty audio")
    emphasised = preemphasis(wav.astype(np.float32, copy=False), cfg.preemphasis)
    return _to_mel(_stft_magnitude(emphasised, cfg, center=True), cfg)


def _to_mel(spec: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """|STFT| columns (1 + n_fft // 2, T) -> normalised mel columns (n_mels, T) float32."""
    mel = _mel_basis(cfg) @ spec  # (n_mels, T)
    return _normalize(_amp_to_db(mel, cfg), cfg).astype(np.float32)


STFT_BLOCK_FRAMES = 1024  # frames windowed and transformed at once: ~6.5 MB of float64 with the defaults


@functools.lru_cache(maxsize=8)
def _fft_window(n_fft: int, win_length: int) -> np.ndarray:
    """(n_fft,) float64 periodic Hann window of win_length samples, zero-padded equally on both sides."""
    if not 0 < win_length <= n_fft:
        raise ValueError(f"win_length must be in 1..n_fft={n_fft}, got {win_length}")
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)  # periodic: N, not N - 1
    left = (n_fft - win_length) // 2
    window = np.pad(hann, (left, n_fft - win_length - left))
    window.setflags(write=False)
    return window


def _stft_magnitude(samples: np.ndarray, cfg: AudioConfig, center: bool) -> np.ndarray:
    """|STFT| of `samples`: (1 + n_fft // 2, T) float32 (Fortran-ordered), T = 1 + (len - n_fft) // hop_length.

    The numbers librosa.stft(samples, n_fft, hop_length, win_length, center, pad_mode) gave
    (Hann window, rfft of the float64 product window * frame, stored as complex64, then |.|), from
    numpy alone. `center`: first pad n_fft // 2 samples each side with np.pad(mode=stft_pad_mode),
    so frame t is centred on sample t * hop_length. The frames are a strided view of `samples`;
    only STFT_BLOCK_FRAMES of them are windowed (float64) and transformed at a time.
    """
    n_fft, hop = cfg.n_fft, cfg.hop_length
    samples = np.asarray(samples)
    if center:
        samples = np.pad(samples, n_fft // 2, mode=cfg.stft_pad_mode)
    if samples.size < n_fft:
        raise ValueError(f"need at least n_fft={n_fft} samples for an uncentred STFT, got {samples.size}")
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop]  # (T, n_fft) view
    window = _fft_window(n_fft, cfg.win_length)  # (n_fft,)
    out = np.empty((len(frames), n_fft // 2 + 1), np.float32)  # (T, n_bins)
    for t in range(0, len(frames), STFT_BLOCK_FRAMES):
        block = frames[t:t + STFT_BLOCK_FRAMES] * window  # (b, n_fft) float64
        out[t:t + len(block)] = np.abs(np.fft.rfft(block, axis=1).astype(np.complex64))  # (b, n_bins)
    return out.T  # (n_bins, T), Fortran-ordered like librosa's: the mel matmul then rounds exactly as it did


class MelStream:
    """`melspectrogram` of audio that arrives in chunks, in memory bounded by the chunk size.

    push(chunk) returns the mel columns that are final once `chunk` is known; finish() returns
    the rest. Concatenated along time they equal melspectrogram(all samples) (to float32
    rounding): preemphasis carries its one-sample state across chunks (the last input sample), and the
    centred STFT is computed as an uncentred one over the padded stream, whose padding
    (`stft_pad_mode`, n_fft // 2 samples each side) is built from the first and the last
    n_fft // 2 + 1 samples exactly as np.pad builds it for the whole signal. Audio shorter than
    2 * n_fft samples is computed in one piece at finish().
    """

    def __init__(self, cfg: AudioConfig):
        if cfg.n_fft % 2:
            raise ValueError(f"MelStream needs an even n_fft, got {cfg.n_fft}")
        self.cfg = cfg
        self.n_samples = 0  # samples pushed so far
        self.n_columns = 0  # mel columns returned so far
        self._pad = cfg.n_fft // 2
        self._previous = 0.0  # preemphasis state: the last input sample
        self._head: list[np.ndarray] | None = []  # emphasised samples until streaming starts
        self._head_len = 0
        self._buf = np.zeros(0, np.float32)  # the padded stream from the next frame's first sample
        self._finished = False

    def _empty(self) -> np.ndarray:
        return np.zeros((self.cfg.n_mels, 0), np.float32)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add mono samples; returns the (n_mels, t) columns completed by them (t may be 0)."""
        if self._finished:
            raise ValueError("MelStream.push after finish")
        chunk = np.asarray(chunk)
        if chunk.ndim != 1:
            raise ValueError(f"expected mono audio of shape (n_samples,), got {chunk.shape}")
        if chunk.size == 0:
            return self._empty()
        self.n_samples += chunk.size
        chunk = chunk.astype(np.float32, copy=False)
        y = preemphasis(chunk, self.cfg.preemphasis, self._previous)
        self._previous = float(chunk[-1])
        if self._head is not None:
            self._head.append(y)
            self._head_len += y.size
            if self._head_len < 2 * self.cfg.n_fft:
                return self._empty()
            y = np.concatenate(self._head)
            self._head = None
            p = self._pad
            left = np.pad(y[: p + 1], (p, 0), mode=self.cfg.stft_pad_mode)[:p]
            self._buf = np.concatenate([left.astype(np.float32), y])
        else:
            self._buf = np.concatenate([self._buf, y])
        return self._frames()

    def finish(self) -> np.ndarray:
        """The remaining columns; afterwards n_columns == 1 + n_samples // hop_length."""
        if self._finished:
            raise ValueError("MelStream.finish called twice")
        self._finished = True
        if self.n_samples == 0:
            raise ValueError("cannot compute a mel spectrogram of empty audio")
        if self._head is not None:  # short audio: one centred STFT, as melspectrogram does
            spec = _stft_magnitude(np.concatenate(self._head), self.cfg, center=True)
            self._head = None
            out = _to_mel(spec, self.cfg)
            self.n_columns += out.shape[1]
            return out
        p = self._pad
        # the buffer always ends with >= n_fft - hop_length >= p + 1 real samples
        right = np.pad(self._buf[-(p + 1):], (0, p), mode=self.cfg.stft_pad_mode)[-p:]
        self._buf = np.concatenate([self._buf, right.astype(np.float32)])
        return self._frames()

    def _frames(self) -> np.ndarray:
        n_fft, hop = self.cfg.n_fft, self.cfg.hop_length
        if self._buf.size < n_fft:
            return self._empty()
        count = 1 + (self._buf.size - n_fft) // hop
        spec = _stft_magnitude(self._buf[: (count - 1) * hop + n_fft], self.cfg, center=False)
        self._buf = self._buf[count * hop:].copy()
        self.n_columns += count
        return _to_mel(spec, self.cfg)


def mel_windows(mel: np.ndarray, n_frames: int, cfg: AudioConfig, start: int = 0, mel_start: int = 0
                ) -> np.ndarray:
    """Mel windows for video frames start .. start + n_frames - 1.

    mel: (n_mels, T) from `melspectrogram`, or the part of it from mel frame `mel_start` on (a
    stream's buffer: mel[:, 0] is mel frame `mel_start`, which must not come after the first
    window's start). Returns (n_frames, n_mels, mel_window) float32 where row i is mel frames
    s .. s + mel_window - 1 with s = mel_window_start(start + i).

    Padding: near the end of the audio a window runs past the last mel frame (for the last
    ~mel_window / (mel frames per video frame) = 5 video frames with the defaults). Those columns
    are filled with the silence value -max_abs_value rather than by shifting the window back to
    end at the last mel frame (Wav2Lip's inference) or repeating the last column: the audio has
    ended, so the mouth should see silence, and every frame keeps the same alignment, which
    training and render share.
    """
    if mel.ndim != 2 or mel.shape[0] != cfg.n_mels:
        raise ValueError(f"expected mel of shape ({cfg.n_mels}, T), got {mel.shape}")
    if n_frames < 0 or start < 0:
        raise ValueError(f"n_frames and start must be >= 0, got n_frames={n_frames}, start={start}")
    width = cfg.mel_window
    if n_frames == 0:
        return np.zeros((0, cfg.n_mels, width), dtype=np.float32)
    starts = mel_window_start(np.arange(start, start + n_frames, dtype=np.int64), cfg)  # (n_frames,)
    # Work on the columns this frame range touches only, so a shard of long audio copies little.
    lo, hi = int(starts[0]), int(starts[-1]) + width
    if lo < mel_start:
        raise ValueError(f"frame {start} starts at mel frame {lo}, before the given mel (from {mel_start})")
    span = mel[:, lo - mel_start:hi - mel_start]  # (n_mels, <= hi - lo)
    if span.shape[1] < hi - lo:
        pad = np.full((cfg.n_mels, hi - lo - span.shape[1]), silence_value(cfg), dtype=mel.dtype)
        span = np.concatenate([span, pad], axis=1)  # (n_mels, hi - lo)
    cols = (starts - lo)[:, None] + np.arange(width)  # (n_frames, width)
    windows = span[:, cols]  # (n_mels, n_frames, width)
    return np.ascontiguousarray(windows.transpose(1, 0, 2), dtype=np.float32)
