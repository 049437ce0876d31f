"""Render: character bundle + audio -> dubbed video (see pipeline.py)."""

from lipsync.render.pipeline import RenderResult, SegmentStats, audio_features, load_audio, render, render_segment

__all__ = ["RenderResult", "SegmentStats", "audio_features", "load_audio", "render", "render_segment"]
