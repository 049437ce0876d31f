"""Batch dubbing, the library half (no Ray): catalog, planning, stitching, reports.

cluster/dub.py runs these on Ray; `lipsync dub` and jobs/batch_dub.py call cluster.dub.run_dub.
"""

from __future__ import annotations

from pathlib import Path

from lipsync import config as C
from lipsync.config import DubConfig
from lipsync.errors import InputError


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                options: dict | None = None) -> DubConfig:
    """configs/dub.yaml (or `path`), then `key=value` overrides, then command-line `options`.

    `render:` starts from configs/render.yaml, so `lipsync render` and the dub actors share one
    set of render defaults and a dub config lists only what it changes (`render: {crf: 18}`).
    Bad keys or values raise ValueError.
    """
    data = C.load_yaml(path or "dub")
    data = {**data, "render": C._merge(C.load_yaml("render"), data.get("render") or {})}
    data = C._merge(C._merge(data, C.parse_overrides(overrides)), options or {})
    return validate(C.from_dict(DubConfig, data))


def validate(cfg: DubConfig) -> DubConfig:
    """Reject settings the pipeline cannot run with (InputError, exit code 2), before any work."""
    problems = []
    if cfg.shard_frames < 1:
        problems.append(f"shard_frames must be >= 1, got {cfg.shard_frames}")
    if cfg.actors < 1 or (cfg.max_actors and cfg.max_actors < cfg.actors):
        problems.append(f"need actors >= 1 and max_actors 0 or >= actors, got {cfg.actors}, {cfg.max_actors}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        problems.append(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if min(cfg.max_concurrent_stitches, cfg.character_cache, cfg.feature_cache) < 1:
        problems.append("max_concurrent_stitches, character_cache and feature_cache must be >= 1")
    if not 0 <= cfg.render.crf <= 51:
        problems.append(f"crf must be in [0, 51], got {cfg.render.crf}")
    if problems:
        raise InputError(None, "; ".join(problems))
    return cfg


def option_overrides(*, shard_frames: int | None = None, actors: str | int | None = None, crf: int | None = None,
                     device: str | None = None) -> dict:
    """Command-line options of `lipsync dub` / jobs/batch_dub.py as config overrides.

    `actors` is "N" (a fixed pool) or "MIN:MAX" (an autoscaling pool).
    """
    out: dict = {}
    if shard_frames is not None:
        out["shard_frames"] = shard_frames
    if actors is not None:
        out.update(parse_actors(str(actors)))
    if crf is not None:
        out["render"] = {"crf": crf}
    if device is not None:
        out["device"] = device
    return out


def parse_actors(text: str) -> dict:
    """"4" -> {actors: 4, max_actors: 0}; "1:8" -> {actors: 1, max_actors: 8}."""
    try:
        lo, _, hi = text.partition(":")
        low, high = int(lo), int(hi) if hi else 0
    except ValueError:
        raise ValueError(f"--actors must be N or MIN:MAX, got {text!r}") from None
    if low < 1 or (hi and high < low):
        raise ValueError(f"--actors must be N >= 1 or MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return {"actors": low, "max_actors": high}
