"""The `hubert` audio front-end: a transformers HubertModel from a local directory.

HuBERT's convolutional feature encoder has a 400-sample receptive field and a 320-sample stride
at 16 kHz: frame j sees samples [320 j, 320 j + 400), 50 frames a second. Video frame k at 25 fps
covers samples [640 k, 640 k + 640), which holds the centres of HuBERT frames 2k and 2k + 1; the
row of video frame k is their two last-hidden-state vectors side by side (2 x 1024 = 2048).
The audio is padded with zeros at the end so that every one of the N = ceil(duration * 25)
video frames has both of its HuBERT frames.

Long audio goes through the model in windows of HUBERT_CHUNK_FRAMES frames (20 s) with
HUBERT_CONTEXT_FRAMES (2 s) of extra audio on each side that only serves as attention context:
memory is bounded by one window whatever the length, and the conv features of a window are
exactly those of the whole audio (windows start on the 320-sample grid). Audio shorter than a
window goes through in one forward. Input normalisation (zero mean, unit variance, as
Wav2Vec2FeatureExtractor does when the model's preprocessor_config.json says do_normalize) is
computed per window.

`load_hubert` is the only function here that reads files; it passes local_files_only=True, so
transformers never contacts a hub.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from lipsync.config import AudioConfig
from lipsync.errors import InputError

HIDDEN_SIZE = 1024  # hubert-large: 2 frames x 1024 = 2048 per video frame -> (32, 32, 32) stacks
SAMPLE_RATE = 16000
STRIDE = 320  # samples per HuBERT frame (50 Hz)
HUBERT_CHUNK_FRAMES = 1000  # HuBERT frames per forward (20 s); even, so windows start on video frames
HUBERT_CONTEXT_FRAMES = 100  # extra frames of audio each side of a window (attention context only)
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor's


@dataclass
class HubertFrontEnd:
    """A loaded HuBERT front-end: the model (eval mode, on `device`) and how to feed it."""

    model: torch.nn.Module  # transformers HubertModel
    normalize: bool  # zero-mean unit-variance input (preprocessor_config.json do_normalize)
    receptive_field: int  # samples seen by one frame (400)
    device: torch.device


def _conv_geometry(config) -> tuple[int, int]:
    """(receptive field, stride) in samples of the conv feature encoder."""
    field, stride = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        field += (k - 1) * stride
        stride *= s
    return field, stride


def load_hubert(weights: str, device: str | torch.device = "cpu") -> HubertFrontEnd:
    """HubertModel from a local directory in the layout of facebook/hubert-large-ls960-ft
    (config.json + model.safetensors or pytorch_model.bin, optionally preprocessor_config.json;
    a HubertForCTC checkpoint loads too, its CTC head is dropped).

    InputError naming the path when it is missing, not such a directory, or not a model of the
    expected geometry (16 kHz, 320-sample stride, hidden size 1024).
    """
    from lipsync.audio.frontend import local_weights

    try:
        from transformers import HubertConfig, HubertModel
    except ImportError as exc:  # require_extra checked the package exists; this is a broken install
        raise InputError(weights, f"the hubert audio front-end needs transformers: pip install 'lipsync[hubert]' "
                                  f"({exc})") from None
    with local_weights(weights, "HuBERT weights directory", directory=True) as path:
        if not (path / "config.json").is_file():
            raise InputError(weights, "not a HuBERT model directory (no config.json; expected the layout of "
                                      "facebook/hubert-large-ls960-ft, see docs/AUDIO.md)")
        try:
            config = HubertConfig.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InputError(weights, f"config.json is not a HuBERT config ({exc})") from None
        field, stride = _conv_geometry(config)
        if config.hidden_size != HIDDEN_SIZE or stride != STRIDE:
            raise InputError(weights, f"HuBERT model has hidden size {config.hidden_size} and a {stride}-sample "
                                      f"stride; the hubert front-end needs {HIDDEN_SIZE} and {STRIDE} "
                                      "(hubert-large at 16 kHz)")
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a HubertForCTC checkpoint's unused CTC head is expected
        hf_logging.disable_progress_bar()  # our own progress bars own the terminal
        try:
            model = HubertModel.from_pretrained(str(path), config=config, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise InputError(weights, f"cannot load the HuBERT weights ({' '.join(str(exc).split())[:300]})") \
                from None
        finally:
            hf_logging.set_verbosity(verbosity)
        normalize = config.feat_extract_norm == "layer"
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            try:
                normalize = bool(json.loads(pre.read_text()).get("do_normalize", normalize))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(weights, f"preprocessor_config.json is corrupt ({exc})") from None
    device = torch.device(device)
    model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    return HubertFrontEnd(model=model, normalize=normalize, receptive_field=field, device=device)


def _forward(fe: HubertFrontEnd, samples: np.ndarray) -> np.ndarray:
    """Last hidden state (frames, 1024) of one window of samples."""
    x = samples.astype(np.float32, copy=True)
    if fe.normalize:
        x = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)
    with torch.inference_mode():
        out = fe.model(torch.from_numpy(x)[None].to(fe.device)).last_hidden_state[0]
    return out.float().cpu().numpy()


def iter_hubert_features(fe: HubertFrontEnd, chunks: Iterable[np.ndarray], cfg: AudioConfig, *,
                         chunk_frames: int = 1024, window_frames: int = HUBERT_CHUNK_FRAMES,
                         context_frames: int = HUBERT_CONTEXT_FRAMES) -> Iterator[np.ndarray]:
    """(rows, 2048) blocks for video frames 0, 1, ... of audio arriving in chunks (see the module doc).

    `chunk_frames` is accepted for symmetry with the other front-ends (blocks here are one window,
    window_frames / 2 video frames). Empty audio raises ValueError.
    """
    if cfg.sample_rate != SAMPLE_RATE or SAMPLE_RATE % cfg.fps or (SAMPLE_RATE // cfg.fps) != 2 * STRIDE:
        raise ValueError(f"the hubert front-end needs 16 kHz audio and 25 fps video, got {cfg.sample_rate} Hz, "
                         f"{cfg.fps} fps")
    if window_frames < 2 or window_frames % 2:
        raise ValueError(f"window_frames must be even and >= 2, got {window_frames}")
    field = fe.receptive_field
    buf = np.zeros(0, np.float32)
    buf_start = 0  # global index of buf[0]
    n_samples = 0
    j = 0  # next HuBERT frame to produce (always even: frame 2k starts video frame k)

    def frames_in(n: int) -> int:  # HuBERT frames fully inside the first n samples
        return 0 if n < field else (n - field) // STRIDE + 1

    def run(count: int, available: int) -> np.ndarray:
        nonlocal buf, buf_start, j
        first = max(j - context_frames, 0)
        last = min(j + count + context_frames, available)  # exclusive
        s0, s1 = STRIDE * first - buf_start, STRIDE * (last - 1) + field - buf_start
        hidden = _forward(fe, buf[s0:s1])
        if hidden.shape[0] < j - first + count:
            raise AssertionError(f"HuBERT gave {hidden.shape[0]} frames for {last - first}")
        rows = hidden[j - first:j - first + count].reshape(count // 2, 2 * hidden.shape[1])
        j += count
        drop = STRIDE * max(j - context_frames, 0) - buf_start  # samples no later window reads
        if drop > 0:
            buf = buf[drop:]
            buf_start += drop
        return rows

    for chunk in chunks:
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        buf = np.concatenate([buf, chunk])
        n_samples += chunk.size
        while frames_in(n_samples) >= j + window_frames + context_frames:
            yield run(window_frames, frames_in(n_samples))
    if n_samples == 0:
        raise ValueError("empty audio")
    n_video = math.ceil(n_samples * cfg.fps / cfg.sample_rate)
    needed = 2 * n_video  # HuBERT frames
    end = STRIDE * (needed - 1) + field  # samples: the audio, then zeros
    if end > n_samples:
        buf = np.concatenate([buf, np.zeros(end - n_samples, np.float32)])
    available = frames_in(buf_start + buf.size)
    while j < needed:
        yield run(min(window_frames, needed - j), available)
