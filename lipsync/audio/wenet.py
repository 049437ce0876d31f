"""The `wenet` audio front-end: a WeNet streaming (U2/U2++ conformer) encoder exported to ONNX.

The encoder file is what WeNet's `wenet/bin/export_onnx_cpu.py` writes as `encoder.onnx`: inputs
`chunk` (1, T, 80) float32 fbank, `offset` and `required_cache_size` (int64 scalars),
`att_cache` (num_blocks, head, T_cache, 2 * output_size / head), `cnn_cache`
(num_blocks, 1, output_size, cnn_module_kernel - 1), `att_mask` (1, 1, T_cache + chunk_size) bool;
outputs `output` (1, T', output_size), `r_att_cache`, `r_cnn_cache`; and the export's arguments as
metadata (chunk_size, left_chunks, subsampling_rate, right_context, output_size, num_blocks, head,
cnn_module_kernel, feature_size). ONNX drops inputs an export does not use (e.g. att_mask and
required_cache_size in -1 left-chunk mode), so only the inputs the session declares are fed.

Pipeline (all streaming, memory bounded by a chunk and the encoder's own caches):
1. 80-bin Kaldi fbank (25 ms frames every 10 ms, no dither, povey window, samples scaled to
   16-bit range as WeNet does) by kaldi-native-fbank's OnlineFbank.
2. The encoder chunk by chunk as WeNet's runtime runs it: windows of
   (chunk_size - 1) * subsampling_rate + right_context + 1 fbank frames every
   chunk_size * subsampling_rate frames, caches fed back, the last window padded with its last
   frame. Exports with left_chunks < 0 keep all history in att_cache; it is cut to the newest
   WENET_MAX_CACHE_FRAMES encoder frames so memory stays bounded on long audio.
3. Onto the 25 fps video clock: encoder frame j sees fbank frames
   [j * s, j * s + right_context], so its centre is at c_j = (j * s + right_context / 2) * 10 ms
   + 12.5 ms, one every d = s * 10 ms (40 ms for the usual s = 4). Video frame k is centred at
   t_k = (k + 0.5) / 25 s; its row is 16 encoder vectors sampled at t_k + (i - 7.5) * d,
   i = 0..15 (a 16-frame window centred on the frame), each linearly interpolated between the
   two nearest encoder frames and held at the first / last encoder frame outside the audio.
   So the row count is the video's, N = ceil(duration * 25), whatever the encoder's rate (the
   seed instead ran WeNet features at 20 fps video).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lipsync.config import AudioConfig
from lipsync.errors import InputError

OUTPUT_SIZE = 512  # 16 x 512 per video frame -> (256, 16, 32) stacks
FEATURE_SIZE = 80
WINDOW = 16  # encoder frames per video frame
SAMPLE_RATE = 16000
FBANK_SHIFT_S = 0.010
FBANK_LENGTH_S = 0.025
WAV_SCALE = 32768.0  # WeNet computes fbank on 16-bit sample values
WENET_MAX_CACHE_FRAMES = 1500  # att_cache bound for left_chunks < 0 exports (60 s at 40 ms)
REQUIRED_META = ("chunk_size", "subsampling_rate", "right_context", "output_size", "num_blocks", "head",
                 "cnn_module_kernel")


@dataclass
class WenetFrontEnd:
    """A loaded WeNet encoder: the onnxruntime session and the export's streaming parameters."""

    session: Any  # onnxruntime.InferenceSession
    inputs: frozenset[str]
    chunk_size: int
    left_chunks: int
    subsampling: int
    right_context: int
    output_size: int
    num_blocks: int
    head: int
    cnn_kernel: int
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def decoding_window(self) -> int:
        return (self.chunk_size - 1) * self.subsampling + self.right_context + 1

    @property
    def stride(self) -> int:
        return self.chunk_size * self.subsampling


def load_wenet(weights: str, device: Any = "cpu") -> WenetFrontEnd:
    """An onnxruntime session of a local WeNet encoder.onnx (see the module doc for the signature).

    InputError naming the path when it is missing, not ONNX, or not a streaming WeNet encoder
    with 80-bin input and 512-d output. Runs on the CPU (onnxruntime's CUDA provider is used when
    `device` is cuda and onnxruntime-gpu is installed).
    """
    from lipsync.audio.frontend import local_weights

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise InputError(weights, f"the wenet audio front-end needs onnxruntime: pip install 'lipsync[wenet]' "
                                  f"({exc})") from None
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with local_weights(weights, "WeNet encoder ONNX file", directory=False) as path:
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for unreadable models
            raise InputError(weights, f"cannot load the WeNet encoder ({' '.join(str(exc).split())[:300]})") \
                from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    names = frozenset(i.name for i in session.get_inputs())
    outputs = [o.name for o in session.get_outputs()]
    if "chunk" not in names or outputs[:1] != ["output"] or not {"r_att_cache", "r_cnn_cache"} <= set(outputs):
        raise InputError(weights, f"not a WeNet streaming encoder export (inputs {sorted(names)}, outputs "
                                  f"{outputs}; expected wenet/bin/export_onnx_cpu.py's encoder.onnx)")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise InputError(weights, f"WeNet encoder has no {', '.join(missing)} metadata (export it with "
                                  "wenet/bin/export_onnx_cpu.py)")
    try:
        values = {k: int(meta[k]) for k in REQUIRED_META}
        left = int(meta.get("left_chunks", -1))
        feature_size = int(meta.get("feature_size", FEATURE_SIZE))
    except ValueError as exc:
        raise InputError(weights, f"WeNet encoder metadata is not numeric ({exc})") from None
    if values["chunk_size"] <= 0:
        raise InputError(weights, "WeNet encoder was exported for non-streaming decoding (chunk_size "
                                  f"{values['chunk_size']}); export it with --chunk_size 16")
    if values["output_size"] != OUTPUT_SIZE or feature_size != FEATURE_SIZE:
        raise InputError(weights, f"WeNet encoder has {feature_size}-bin input and {values['output_size']}-d "
                                  f"output; the wenet front-end needs {FEATURE_SIZE} and {OUTPUT_SIZE}")
    if values["subsampling_rate"] < 1 or values["right_context"] < 0 or values["head"] < 1 \
            or values["num_blocks"] < 1 or values["cnn_module_kernel"] < 1:
        raise InputError(weights, f"WeNet encoder metadata out of range: {values}")
    return WenetFrontEnd(session=session, inputs=names, chunk_size=values["chunk_size"], left_chunks=left,
                         subsampling=values["subsampling_rate"], right_context=values["right_context"],
                         output_size=values["output_size"], num_blocks=values["num_blocks"], head=values["head"],
                         cnn_kernel=values["cnn_module_kernel"], meta=meta)


class _Encoder:
    """The streaming state of one pass over an audio file (caches, offset, chunk index)."""

    def __init__(self, fe: WenetFrontEnd):
        self.fe = fe
        d_k2 = fe.output_size // fe.head * 2
        self.i = 0
        if fe.left_chunks > 0:
            self.required = fe.chunk_size * fe.left_chunks
            self.offset = self.required
            self.att_cache = np.zeros((fe.num_blocks, fe.head, self.required, d_k2), np.float32)
            self.att_mask = np.ones((1, 1, self.required + fe.chunk_size), np.bool_)
            self.att_mask[:, :, :self.required] = False
        else:
            self.required = -1 if fe.left_chunks < 0 else 0
            self.offset = 0
            self.att_cache = np.zeros((fe.num_blocks, fe.head, 0, d_k2), np.float32)
            self.att_mask = np.ones((0, 0, 0), np.bool_)
        self.cnn_cache = np.zeros((fe.num_blocks, 1, fe.output_size, max(fe.cnn_kernel - 1, 0)), np.float32)

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """(decoding_window, 80) fbank -> (chunk_size, output_size) encoder outputs."""
        fe = self.fe
        if fe.left_chunks > 0:
            self.att_mask[:, :, -(fe.chunk_size * (self.i + 1)):] = True
        feeds = {"chunk": chunk[None].astype(np.float32), "offset": np.array(self.offset, np.int64),
                 "required_cache_size": np.array(self.required, np.int64), "att_cache": self.att_cache,
                 "cnn_cache": self.cnn_cache, "att_mask": self.att_mask}
        out, att_cache, cnn_cache = self.fe.session.run(
            ["output", "r_att_cache", "r_cnn_cache"], {k: v for k, v in feeds.items() if k in fe.inputs})
        if fe.left_chunks < 0 and att_cache.shape[2] > WENET_MAX_CACHE_FRAMES:
            att_cache = att_cache[:, :, -WENET_MAX_CACHE_FRAMES:]
        self.att_cache, self.cnn_cache = np.ascontiguousarray(att_cache), cnn_cache
        self.offset += out.shape[1]
        self.i += 1
        return out[0]


def _fbank():
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.frame_shift_ms = FBANK_SHIFT_S * 1000
    opts.frame_opts.frame_length_ms = FBANK_LENGTH_S * 1000
    opts.mel_opts.num_bins = FEATURE_SIZE
    opts.energy_floor = 0.0
    return knf.OnlineFbank(opts)


def encoder_frame_times(fe: WenetFrontEnd, j: np.ndarray) -> np.ndarray:
    """Centre (s) of encoder frame j: the centre of fbank frame j * s + right_context / 2."""
    return (j * fe.subsampling + fe.right_context / 2) * FBANK_SHIFT_S + FBANK_LENGTH_S / 2


def window_positions(fe: WenetFrontEnd, k: np.ndarray, fps: int) -> np.ndarray:
    """(len(k), 16) positions, in encoder frames (fractional), of the 16 vectors of video frames k."""
    d = fe.subsampling * FBANK_SHIFT_S
    t = (np.asarray(k, np.float64)[:, None] + 0.5) / fps + (np.arange(WINDOW) - (WINDOW - 1) / 2) * d
    return (t - encoder_frame_times(fe, np.float64(0))) / d


def iter_wenet_features(fe: WenetFrontEnd, chunks: Iterable[np.ndarray], cfg: AudioConfig, *,
                        chunk_frames: int = 1024) -> Iterator[np.ndarray]:
    """(rows, 16 * 512) blocks for video frames 0, 1, ... of audio arriving in chunks (module doc)."""
    if cfg.sample_rate != SAMPLE_RATE:
        raise ValueError(f"the wenet front-end needs 16 kHz audio, got {cfg.sample_rate} Hz")
    fbank = _fbank()
    encoder = _Encoder(fe)
    window, stride = fe.decoding_window, fe.stride
    feats = np.zeros((0, FEATURE_SIZE), np.float32)  # fbank frames not yet consumed; the first is `f0`
    f0 = 0
    enc = np.zeros((0, fe.output_size), np.float32)  # encoder frames kept; the first is `e0`
    e0 = 0
    n_samples = 0
    k = 0  # next video frame

    def pull() -> None:
        nonlocal feats
        ready = fbank.num_frames_ready
        have = f0 + len(feats)
        if ready > have:
            new = np.stack([np.asarray(fbank.get_frame(i), np.float32) for i in range(have, ready)])
            fbank.pop(ready - have)
            feats = np.concatenate([feats, new])

    def encode(last: bool) -> None:
        nonlocal feats, f0, enc
        while len(feats) >= window or (last and len(feats) > 0):
            block = feats[:window]
            real = len(block)
            if real < window:  # the final window: pad with its last frame, keep the real outputs
                block = np.concatenate([block, np.repeat(block[-1:], window - real, axis=0)])
            out = encoder(block)
            keep = out.shape[0] if real == window else \
                max(0, (real - fe.right_context - 1) // fe.subsampling + 1) if real > fe.right_context else 0
            if keep == 0 and len(enc) == 0 and e0 == 0:
                keep = min(1, out.shape[0])  # audio shorter than one encoder frame: keep one
            enc = np.concatenate([enc, out[:keep].astype(np.float32)])
            if real < window:
                feats = feats[:0]
                f0 += real
                break
            feats = feats[stride:]
            f0 += stride

    def emit(upto: int, last: bool) -> Iterator[np.ndarray]:
        """Rows for video frames k .. upto-1 whose windows the kept encoder frames cover."""
        nonlocal k, enc, e0
        n_enc = e0 + len(enc)
        if n_enc == 0:
            return
        while k < upto:
            hi = min(upto, k + chunk_frames)
            pos = window_positions(fe, np.arange(k, hi), cfg.fps)
            if not last:
                ok = np.floor(pos[:, -1]) + 1 <= n_enc - 1  # both neighbours of the last vector exist
                hi = k + int(np.argmin(ok)) if not ok.all() else hi
                if hi == k:
                    return
                pos = pos[:hi - k]
            pos = np.clip(pos, 0, n_enc - 1)
            lo_idx = np.floor(pos).astype(np.int64)
            hi_idx = np.minimum(lo_idx + 1, n_enc - 1)
            w = (pos - lo_idx)[..., None].astype(np.float32)
            rows = enc[lo_idx - e0] * (1 - w) + enc[hi_idx - e0] * w  # (M, 16, 512)
            yield rows.reshape(len(rows), -1).astype(np.float32)
            k = hi
            drop = int(np.floor(window_positions(fe, np.array([k]), cfg.fps)[0, 0])) - e0
            drop = min(max(drop, 0), len(enc) - 1)
            if drop > 0:
                enc = enc[drop:]
                e0 += drop

    for chunk in chunks:
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if chunk.size == 0:
            continue
        n_samples += chunk.size
        fbank.accept_waveform(SAMPLE_RATE, chunk * WAV_SCALE)
        pull()
        encode(last=False)
        yield from emit(math.ceil(n_samples * cfg.fps / cfg.sample_rate), last=False)
    if n_samples == 0:
        raise ValueError("empty audio")
    frame_len = int(round(FBANK_LENGTH_S * SAMPLE_RATE))
    if n_samples < frame_len:  # shorter than one fbank frame: pad with silence to one frame
        fbank.accept_waveform(SAMPLE_RATE, np.zeros(frame_len - n_samples, np.float32))
    fbank.input_finished()
    pull()
    encode(last=True)
    yield from emit(math.ceil(n_samples * cfg.fps / cfg.sample_rate), last=True)
