"""lipsync.audio on synthetic signals with known answers (plus one real speech file when present)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from lipsync.audio import (
    context_range,
    context_stack,
    encode_frames,
    loudness,
    mel_window_start,
    mel_windows,
    melspectrogram,
    num_video_frames,
)
from lipsync.audio.mel import _amp_to_db, _mel_basis, _normalize, _stft_magnitude, _to_mel, preemphasis
from lipsync.config import AudioConfig
from lipsync.io import media

CFG = AudioConfig()
MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"

torch.set_num_threads(1)


def sine(freq: float, seconds: float, cfg: AudioConfig = CFG, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * cfg.sample_rate)) / cfg.sample_rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def mel_band_centres(cfg: AudioConfig = CFG) -> np.ndarray:
    return librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax)[1:-1]


def peak_band(mel: np.ndarray) -> int:
    """Loudest mel band, averaged over interior frames (away from the STFT's padded edges)."""
    return int(mel[:, 4:-4].mean(axis=1).argmax())


# ----------------------------------------------------------------------------- melspectrogram


def test_sine_peaks_in_the_band_centred_nearest_its_frequency():
    expected = int(np.abs(mel_band_centres() - 1000.0).argmin())
    assert peak_band(melspectrogram(sine(1000.0, 1.0), CFG)) == expected


def test_higher_tone_peaks_in_a_higher_band():
    low = peak_band(melspectrogram(sine(1000.0, 1.0), CFG))
    high = peak_band(melspectrogram(sine(4000.0, 1.0), CFG))
    assert high > low
    assert high == int(np.abs(mel_band_centres() - 4000.0).argmin())


def test_silence_is_the_bottom_of_the_range():
    mel = melspectrogram(np.zeros(CFG.sample_rate, dtype=np.float32), CFG)
    np.testing.assert_array_equal(mel, np.full_like(mel, -CFG.max_abs_value))


def test_output_range_dtype_and_frame_rate():
    rng = np.random.default_rng(0)
    loud = np.clip(rng.normal(0.0, 0.9, 8 * CFG.sample_rate), -1, 1).astype(np.float32)
    mel = melspectrogram(loud, CFG)
    assert mel.dtype == np.float32
    assert mel.min() >= -CFG.max_abs_value and mel.max() <= CFG.max_abs_value
    assert mel.max() > 0.0  # loud: well above the middle of the range
    # an out-of-range tone (amplitude 100) would exceed 0 dB: it must clip at the top, not overflow
    clipped = melspectrogram(sine(1000.0, 1.0, amp=100.0), CFG)
    assert clipped.max() == CFG.max_abs_value and clipped.min() >= -CFG.max_abs_value
    # centred STFT: 1 + n // hop frames, 80 per second -> 8.00 s gives 641
    assert mel.shape == (CFG.n_mels, 8 * 80 + 1)


def test_preemphasis_gain_matches_the_filter_response():
    """Normalised units are 2*m/|min_level_db| per dB, so the 0.97 filter's gain at 1 kHz shows exactly."""
    freq = 1000.0
    flat = melspectrogram(sine(freq, 1.0, amp=0.05), dataclasses.replace(CFG, preemphasis=0.0))
    emph = melspectrogram(sine(freq, 1.0, amp=0.05), CFG)
    band = peak_band(flat)
    omega = 2 * np.pi * freq / CFG.sample_rate
    gain_db = 20 * np.log10(abs(1 - CFG.preemphasis * np.exp(-1j * omega)))
    per_db = 2 * CFG.max_abs_value / -CFG.min_level_db
    measured = emph[band, 4:-4].mean() - flat[band, 4:-4].mean()
    assert measured == pytest.approx(gain_db * per_db, abs=0.01)


def test_numpy_preemphasis_is_the_lfilter_it_replaced_bit_for_bit():
    """Whole signals and chunks carrying the previous sample give lfilter's float32 numbers exactly."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(3)
    wav = np.concatenate([rng.standard_normal(16000).astype(np.float32) * 0.3, sine(440.0, 0.5)])
    k = CFG.preemphasis
    expected = lfilter([1.0, -k], [1.0], wav).astype(np.float32)
    assert np.array_equal(preemphasis(wav, k), expected)
    cuts = np.sort(rng.choice(np.arange(1, wav.size), 9, replace=False))
    pieces, previous = [], 0.0
    for chunk in np.split(wav, cuts):
        pieces.append(preemphasis(chunk, k, previous))
        previous = float(chunk[-1])
    assert np.array_equal(np.concatenate(pieces), expected)
    assert preemphasis(np.zeros(0, np.float32), k).size == 0


def test_mel_basis_is_cached_per_config():
    assert _mel_basis(CFG) is _mel_basis(AudioConfig())
    other = dataclasses.replace(CFG, n_mels=40)
    assert _mel_basis(other).shape == (40, CFG.n_fft // 2 + 1)


OTHER_CFG = AudioConfig(n_mels=40, fmin=0.0, fmax=8000.0, n_fft=1024, win_length=640, hop_length=160)


@pytest.mark.parametrize("cfg", [CFG, dataclasses.replace(CFG, n_mels=40, fmin=125.0, fmax=3800.0), OTHER_CFG],
                         ids=["default", "40-mels", "1024-fft"])
def test_mel_basis_is_librosas(cfg):
    """The numpy filterbank is librosa.filters.mel's (Slaney scale and norm); measured bit for bit."""
    expected = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    basis = _mel_basis(cfg)
    assert basis.dtype == np.float32 and basis.shape == expected.shape and not basis.flags.writeable
    assert np.abs(basis - expected).max() <= 1e-7


def audio_signal(name: str) -> np.ndarray:
    if name == "speech":
        if not MEDIA.is_dir():
            pytest.skip(f"real media not found at {MEDIA}")
        return media.read_audio(MEDIA / "sadtalker_RD_Radio34_002.wav")  # 8.00 s of speech, the project's loader
    rng = np.random.default_rng(5)
    noise = np.clip(rng.normal(0.0, 0.3, 3 * CFG.sample_rate), -1, 1).astype(np.float32)
    return noise if name == "noise" else noise[:300]  # "short": less than n_fft // 2, np.pad reflects repeatedly


def librosa_mel(wav: np.ndarray, cfg: AudioConfig, center: bool) -> np.ndarray:
    """The librosa computation mel.py replaced: librosa.stft + librosa.filters.mel + the same dB scaling."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns that n_fft is larger than the short signal
        spec = np.abs(librosa.stft(preemphasis(wav, cfg.preemphasis), n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                   win_length=cfg.win_length, center=center, pad_mode=cfg.stft_pad_mode))
    basis = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    return _normalize(_amp_to_db(basis @ spec, cfg), cfg).astype(np.float32)


@pytest.mark.parametrize("name", ["speech", "noise", "short"])
@pytest.mark.parametrize("cfg", [CFG, dataclasses.replace(CFG, stft_pad_mode="constant"), OTHER_CFG],
                         ids=["reflect", "constant", "1024-fft"])
def test_melspectrogram_is_the_librosa_computation(name, cfg):
    """Centred (melspectrogram) and uncentred (what MelStream runs) STFTs: measured bit for bit."""
    wav = audio_signal(name)
    ours = melspectrogram(wav, cfg)
    expected = librosa_mel(wav, cfg, center=True)
    assert ours.shape == expected.shape == (cfg.n_mels, 1 + wav.size // cfg.hop_length)
    assert np.abs(ours - expected).max() <= 1e-5
    if wav.size >= cfg.n_fft:
        uncentred = _to_mel(_stft_magnitude(preemphasis(wav, cfg.preemphasis), cfg, center=False), cfg)
        expected = librosa_mel(wav, cfg, center=False)
        assert uncentred.shape == expected.shape == (cfg.n_mels, 1 + (wav.size - cfg.n_fft) // cfg.hop_length)
        assert np.abs(uncentred - expected).max() <= 1e-5


def test_stft_of_long_audio_goes_in_blocks_of_frames(monkeypatch):
    """More frames than one block (STFT_BLOCK_FRAMES): the same columns as in one block."""
    from lipsync.audio import mel

    wav = audio_signal("noise")
    whole = _stft_magnitude(wav, CFG, center=True)
    monkeypatch.setattr(mel, "STFT_BLOCK_FRAMES", 7)
    assert np.array_equal(_stft_magnitude(wav, CFG, center=True), whole)
    with pytest.raises(ValueError):
        _stft_magnitude(wav[: CFG.n_fft - 1], CFG, center=False)


def test_rejects_empty_and_multichannel_audio():
    with pytest.raises(ValueError):
        melspectrogram(np.zeros(0, dtype=np.float32), CFG)
    with pytest.raises(ValueError):
        melspectrogram(np.zeros((2, 1000), dtype=np.float32), CFG)


# ----------------------------------------------------------------------------- windows


def index_mel(n_cols: int) -> np.ndarray:
    """A fake (n_mels, T) mel whose every column holds its own index."""
    return np.tile(np.arange(n_cols, dtype=np.float32), (CFG.n_mels, 1))


def test_window_starts_follow_80_mel_frames_per_25_video_frames():
    mel = index_mel(200)
    windows = mel_windows(mel, 26, CFG)
    assert windows.shape == (26, CFG.n_mels, CFG.mel_window)
    assert [int(windows[k, 0, 0]) for k in (0, 1, 2, 25)] == [0, 3, 6, 80]
    np.testing.assert_array_equal(windows[25], mel[:, 80 : 80 + CFG.mel_window])
    assert [int(mel_window_start(k, CFG)) for k in (0, 1, 2, 25)] == [0, 3, 6, 80]


def test_window_start_is_exact_integer_arithmetic():
    ks = np.arange(0, 100_000)
    expected = np.array([math.floor(Fraction(int(k) * 80, 25)) for k in ks])
    np.testing.assert_array_equal(mel_window_start(ks, CFG), expected)


def test_start_offset_gives_the_same_windows_as_the_full_run():
    mel = index_mel(300)
    full = mel_windows(mel, 90, CFG)
    np.testing.assert_array_equal(mel_windows(mel, 30, CFG, start=37), full[37:67])


def test_windows_past_the_end_are_padded_with_silence():
    mel = melspectrogram(sine(300.0, 8.0), CFG)  # (80, 641)
    n = num_video_frames(8 * CFG.sample_rate, CFG)  # 200
    windows = mel_windows(mel, n, CFG)
    last_start = int(mel_window_start(n - 1, CFG))  # 636
    inside = mel.shape[1] - last_start  # 5 real columns, then padding
    np.testing.assert_array_equal(windows[-1, :, :inside], mel[:, last_start:])
    np.testing.assert_array_equal(windows[-1, :, inside:], -CFG.max_abs_value)
    assert (windows[-1, :, :inside] > -CFG.max_abs_value).any()  # the real part is not silence
    # a window starting past the end entirely is all silence
    np.testing.assert_array_equal(mel_windows(mel, 1, CFG, start=1000), -CFG.max_abs_value)


def test_zero_windows():
    assert mel_windows(index_mel(10), 0, CFG).shape == (0, CFG.n_mels, CFG.mel_window)


# ----------------------------------------------------------------------------- frame count


@pytest.mark.parametrize(
    "n_samples, frames",
    [(128_000, 200), (128_001, 201), (127_999, 200), (0, 0), (1, 1), (640, 1), (641, 2)],
)
def test_frame_count_is_ceil_of_duration_times_fps(n_samples, frames):
    assert num_video_frames(n_samples, CFG) == frames


def test_frame_count_matches_exact_ceil_for_other_rates():
    cfg = dataclasses.replace(CFG, sample_rate=44_100, fps=30)
    for n in range(0, 20_000, 7):
        assert num_video_frames(n, cfg) == math.ceil(Fraction(n * 30, 44_100))
    with pytest.raises(ValueError):
        num_video_frames(-1, CFG)


# ----------------------------------------------------------------------------- context stacks


def numbered_feats(n: int) -> np.ndarray:
    """feats[i, j] = (i + 1) * 1000 + j: row i is recognisable, and never zero (zero = padding)."""
    return ((np.arange(n)[:, None] + 1) * 1000 + np.arange(CFG.feature_dim)[None, :]).astype(np.float32)


def positions(stack: np.ndarray) -> list[int]:
    """Which frame each of the 2*context slots holds (-1 for a zero-padded slot)."""
    rows = stack.reshape(2 * CFG.context, CFG.feature_dim)
    return [int(r[0] // 1000) - 1 if r.any() else -1 for r in rows]


def test_context_stack_places_frame_k_at_slot_context():
    feats = numbered_feats(40)
    stack = context_stack(feats, 20, CFG)
    assert stack.shape == CFG.context_shape == (32, 16, 16)
    assert stack.dtype == np.float32
    assert positions(stack) == list(range(12, 28))
    # plain C-order reshape: slot p fills channels 2p and 2p+1 (512 = 2 * 16 * 16)
    np.testing.assert_array_equal(stack[2 * 8 : 2 * 8 + 2].reshape(-1), feats[20])


def test_context_stack_zero_pads_at_both_ends():
    feats = numbered_feats(40)
    assert positions(context_stack(feats, 0, CFG)) == [-1] * 8 + list(range(0, 8))
    assert positions(context_stack(feats, 39, CFG)) == list(range(31, 40)) + [-1] * 7
    short = numbered_feats(3)
    assert positions(context_stack(short, 1, CFG)) == [-1] * 7 + [0, 1, 2] + [-1] * 6


def test_context_range_equals_stacking_context_stack():
    feats = np.random.default_rng(1).normal(size=(30, CFG.feature_dim)).astype(np.float32)
    for a, b in [(0, 30), (5, 17), (25, 30), (12, 12)]:
        expected = np.stack([context_stack(feats, k, CFG) for k in range(a, b)]) if b > a else None
        got = context_range(feats, a, b, CFG)
        assert got.shape == (b - a, *CFG.context_shape)
        if expected is not None:
            np.testing.assert_array_equal(got, expected)


def test_context_rejects_bad_ranges_and_shapes():
    feats = numbered_feats(10)
    for a, b in [(-1, 3), (5, 11), (6, 5)]:
        with pytest.raises(ValueError):
            context_range(feats, a, b, CFG)
    with pytest.raises(ValueError):
        context_stack(feats, 10, CFG)
    with pytest.raises(ValueError):
        context_stack(feats[:, :100], 0, CFG)
    with pytest.raises(ValueError):
        context_stack(feats, 0, dataclasses.replace(CFG, context_shape=(16, 16, 16)))


# ----------------------------------------------------------------------------- encoder


class TinyEncoder(torch.nn.Module):
    """(B, 1, 80, 16) -> (B, 512, 1, 1) like the Wav2Lip audio tower; BatchNorm makes batching visible."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(CFG.n_mels * CFG.mel_window, CFG.feature_dim)
        self.norm = torch.nn.BatchNorm1d(CFG.feature_dim)
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.norm(self.linear(x.flatten(1)))[:, :, None, None]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_encode_frames_matches_a_direct_call(batch_size):
    torch.manual_seed(0)
    encoder = TinyEncoder()
    with torch.no_grad():  # non-trivial running stats so train and eval mode differ
        encoder.norm.running_mean.normal_()
        encoder.norm.running_var.uniform_(0.5, 2.0)
    windows = np.random.default_rng(2).normal(size=(10, CFG.n_mels, CFG.mel_window)).astype(np.float32)
    got = encode_frames(encoder, windows, batch_size=batch_size)
    assert encoder.training  # mode restored
    assert max(encoder.batch_sizes) <= batch_size and sum(encoder.batch_sizes) == 10
    encoder.eval()
    with torch.no_grad():
        expected = encoder(torch.from_numpy(windows).unsqueeze(1)).reshape(10, -1).numpy()
    assert got.shape == (10, CFG.feature_dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_encode_frames_of_nothing_keeps_the_feature_width():
    out = encode_frames(TinyEncoder(), np.zeros((0, CFG.n_mels, CFG.mel_window), np.float32))
    assert out.shape == (0, CFG.feature_dim)


# ----------------------------------------------------------------------------- real speech


@pytest.mark.media
@pytest.mark.skipif(not MEDIA.is_dir(), reason=f"real media not found at {MEDIA}")
def test_real_speech_end_to_end_shapes():
    from scipy.io import wavfile

    rate, pcm = wavfile.read(MEDIA / "sadtalker_RD_Radio34_002.wav")  # 8.00 s, 16 kHz, int16 stereo
    assert rate == CFG.sample_rate
    wav = (pcm.astype(np.float32) / 32768.0).mean(axis=1)
    n = num_video_frames(wav.size, CFG)
    assert n == 200
    mel = melspectrogram(wav, CFG)
    assert mel.shape == (CFG.n_mels, 641)
    assert mel.std() > 0.5  # speech, not silence or a constant
    windows = mel_windows(mel, n, CFG)
    feats = encode_frames(TinyEncoder(), windows, batch_size=64)
    assert context_range(feats, 0, n, CFG).shape == (n, 32, 16, 16)


# ----------------------------------------------------------------------------- loudness (numpy K-weighting)


def lfilter_step_energies(chunks, rate: int):
    """loudness._step_energies as it was, with scipy.signal.lfilter: the reference for the numpy biquads."""
    from scipy.signal import lfilter

    filters = [loudness._biquad_high_shelf(rate), loudness._biquad_high_pass(rate)]
    states = [np.zeros(2) for _ in filters]
    step = int(round(loudness.STEP_S * rate))
    sums, carry, peak = [], np.zeros(0), 0.0
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


def lfilter_loudness(wav, rate: int, monkeypatch) -> tuple[float, float]:
    with monkeypatch.context() as patch:
        patch.setattr(loudness, "_step_energies", lfilter_step_energies)
        return loudness.integrated_loudness(wav, rate)


def random_chunks(wav: np.ndarray, seed: int) -> list[np.ndarray]:
    """`wav` cut at random places, with some 1-sample chunks among them."""
    rng = np.random.default_rng(seed)
    cuts = rng.choice(np.arange(1, wav.size), min(wav.size - 1, 30), replace=False)
    cuts = np.unique(np.concatenate([cuts, cuts[:8] + 1]))
    return np.split(wav, cuts[cuts < wav.size])


def loudness_signal(name: str, rate: int) -> np.ndarray:
    t = np.arange(4 * rate) / rate
    rng = np.random.default_rng(11)
    signals = {
        "sine": lambda: 0.5 * np.sin(2 * np.pi * 997 * t),
        "low-sine": lambda: 0.5 * np.sin(2 * np.pi * 40 * t),  # at the high pass's corner
        "noise": lambda: 0.1 * rng.standard_normal(t.size),
        "silence": lambda: np.zeros(t.size),
        "short": lambda: 0.1 * rng.standard_normal(int(0.7 * rate)),  # 4 gating blocks
        "very-short": lambda: 0.1 * rng.standard_normal(100),  # no gating block at all
    }
    if name == "speech":
        return audio_signal("speech")
    return signals[name]().astype(np.float32)


SYNTHETIC = ["sine", "low-sine", "noise", "silence", "short", "very-short"]


@pytest.mark.parametrize(("name", "rate"), [(name, 16000) for name in ["speech", *SYNTHETIC]]
                         + [(name, 48000) for name in SYNTHETIC])
def test_loudness_is_the_lfilter_one(name, rate, monkeypatch):
    """The numpy biquads give scipy.signal.lfilter's integrated loudness, whole and in random chunks
    (measured: within ~1e-13 LU). 48 kHz: the high pass's double pole comes out as a complex pair."""
    wav = loudness_signal(name, rate)
    expected, peak = lfilter_loudness(wav, rate, monkeypatch)
    for got in (loudness.integrated_loudness(wav, rate), loudness.integrated_loudness(random_chunks(wav, 2), rate)):
        assert got[1] == peak
        if math.isinf(expected):
            assert got[0] == expected
        else:
            assert abs(got[0] - expected) <= 1e-6


def test_k_weighting_filters_are_lfilter_across_chunks():
    """Each streamed biquad is lfilter's output, to ~1e-12 of the signal's scale, across chunk edges."""
    from scipy.signal import lfilter

    wav = np.concatenate([audio_signal("noise"), np.zeros(500, np.float32), loudness_signal("low-sine", 16000)])
    for design in (loudness._biquad_high_shelf, loudness._biquad_high_pass):
        b, a = design(CFG.sample_rate)
        expected = lfilter(b, a, wav.astype(np.float64))
        biquad = loudness._Biquad(b, a)
        got = np.concatenate([biquad(chunk.astype(np.float64)) for chunk in random_chunks(wav, 3)])
        assert np.abs(got - expected).max() <= 1e-12 * np.abs(expected).max()


def test_run_time_audio_front_end_imports_neither_librosa_nor_scipy():
    """A worker's mel spectrogram, MelStream and loudness normalisation are numpy only: importing librosa
    (numba) or scipy.signal cost the first item of a fresh worker ~2 s."""
    code = """
import sys
import numpy as np
import lipsync.audio
from lipsync.audio import MelStream, loudness, melspectrogram
from lipsync.config import AudioConfig
cfg = AudioConfig()
wav = (0.1 * np.random.default_rng(0).standard_normal(cfg.sample_rate)).astype(np.float32)
wav = loudness.normalise(wav, cfg)
mel = melspectrogram(wav, cfg)
stream = MelStream(cfg)
assert np.concatenate([stream.push(wav), stream.finish()], axis=1).shape == mel.shape
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"librosa", "scipy", "numba"})
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
