"""Audio front-ends (ave | hubert | wenet, lipsync.audio.frontend): mel, per-video-frame features, context stacks.

Input is float32 mono audio at `AudioConfig.sample_rate` (decoding is lipsync.io.media's job).
"""

import importlib

# name -> submodule; imported on first use (PEP 562), so that `lipsync.audio.loudness` or `.mel`
# alone does not bring torch (features.py, frontend.py): the dub driver imports the planning
# code without torch (docs/DECISIONS.md, "imports of a worker")
_EXPORTS = {
    "context_range": "features", "context_stack": "features", "encode_frames": "features",
    "iter_features": "features",
    "BACKENDS": "frontend", "audio_config_for": "frontend", "frame_features": "frontend",
    "iter_frame_features": "frontend", "load_frontend": "frontend",
    "MelStream": "mel", "mel_window_start": "mel", "mel_windows": "mel", "melspectrogram": "mel",
    "num_video_frames": "mel", "silence_value": "mel",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lipsync.audio.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lipsync.audio' has no attribute {name!r}")


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
