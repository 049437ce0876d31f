"""lipsync.train.preflight: what makes a run fail later is found from the frame count alone, with a
fix that works (issue 15, item 4)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lipsync.config import NegativeSampling, TrainConfig
from lipsync.errors import InputError
from lipsync.train.preflight import check_training, find_problem, has_negatives

CFG = TrainConfig(generator_steps=300)  # train.yaml's other numbers: val 0.1, batch 8, SyncNet 32, shift 5


def meta(n: int) -> dict:
    return {"n_frames": n, "fps": 25}


def test_the_plan_names_both_stages_and_their_sum():
    plan = check_training(CFG, meta(500), "ds")
    assert plan.total_steps == 2300 and (plan.n_train, plan.n_val) == (450, 50)
    assert plan.line().startswith("plan: syncnet 2000 + generator 300 = 2300 steps")


@pytest.mark.parametrize("n, words", [
    (1, "leave fewer than 2 training frames"),
    (8, "cannot fill a generator batch of 8"),
    (25, "held-out split of 3 frames"),
    (80, "held-out split of 8 frames"),  # the case of the issue: "split of 8 frames is too short"
])
def test_too_few_frames_name_the_dataset_and_the_smallest_video_that_works(n, words):
    with pytest.raises(InputError) as error:
        check_training(CFG, meta(n), "s3://b/ds")
    text = str(error.value)
    assert text.startswith("s3://b/ds: ") and words in text
    assert "use at least 3.6 s of video (91 frames at 25 fps)" in text
    assert find_problem(91, CFG) is None and find_problem(90, CFG) is not None  # 91 is the smallest


def test_every_suggested_set_fixes_the_run():
    for n in (25, 60, 80):
        with pytest.raises(InputError) as error:
            check_training(CFG, meta(n), "ds")
        fixes = [part.split(" (")[0] for part in str(error.value).split(", or ")[1:]]
        assert fixes, str(error.value)
        for fix in fixes:
            cfg = CFG
            for item in fix.removeprefix("--set ").split(" --set "):
                key, value = item.split("=")
                cfg = dataclasses.replace(cfg, **{key: float(value)})
            assert find_problem(n, cfg) is None, (n, fix)


def test_training_split_too_short_for_the_negatives():
    cfg = dataclasses.replace(CFG, val_fraction=0.0, negatives=NegativeSampling(min_shift=40, max_shift=40))
    with pytest.raises(InputError, match="training split of 50 frames .* --set negatives.min_shift=25 "
                                         "--set negatives.max_shift=40"):
        check_training(cfg, meta(50), "ds")


def test_a_far_fix_is_found_quickly_and_is_the_smallest():
    import re
    import time

    cfg = dataclasses.replace(CFG, negatives=NegativeSampling(min_shift=2000, max_shift=2000))
    started = time.monotonic()
    with pytest.raises(InputError) as error:
        check_training(cfg, meta(500), "ds")
    assert time.monotonic() - started < 10
    needed = int(re.search(r"use at least [0-9.]+ s of video \((\d+) frames", str(error.value)).group(1))
    assert find_problem(needed, cfg) is None and find_problem(needed - 1, cfg) is not None
    # beyond the longest video prepare takes (max_duration_s): no video to suggest
    cfg = dataclasses.replace(CFG, negatives=NegativeSampling(min_shift=200_000, max_shift=200_000))
    with pytest.raises(InputError, match="neither a video prepare accepts"):
        check_training(cfg, meta(500), "ds")


def test_workers_share_the_training_frames():
    check_training(CFG, meta(500), "ds", world_size=4)
    with pytest.raises(InputError, match="over 64 worker"):
        check_training(CFG, meta(500), "ds", world_size=64)


def test_no_syncnet_stage_needs_no_negatives():
    check_training(dataclasses.replace(CFG, syncnet_steps=0), meta(25), "ds")


def test_has_negatives_is_negative_frames_condition():
    assert has_negatives(np.arange(10), 5) and not has_negatives(np.arange(9), 5)
    for length in range(1, 30):  # the contiguous shortcut find_problem takes for the training split
        for shift in range(1, 12):
            assert has_negatives(np.arange(length), shift) == (length >= 2 * shift), (length, shift)
    assert has_negatives(np.array([0, 3, 6, 9]), 5)  # evenly spaced held-out frames
    assert not has_negatives(np.arange(0), 1)


# --- the plan's time estimate: measured steps/s, one line per stage (issue 15, item 5) -------------


def test_time_estimate_is_measured_per_stage():
    from lipsync.train.preflight import StepRateEstimate, TrainPlan

    plan = TrainPlan(dataset="d", n_frames=100, fps=25.0, n_train=90, n_val=10, syncnet_steps=200, generator_steps=100)
    est = StepRateEstimate(plan, warmup=5, window=20, min_seconds=5.0)
    lines = {}
    for step in range(1, plan.total_steps + 1):  # syncnet at 4 steps/s, the generator at 1 step/s
        now = step / 4 if step <= 200 else 50 + (step - 200)
        line = est.update(step, now)
        if line:
            lines[step] = line
    assert sorted(lines) == [25, 225]  # 5 warm-up steps, then 20 timed steps (>= 5 s) of each stage
    assert lines[25] == ("estimate: syncnet 200 steps at 4.00 steps/s = 0:00:50 (timed over steps 6-25); "
                         "0:00:44 left in this stage; the generator's rate is measured when it starts")
    assert lines[225] == "estimate: generator 100 steps at 1.00 steps/s = 0:01:40 (timed over steps 206-225); " \
                         "0:01:15 left in this stage"


def test_time_estimate_waits_for_min_seconds_and_skips_short_stages():
    from lipsync.train.preflight import StepRateEstimate, TrainPlan

    plan = TrainPlan(dataset="d", n_frames=100, fps=25.0, n_train=90, n_val=10, syncnet_steps=10, generator_steps=1000)
    est = StepRateEstimate(plan, warmup=5, window=20, min_seconds=5.0)
    out = [(s, est.update(s, s * 0.1)) for s in range(1, 200)]  # 10 steps/s: 20 steps take 2 s < 5 s
    timed = [(s, line) for s, line in out if line]
    assert len(timed) == 1 and timed[0][0] == 65  # generator: from step 15 until 5 s (50 steps) later
    assert timed[0][1].startswith("estimate: generator 1000 steps at 10.00 steps/s = 0:01:40")
