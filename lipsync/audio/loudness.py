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

import cmath
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


class _Biquad:
    """scipy.signal.lfilter(b, a, .) for a biquad, streamed: the state carries across calls; numpy only
    (importing scipy.signal costs a plan worker ~0.8 s), and vectorised, as audio can be an hour long.

    H(z) = (b0 + b1 z^-1 + b2 z^-2) / ((1 - p1 z^-1) (1 - p2 z^-1)): the FIR numerator, then one
    first-order recursion per pole (`_one_pole`). Cascading the two poles, rather than splitting
    H into partial fractions, stays accurate for the critically damped high pass (Q = 1/2: a double
    pole, computed as two poles within ~1e-8 of each other whose sum and product are a1 and a2).
    Conjugate poles run in complex arithmetic and the output is its real part. Agrees with lfilter
    to ~1e-13 relative (tests/test_audio.py); fed pieces of at most PIECE samples (`_pieces`).
    """

    def __init__(self, b: np.ndarray, a: np.ndarray):
        self.b = [float(c / a[0]) for c in b]
        a1, a2 = float(a[1] / a[0]), float(a[2] / a[0])
        root = cmath.sqrt(a1 * a1 - 4 * a2)
        poles = [(-a1 + root) / 2, (-a1 - root) / 2]  # Python numbers: _one_pole's loop is scalar
        self.poles = [p.real for p in poles] if root.imag == 0 else poles
        self.inputs = np.zeros(2)  # x[n-2], x[n-1]: the numerator's state
        self.outputs = [0.0 * p for p in self.poles]  # last output of each recursion

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n,) float64 -> (n,) float64, continuing from the previous call."""
        padded = np.concatenate([self.inputs, x])  # (2 + n,)
        self.inputs = padded[-2:].copy()
        b0, b1, b2 = self.b
        y = b0 * padded[2:] + b1 * padded[1:-1] + b2 * padded[:-2]  # (n,)
        for i, p in enumerate(self.poles):
            y, self.outputs[i] = _one_pole(y, p, self.outputs[i])
        return y.real


RECURSION_BLOCK = 256  # samples per block of _one_pole: its Python loop runs once a block


def _one_pole(x: np.ndarray, p: float | complex, last: float | complex) -> tuple[np.ndarray, float | complex]:
    """w[n] = x[n] + p w[n-1] with w[-1] = `last` (|p| < 1); returns (w, w[-1]).

    Blockwise: inside a block of L samples, w[k] = p^k sum_{j<=k} p^-j x'[j], where x' is x with
    p w_before added to its first sample (w_before: w just before the block). So all blocks are
    one cumulative sum, once the states entering them are known; those follow from the blocks'
    zero-state ends, w_before[b+1] = p^(L-1) sum_j p^-j x[b, j] + p^L w_before[b], in a Python
    loop of n / L steps. Rounding stays at the scale of w itself (each partial sum is p^-k times a
    partial output); L keeps |p|^-L far from float overflow.
    """
    n, length = x.size, _block_length(p)
    k = np.arange(length)
    w = np.empty((-(-n // length), length), np.result_type(x, p))  # (n_blocks, L)
    w.reshape(-1)[:n] = x
    w.reshape(-1)[n:] = 0  # the last block's tail
    w *= p ** -k  # x[b, j] p^-j
    ends = w.sum(axis=1) * p ** (length - 1)  # (n_blocks,) each block's end from a zero state
    before, carry, decay = [], last, p ** length
    for end in ends.tolist():
        before.append(carry)
        carry = end + decay * carry
    w[:, 0] += p * np.asarray(before)
    np.cumsum(w, axis=1, out=w)
    w *= p ** k
    w = w.reshape(-1)[:n]
    return w, (w[-1].item() if n else last)


def _block_length(p: float | complex) -> int:
    """RECURSION_BLOCK, or fewer samples for a pole so small that |p|^-RECURSION_BLOCK would pass 1e200."""
    if abs(p) ** RECURSION_BLOCK > 1e-200:
        return RECURSION_BLOCK
    return max(1, int(200 * math.log(10) / -math.log(abs(p)))) if p else 1


PIECE = 1 << 16  # samples filtered at a time, so that a long array's float64 temporaries stay small


def _pieces(chunks: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    """The non-empty chunks as float64 pieces of at most PIECE samples."""
    for chunk in chunks:
        chunk = np.asarray(chunk)
        for i in range(0, chunk.size, PIECE):
            yield chunk[i:i + PIECE].astype(np.float64)


def _step_energies(chunks: Iterable[np.ndarray], rate: int) -> tuple[np.ndarray, float]:
    """Sum of squares of the K-weighted signal per 100 ms step, and the peak |sample|."""
    filters = [_Biquad(*_biquad_high_shelf(rate)), _Biquad(*_biquad_high_pass(rate))]
    step = int(round(STEP_S * rate))
    sums: list[float] = []
    carry = np.zeros(0)
    peak = 0.0
    for x in _pieces(chunks):
        peak = max(peak, float(np.abs(x).max()))
        for weighting in filters:
            x = weighting(x)
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
