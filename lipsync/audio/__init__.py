"""Audio front-ends (ave | hubert | wenet, lipsync.audio.frontend): mel, per-video-frame features, context stacks.

Input is float32 mono audio at `AudioConfig.sample_rate` (decoding is lipsync.io.media's job).
"""

from lipsync.audio.features import (
    context_range,
    context_stack,
    encode_frames,
    iter_features,
)
from lipsync.audio.frontend import (
    BACKENDS,
    audio_config_for,
    frame_features,
    iter_frame_features,
    load_frontend,
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
    "BACKENDS",
    "audio_config_for",
    "frame_features",
    "iter_frame_features",
    "load_frontend",
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
