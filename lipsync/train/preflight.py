"""Checks before step 1: what would make a training run fail later, found from the dataset's
meta.json and the config alone (no frame is decoded, no model built), each with its fix.

    plan = check_training(cfg, meta, dataset_uri, world_size)   # InputError naming the dataset
    print(plan.line())   # "plan: syncnet 2000 + generator 300 = 2300 steps (--syncnet-steps, --steps); ..."

A split too short for SyncNet's negatives used to fail only after the whole SyncNet stage (its
validation ran at the stage's last step); the batch checks ran after every crop was decoded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from lipsync.config import PrepareConfig, TrainConfig
from lipsync.data.dataset import MIN_TRAIN_FRAMES, Split, split_frames, val_frames
from lipsync.errors import InputError

FRACTION_STEP = 0.01  # val_fraction suggestions are multiples of this


@dataclass(frozen=True)
class TrainPlan:
    """What a run will do: its stages and steps, and the frames each split holds."""

    dataset: str
    n_frames: int
    fps: float
    n_train: int
    n_val: int
    syncnet_steps: int
    generator_steps: int
    world_size: int = 1

    @property
    def total_steps(self) -> int:
        return self.syncnet_steps + self.generator_steps

    def line(self) -> str:
        return (f"plan: syncnet {self.syncnet_steps} + generator {self.generator_steps} = {self.total_steps} steps "
                f"(--syncnet-steps, --steps); {self.n_train} training frames, {self.n_val} held out"
                + (f", {self.world_size} workers" if self.world_size > 1 else ""))


@dataclass(frozen=True)
class Problem:
    """Why the run cannot work with this many frames (`kind` picks the config changes that fix it)."""

    kind: str  # split | batch | syncnet_batch | train_negatives | val_negatives
    text: str
    value: int = 0  # batch: the largest batch that fits; train_negatives: the largest min_shift


def check_training(cfg: TrainConfig, meta: dict[str, Any], dataset: str, world_size: int = 1) -> TrainPlan:
    """The run's plan, or InputError(dataset, "<problem>: use at least N s of video ..., or --set ...")."""
    n = int(meta["n_frames"])
    fps = dataset_fps(meta)
    problem = find_problem(n, cfg, world_size)
    if problem is not None:
        options = _more_video(n, fps, cfg, world_size) + _config_fixes(n, cfg, world_size, problem)
        longest = PrepareConfig().max_duration_s
        fix = ", or ".join(options) if options else \
            f"neither a video prepare accepts (up to {longest:g} s) nor one --set change would train"
        raise InputError(dataset, f"{problem.text}: {fix}")
    split = split_frames(n, cfg.val_fraction)
    return TrainPlan(dataset=str(dataset), n_frames=n, fps=fps, n_train=split.n_train, n_val=split.val.size,
                     syncnet_steps=cfg.syncnet_steps, generator_steps=cfg.generator_steps, world_size=world_size)


def dataset_fps(meta: dict[str, Any]) -> float:
    """The frame rate a dataset was prepared at: meta.json `fps`, else its recorded prepare config's,
    else prepare's default."""
    return float(meta.get("fps") or (meta.get("config") or {}).get("fps") or PrepareConfig().fps)


def find_problem(n: int, cfg: TrainConfig, world_size: int = 1) -> Problem | None:
    """The first reason `n` frames cannot train with `cfg` on `world_size` workers, or None."""
    try:
        split = split_frames(n, cfg.val_fraction)
    except ValueError:
        return Problem("split", f"{n} frames leave fewer than {MIN_TRAIN_FRAMES} training frames with "
                                f"val_fraction={cfg.val_fraction}")
    return _batch_problem(split, cfg, world_size) or _negatives_problem(split, cfg)


def _batch_problem(split: Split, cfg: TrainConfig, world_size: int) -> Problem | None:
    per_rank = split.n_train // world_size
    if cfg.generator_steps and per_rank < cfg.batch_size:
        return Problem("batch", f"{split.n_train} training frames over {world_size} worker(s) cannot fill a "
                                f"generator batch of {cfg.batch_size}", per_rank)
    if cfg.syncnet_steps and 2 * per_rank < cfg.syncnet_batch_size:
        return Problem("syncnet_batch", f"{split.n_train} training frames over {world_size} worker(s) cannot fill "
                                        f"a SyncNet batch of {cfg.syncnet_batch_size}", 2 * per_rank)
    return None


def _negatives_problem(split: Split, cfg: TrainConfig) -> Problem | None:
    """SyncNet draws each negative's audio from a frame of the same split >= min_shift away."""
    if not cfg.syncnet_steps:
        return None
    shift = cfg.negatives.min_shift
    # the training split is contiguous: has_negatives(arange(L), m) is L >= 2m (the middle frame's
    # farthest partner is L // 2 away), checked without building the array
    if split.n_train < 2 * shift:
        return Problem("train_negatives", f"the training split of {split.n_train} frames is too short for SyncNet "
                                          f"negatives {shift}+ frames away (negatives.min_shift)", split.n_train // 2)
    held_out = val_frames(split, cfg.val_max_frames)
    if held_out.size and not has_negatives(held_out, shift):
        return Problem("val_negatives", f"the held-out split of {split.val.size} frames (val_fraction="
                                        f"{cfg.val_fraction}) is too short for SyncNet negatives {shift}+ frames away")
    return None


def has_negatives(frames: np.ndarray, min_shift: int) -> bool:
    """Every frame of `frames` (sorted) has another one at least `min_shift` frames away
    (lipsync.data.dataset.negative_frame's condition)."""
    if frames.size == 0:
        return False
    first, last = int(frames[0]), int(frames[-1])
    return bool(np.all(np.maximum(frames - first, last - frames) >= min_shift))


def _more_video(n: int, fps: float, cfg: TrainConfig, world_size: int) -> list[str]:
    """"use at least N s of video": the fewest frames that train, up to the longest video prepare takes."""
    needed = smallest_frame_count(n, cfg, world_size, int(PrepareConfig().max_duration_s * fps))
    return [f"use at least {needed / fps:.1f} s of video ({needed} frames at {fps:g} fps)"] if needed else []


def smallest_frame_count(n: int, cfg: TrainConfig, world_size: int, limit: int) -> int | None:
    """The fewest frames (> n, <= limit) with which `cfg` trains, or None. Every check only gets
    easier with more frames, so: double the step until one works, then bisect."""
    def trains(m: int) -> bool:
        return find_problem(m, cfg, world_size) is None

    failing, step = n, 1
    while n + step < limit and not trains(n + step):
        failing, step = n + step, step * 2
    working = min(n + step, limit)
    if not trains(working):
        return None
    while working - failing > 1:
        middle = (failing + working) // 2
        failing, working = (failing, middle) if trains(middle) else (middle, working)
    return working


def _config_fixes(n: int, cfg: TrainConfig, world_size: int, problem: Problem) -> list[str]:
    """The `--set` changes that would let `n` frames train (each one checked to fix every problem)."""
    replace = dataclasses.replace
    candidates: list[tuple[str, TrainConfig]] = []
    if problem.kind == "batch" and problem.value:
        candidates.append((f"--set batch_size={problem.value}", replace(cfg, batch_size=problem.value)))
    elif problem.kind == "syncnet_batch" and problem.value:
        candidates.append((f"--set syncnet_batch_size={problem.value}",
                           replace(cfg, syncnet_batch_size=problem.value)))
    elif problem.kind == "train_negatives" and problem.value:
        m = problem.value  # a contiguous split of 2m frames has a partner m away for every frame
        high = max(m, cfg.negatives.max_shift)
        candidates.append((f"--set negatives.min_shift={m} --set negatives.max_shift={high}",
                           replace(cfg, negatives=replace(cfg.negatives, min_shift=m, max_shift=high))))
    if problem.kind in ("split", "val_negatives"):
        candidates += [(f"--set val_fraction={f:g}", replace(cfg, val_fraction=f))
                       for f in _working_fractions(n, cfg, world_size)[:1]]
    if problem.kind == "val_negatives":
        candidates.append(("--set val_fraction=0 (no held-out metrics)", replace(cfg, val_fraction=0.0)))
    return [text for text, fixed in candidates if find_problem(n, fixed, world_size) is None]


def _working_fractions(n: int, cfg: TrainConfig, world_size: int) -> list[float]:
    """The val_fractions (multiples of FRACTION_STEP) with which `n` frames would train, smallest first."""
    steps = int(round(1 / FRACTION_STEP))
    candidates = (k / steps for k in range(1, steps))
    return [f for f in candidates if find_problem(n, dataclasses.replace(cfg, val_fraction=f), world_size) is None]


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class StepRateEstimate:
    """The plan's time estimate, from steps/s measured on this run, one line per stage.

    The two stages run at different rates (SyncNet steps are several times cheaper than
    generator steps), and the machine's load is unknown beforehand, so nothing is promised at
    step 0: after `warmup` steps of a stage (data loading, the first allocations), the next
    `window` steps are timed (at least `min_seconds`), and `update` returns one line, e.g.
    "estimate: syncnet 2000 steps at 3.10 steps/s = 0:10:45 (timed over steps 6-25); the
    generator's rate is measured when it starts". A stage too short to time gets no line.

        est = StepRateEstimate(plan)
        line = est.update(global_step, time.monotonic())   # None, or the line to print
    """

    def __init__(self, plan: TrainPlan, warmup: int = 5, window: int = 20, min_seconds: float = 5.0):
        self.plan, self.warmup, self.window, self.min_seconds = plan, warmup, window, min_seconds
        self._start: dict[str, tuple[int, float]] = {}  # stage -> (step, time) where timing began
        self._first: dict[str, int] = {}  # stage -> first step seen (a resumed run starts mid-stage)
        self._done: set[str] = set()

    def stage(self, global_step: int) -> str:
        return "syncnet" if global_step <= self.plan.syncnet_steps else "generator"

    def update(self, global_step: int, now: float) -> str | None:
        stage = self.stage(global_step)
        if stage in self._done:
            return None
        first = self._first.setdefault(stage, global_step)
        if stage not in self._start:
            if global_step - first + 1 >= self.warmup:  # steps of this stage run in this process
                self._start[stage] = (global_step, now)
            return None
        step0, t0 = self._start[stage]
        steps, seconds = global_step - step0, now - t0
        if steps < self.window or seconds < self.min_seconds or seconds <= 0:
            return None
        self._done.add(stage)
        rate = steps / seconds
        syncnet_end = self.plan.syncnet_steps
        stage_total = self.plan.syncnet_steps if stage == "syncnet" else self.plan.generator_steps
        stage_left = (syncnet_end if stage == "syncnet" else self.plan.total_steps) - global_step
        text = (f"estimate: {stage} {stage_total} steps at {rate:.2f} steps/s = {_clock(stage_total / rate)} "
                f"(timed over steps {step0 + 1}-{global_step}); {_clock(stage_left / rate)} left in this stage")
        if stage == "syncnet" and self.plan.generator_steps:
            text += "; the generator's rate is measured when it starts"
        return text
