"""Per-video-frame audio features and the +-context stack the generator reads.

Backend `ave` (the default): each video frame's (n_mels, mel_window) = (80, 16) mel window goes
through the AudioEncoder (1x80x16 -> 512), giving feats (N, feature_dim) with exactly one row per
output video frame (N = num_video_frames). For frame k the generator gets the features of frames
k - context .. k + context - 1 (16 rows with context 8), zero rows where that index falls outside
[0, N), reshaped in C order to `cfg.context_shape` = (32, 16, 16).

Other backends (future work) produce different per-frame features and stacks: SyncTalk_2D's
`hubert` stack is (32, 32, 32) and `wenet` is (256, 16, 32). The functions here take their sizes
from `AudioConfig` (context, feature_dim, context_shape) rather than assuming `ave`'s, so those
backends only need their own encoder and config values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from lipsync.audio.mel import MelStream, mel_window_start, mel_windows, num_video_frames
from lipsync.config import AudioConfig


def _encoder_dtype(encoder: torch.nn.Module) -> torch.dtype:
    """Feed the encoder in its own parameter dtype (the caller picks the precision)."""
    param = next(encoder.parameters(), None)
    return param.dtype if param is not None else torch.float32


def encode_frames(
    encoder: torch.nn.Module,
    windows: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Run the audio encoder over per-frame mel windows, batch by batch.

    windows: (N, n_mels, mel_window) float, e.g. from `mel_windows`. The encoder must already
    live on `device`; it gets (B, 1, n_mels, mel_window) and may return (B, D) or (B, D, 1, 1).
    Returns (N, D) float32 (D = 512 for `ave`). The encoder runs in eval mode (its previous mode
    is restored), so BatchNorm statistics do not depend on how frames are batched; only one
    batch is on the device at a time.
    """
    if windows.ndim != 3:
        raise ValueError(f"expected windows of shape (N, n_mels, width), got {windows.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = windows.shape[0]
    dtype = _encoder_dtype(encoder)
    out: np.ndarray | None = None
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            # range(max(n, 1)) runs one empty batch when n == 0 so that D is known.
            for lo in range(0, max(n, 1), batch_size):
                hi = min(lo + batch_size, n)
                batch = torch.from_numpy(np.ascontiguousarray(windows[lo:hi], dtype=np.float32))
                batch = batch.to(device=device, dtype=dtype).unsqueeze(1)  # (B, 1, n_mels, width)
                feats = encoder(batch).flatten(1)  # (B, D)
                if out is None:
                    out = np.empty((n, feats.shape[1]), dtype=np.float32)
                out[lo:hi] = feats.float().cpu().numpy()
    finally:
        encoder.train(was_training)
    assert out is not None
    return out


def _frames_with_complete_windows(n_columns: int, cfg: AudioConfig) -> int:
    """How many leading video frames have all `mel_window` columns among the first `n_columns`."""
    last_start = n_columns - cfg.mel_window  # frame k is complete when mel_window_start(k) <= this
    if last_start < 0:
        return 0
    per = cfg.hop_length * cfg.fps  # mel_window_start(k) = k * sample_rate // per
    return -(-(last_start + 1) * per // cfg.sample_rate)


def iter_features(
    encoder: torch.nn.Module,
    wav_chunks: Iterable[np.ndarray],
    cfg: AudioConfig,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    chunk_frames: int = 1024,
) -> Iterator[np.ndarray]:
    """Encoder features of audio that arrives in chunks: (rows, D) blocks for frames 0, 1, 2, ...

    Equal (to float32 rounding) to encode_frames(encoder, mel_windows(melspectrogram(wav), N))
    of the concatenated audio, N = num_video_frames(total samples), but memory stays bounded by
    the chunk sizes: the mel is built by a MelStream, a frame is encoded as soon as its window's
    columns are final, mel columns no later frame reads are dropped, and blocks come out
    `chunk_frames` rows at a time (the last may be shorter) in the same batches as
    `encode_frames` over chunk_frames-sized ranges would use. Empty audio raises ValueError.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    stream = MelStream(cfg)
    mel = np.zeros((cfg.n_mels, 0), np.float32)  # buffered mel columns, the first is `mel_start`
    mel_start = 0
    k = 0  # next frame to encode

    def encode(count: int) -> np.ndarray:
        return encode_frames(encoder, mel_windows(mel, count, cfg, start=k, mel_start=mel_start),
                             batch_size=batch_size, device=device)

    for chunk in wav_chunks:
        cols = stream.push(chunk)
        if cols.shape[1]:
            mel = np.concatenate([mel, cols], axis=1)
        ready = min(_frames_with_complete_windows(stream.n_columns, cfg), num_video_frames(stream.n_samples, cfg))
        while ready - k >= chunk_frames:
            yield encode(chunk_frames)
            k += chunk_frames
        drop = int(mel_window_start(k, cfg)) - mel_start  # columns before frame k's window
        if drop > 0:
            mel = mel[:, drop:].copy()
            mel_start += drop
    cols = stream.finish()
    mel = np.concatenate([mel, cols], axis=1)
    n = num_video_frames(stream.n_samples, cfg)
    while k < n:
        count = min(chunk_frames, n - k)
        yield encode(count)
        k += count


def _check_context_shape(feats: np.ndarray, cfg: AudioConfig) -> None:
    if feats.ndim != 2 or feats.shape[1] != cfg.feature_dim:
        raise ValueError(f"expected feats of shape (N, {cfg.feature_dim}), got {feats.shape}")
    stacked = 2 * cfg.context * cfg.feature_dim
    if math.prod(cfg.context_shape) != stacked:
        raise ValueError(
            f"context_shape {cfg.context_shape} does not hold 2*context*feature_dim = {stacked} values"
        )


def context_range(feats: np.ndarray, a: int, b: int, cfg: AudioConfig) -> np.ndarray:
    """Context stacks for frames a .. b-1: (b - a, *cfg.context_shape) float32.

    Row i is frames (a + i) - context .. (a + i) + context - 1 of `feats` (N, feature_dim), zero
    where the index is outside [0, N), reshaped in C order. Builds only the requested range, so a
    render shard of long audio never holds the stacks of the whole item.
    """
    _check_context_shape(feats, cfg)
    n = feats.shape[0]
    if not 0 <= a <= b <= n:
        raise ValueError(f"frame range [{a}, {b}) is not inside [0, {n})")
    offsets = np.arange(-cfg.context, cfg.context)  # (2*context,)
    idx = np.arange(a, b)[:, None] + offsets[None, :]  # (M, 2*context)
    inside = (idx >= 0) & (idx < n)
    out = np.zeros((b - a, 2 * cfg.context, cfg.feature_dim), dtype=np.float32)
    out[inside] = feats[idx[inside]]  # (M, 2*context, feature_dim)
    return out.reshape(b - a, *cfg.context_shape)


def context_stack(feats: np.ndarray, k: int, cfg: AudioConfig) -> np.ndarray:
    """The generator's audio input for frame k: (*cfg.context_shape) float32, e.g. (32, 16, 16)."""
    return context_range(feats, k, k + 1, cfg)[0]
