"""Loudness normalisation: every recording is brought to one integrated loudness before features.

A quiet recording (-35 LUFS) and a loud one (-10 LUFS) of the same speech would otherwise give
the audio encoder different inputs and the character a timid or an exaggerated mouth. Prepare
(the training audio), render and dub planning all call `normalise` with the AudioConfig the
character records, so train and render see the same levels.

The measure is ITU-R BS.1770 integrated loudness (EBU R128): K-weighting (a high shelf and a
high pass), mean square over 400 ms blocks every 100 ms, an absolute gate at -70 LUFS and a
relative gate 10 LU below the ungated mean. It is computed in one streaming pass (the filters
carry their state across chunks; only one sum of squares per 100 ms is kept), so memory does not
grow with the audio. The gain is capped by AudioConfig.max_gain_db and by the peak (no sample
above full scale), and audio with no block above the absolute gate (digital silence) is left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from lipsync.config import AudioConfig

BLOCK_S = 0.4  # gating block
STEP_S = 0.1  # hop between blocks (75 % overlap)
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
LOUDNESS_OFFSET = -0.691  # BS.1770: L = -0.691 + 10 log10(mean square of the K-weighted signal)
PEAK_CEILING = 0.99  # the gain never lifts a sample above this


def _biquad_high_shelf(rate: int, fc: float = 1500.0, gain_db: float = 4.0, q: float = 1 / math.sqrt(2)):
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * fc / rate
    alpha = math.sin(w0) / (2 * q)
    cos, sq = math.cos(w0), 2 * math.sqrt(a) * alpha
    b = [a * ((a + 1) + (a - 1) * cos + sq), -2 * a * ((a - 1) + (a + 1) * cos), a * ((a + 1) + (a - 1) * cos - sq)]
    den = [(a + 1) - (a - 1) * cos + sq, 2 * ((a - 1) - (a + 1) * cos), (a + 1) - (a - 1) * cos - sq]
    return np.array(b) / den[0], np.array(den) / den[0]


def _biquad_high_pass(rate: int, fc: float = 38.0, q: float = 0.5):
    w0 = 2 * math.pi * fc / rate
    alpha = math.sin(w0) / (2 * q)
    cos = math.cos(w0)
    b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
    den = [1 + alpha, -2 * cos, 1 - alpha]
    return np.array(b) / den[0], np.array(den) / den[0]


def _step_energies(chunks: Iterable[np.ndarray], rate: int) -> tuple[np.ndarray, float]:
    """Sum of squares of the K-weighted signal per 100 ms step, and the peak |sample|."""
    from scipy.signal import lfilter  # here, not at the top: a render worker never needs scipy (0.7 s)

    filters = [_biquad_high_shelf(rate), _biquad_high_pass(rate)]
    states = [np.zeros(2) for _ in filters]
    step = int(round(STEP_S * rate))
    sums: list[float] = []
    carry = np.zeros(0)
    peak = 0.0
    for chunk in chunks:
        x = np.asarray(chunk, np.float64)
        if x.size == 0:
            continue
        peak = max(peak, float(np.abs(x).max()))
        for i, (b, a) in enumerate(filters):
            x, states[i] = lfilter(b, a, x, zi=states[i])
        x = np.concatenate([carry, x])
        full = len(x) // step * step
        sums.extend(np.square(x[:full]).reshape(-1, step).sum(axis=1).tolist())
        carry = x[full:]
    return np.asarray(sums), peak


def integrated_loudness(wav: np.ndarray | Iterable[np.ndarray], rate: int) -> tuple[float, float]:
    """(integrated loudness in LUFS, -inf when nothing passes the gates; peak |sample|) of mono audio."""
    sums, peak = _step_energies([wav] if isinstance(wav, np.ndarray) else wav, rate)
    per_block = int(round(BLOCK_S / STEP_S))
    if len(sums) < per_block:
        return -math.inf, peak
    window = np.convolve(sums, np.ones(per_block), mode="valid")  # (n_blocks,) sums over 400 ms
    z = window / (per_block * int(round(STEP_S * rate)))  # mean square per block
    with np.errstate(divide="ignore"):
        block_lufs = LOUDNESS_OFFSET + 10 * np.log10(z)
    z = z[block_lufs > ABSOLUTE_GATE_LUFS]
    if z.size == 0:
        return -math.inf, peak
    relative_gate = LOUDNESS_OFFSET + 10 * math.log10(z.mean()) + RELATIVE_GATE_LU
    z = z[LOUDNESS_OFFSET + 10 * np.log10(z) > relative_gate]
    return LOUDNESS_OFFSET + 10 * math.log10(z.mean()), peak


def normalising_gain(lufs: float, peak: float, cfg: AudioConfig) -> float:
    """Linear gain that brings `lufs` to cfg.loudness_lufs, capped by cfg.max_gain_db and the peak."""
    if cfg.loudness_lufs is None or not math.isfinite(lufs):
        return 1.0
    gain_db = min(cfg.loudness_lufs - lufs, cfg.max_gain_db)
    gain = 10 ** (gain_db / 20)
    if peak > 0:
        gain = min(gain, PEAK_CEILING / peak) if gain > 1.0 else gain
    return gain


def normalise(wav: np.ndarray, cfg: AudioConfig, *, inplace: bool = False) -> np.ndarray:
    """`wav` (float32 mono at cfg.sample_rate) at cfg.loudness_lufs; unchanged when that is None.

    `inplace`: scale the caller's array (no second copy of a long recording).
    """
    if cfg.loudness_lufs is None:
        return wav
    lufs, peak = integrated_loudness(wav, cfg.sample_rate)
    gain = np.float32(normalising_gain(lufs, peak, cfg))
    if gain == 1.0:
        return wav
    if inplace and wav.dtype == np.float32 and wav.flags.writeable:
        np.multiply(wav, gain, out=wav)
        return wav
    return (wav * gain).astype(np.float32, copy=False)
