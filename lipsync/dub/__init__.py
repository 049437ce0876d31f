"""Batch dubbing, the library half (no Ray): catalog, planning, stitching, reports.

cluster/dub.py runs these on Ray; `lipsync dub` and jobs/batch_dub.py call cluster.dub.run_dub
with a DubConfig from lipsync.config.load_config (flags from `dub_flags`).
"""

from __future__ import annotations

from lipsync.config import ConfigError


def dub_flags(*, shard_frames: int | None = None, actors: str | int | None = None, crf: int | None = None,
              device: str | None = None, silence: str | None = None) -> dict:
    """Command-line options of `lipsync dub` / jobs/batch_dub.py as the `flags` of load_config.

    `actors` is "N" (a fixed pool) or "MIN:MAX" (an autoscaling pool).
    """
    return {"shard_frames": shard_frames, "device": device, "render": {"crf": crf, "silence": silence},
            **(parse_actors(str(actors)) if actors is not None else {})}


def parse_actors(text: str) -> dict:
    """"4" -> {actors: 4, max_actors: 0}; "1:8" -> {actors: 1, max_actors: 8}."""
    try:
        lo, _, hi = text.partition(":")
        low, high = int(lo), int(hi) if hi else 0
    except ValueError:
        raise ConfigError(None, f"--actors must be N or MIN:MAX, got {text!r}") from None
    if low < 1 or (hi and high < low):
        raise ConfigError(None, f"--actors must be N >= 1 or MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return {"actors": low, "max_actors": high}
