"""Evaluation: quality metrics (metrics.py) and the self-reconstruction evaluation (evaluate.py)."""

from lipsync.eval.evaluate import EvalConfig, evaluate, held_out_frames, markdown_table
from lipsync.eval.metrics import (
    SyncScore,
    lip_indices,
    lip_points,
    lmd,
    mouth_box,
    psnr,
    ssim,
    sync_score,
)

__all__ = [
    "EvalConfig",
    "SyncScore",
    "evaluate",
    "held_out_frames",
    "lip_indices",
    "lip_points",
    "lmd",
    "markdown_table",
    "mouth_box",
    "psnr",
    "ssim",
    "sync_score",
]
