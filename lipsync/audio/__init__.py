"""Audio front-end: Wav2Lip-style mel, per-video-frame windows, encoder features, context stacks.

Input is float32 mono audio at `AudioConfig.sample_rate` (decoding is lipsync.io.media's job).
"""

from lipsync.audio.features import (
    context_range,
    context_stack,
    encode_frames,
    iter_features,
)
from lipsync.audio.mel import (
    MelStream,
    mel_window_start,
    mel_windows,
    melspectrogram,
    num_video_frames,
    silence_value,
)

__all__ = [
    "MelStream",
    "context_range",
    "context_stack",
    "encode_frames",
    "iter_features",
    "mel_window_start",
    "mel_windows",
    "melspectrogram",
    "num_video_frames",
    "silence_value",
]
