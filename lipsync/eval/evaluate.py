"""Self-reconstruction evaluation of a character on the frames it never trained on.

The held-out frames are the LAST `held_out_fraction` of the dataset (the training split's
validation frames, `lipsync.data.dataset.split_frames`). Each is rendered from the clip's own audio
with the real frame itself as the template, so the only difference between output and truth is the
regenerated mouth. Three variants are measured against the real frames:

    generated  the character's output for the clip's own audio
    shuffled   the same, driven by the audio of another part of the clip (rolled by half its length):
               what a mouth that ignores the audio would score
    template   no regeneration: the template frame a dub would show (bounce order from frame 0),
               pasted as it is

Metrics per variant (lipsync.eval.metrics): PSNR / SSIM of the full frame and of the mouth region,
LMD of the lips, and the SyncNet's LSE-D / LSE-C against the clip's real audio (the real frames'
own sync score is reported as the reference a perfect mouth would reach).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from lipsync.audio import vad
from lipsync.audio.features import context_range
from lipsync.audio.mel import mel_windows, melspectrogram
from lipsync.bundle import Character, load_character
from lipsync.config import ConfigError, EvalConfig, RenderConfig, TrainConfig, from_dict
from lipsync.data import layout
from lipsync.data.dataset import split_frames
from lipsync.data.inputs import to_chw
from lipsync.errors import InputError
from lipsync.eval import metrics
from lipsync.face import geometry
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.io import media, storage
from lipsync.io.storage import json_safe
from lipsync.render.paint import (
    model_crop,
    model_input,
    paint,
    painted_frame,
    prepare_for_inference,
)
from lipsync.render.pipeline import audio_features
from lipsync.render.rest import RestingMouth, resting_mouth
from lipsync.runtime import resolve_device
from lipsync.train.api import local_dataset

ProgressFn = Callable[[int, int], None]

EVAL_FORMAT = 1
VARIANTS = ("generated", "shuffled", "template")


PAIRING_KEYS = ("val_fraction", "sync_audio_offset")  # read from bundle.json train.config


@dataclass(frozen=True)
class TrainingPairing:
    """What the character was trained with, which eval must match: the held-out split and the
    SyncNet's face/audio pairing (read from bundle.json train.config unless EvalConfig overrides)."""

    held_out_fraction: float
    sync_audio_offset: int
    source: str  # "bundle", "override" or "defaults" (a bundle that records no training config)


@dataclass
class _Variant:
    """Per-frame measurements of one variant (or of the real frames: lips and views only)."""

    name: str
    detector: FaceMeshDetector
    psnr_full: list[float] = field(default_factory=list)
    ssim_full: list[float] = field(default_factory=list)
    psnr_mouth: list[float] = field(default_factory=list)
    ssim_mouth: list[float] = field(default_factory=list)
    lips: list[np.ndarray | None] = field(default_factory=list)  # (40, 2) in the metric crop, None: no face found
    views: list[np.ndarray] = field(default_factory=list)  # (S, S, 3) uint8 model views, for the SyncNet
    apertures: list[float | None] = field(default_factory=list)  # inner-lip aperture, None: no face found
    mouths: list[np.ndarray] = field(default_factory=list)  # the mouth region of the metric crop
    seams: list[tuple[float, float] | None] = field(default_factory=list)  # (colour, gradient) at the paste box


@dataclass
class _Reference:
    """The real frame k and what every variant is compared with."""

    frame: np.ndarray  # (H, W, 3)
    box: np.ndarray
    metric_crop: np.ndarray  # (C, C, 3), C = metric_crop_size
    mouth: tuple[int, int, int, int]  # mouth region in the metric crop


# ---------------------------------------------------------------------------------------------
# steps


def _check_inputs(dataset_uri: str | Path, max_frames: int | None) -> tuple[Path, dict]:
    """A local copy of the (validated) dataset and its meta; bad options are InputErrors."""
    if max_frames is not None and max_frames < 1:
        raise InputError(None, f"--max-frames must be >= 1, got {max_frames}")
    root = local_dataset(str(dataset_uri))
    return root, layout.validate_dataset(root)


def training_pairing(character: Character, cfg: EvalConfig, uri: str) -> TrainingPairing:
    """The held-out fraction and SyncNet pairing the character was trained with (bundle.json
    train.config); EvalConfig values that are set override them."""
    recorded = (character.train or {}).get("config")
    if isinstance(recorded, dict) and recorded:
        try:  # only the two settings eval needs: a bundle from an older version may record others
            trained = from_dict(TrainConfig, {k: recorded[k] for k in PAIRING_KEYS if k in recorded})
        except ConfigError as exc:
            raise InputError(uri, f"bundle records an unreadable training config ({exc.problem})") from None
        source = "bundle"
    else:
        trained, source = TrainConfig(), "defaults"
    fraction, offset = trained.val_fraction, trained.sync_audio_offset
    if cfg.held_out_fraction is not None or cfg.sync_audio_offset is not None:
        source = "override"
        fraction = fraction if cfg.held_out_fraction is None else cfg.held_out_fraction
        offset = offset if cfg.sync_audio_offset is None else cfg.sync_audio_offset
    return TrainingPairing(held_out_fraction=fraction, sync_audio_offset=offset, source=source)


def held_out_frames(n_frames: int, n_audio_frames: int, held_out_fraction: float, max_frames: int | None
                    ) -> np.ndarray:
    """The training split's validation frames (the last ones) that have audio, the first `max_frames` of them."""
    try:
        frames = split_frames(n_frames, held_out_fraction).val
    except ValueError as exc:
        raise InputError(None, f"cannot hold out frames: {exc}") from exc
    frames = frames[frames < n_audio_frames]  # a video a few frames longer than its audio
    if max_frames is not None:
        frames = frames[:max_frames]
    if frames.size == 0:
        raise InputError(None, f"no held-out frames to evaluate ({n_frames} frames, "
                               f"held_out_fraction={held_out_fraction})")
    return frames


def _generated_frames(character: Character, frames: list[np.ndarray], boxes: list[np.ndarray], audio: np.ndarray,
                      render_cfg: RenderConfig, rest: np.ndarray | None = None,
                      mouth: RestingMouth | None = None) -> list[np.ndarray]:
    """Real frames as their own templates, painted for `audio` exactly as render paints a template
    (a non-finite output leaves the frame unchanged, as in a dub; pauses rest the mouth, as in a dub)."""
    crops = [model_crop(character, f, b) for f, b in zip(frames, boxes)]
    inputs = np.stack([model_input(character, face) for _, face in crops])
    outputs = paint(character, inputs, audio, render_cfg)
    weights = np.zeros(len(frames), np.float32) if rest is None or mouth is None else rest
    result = []
    for frame, box, (crop_full, _), out, w in zip(frames, boxes, crops, outputs, weights):
        painted = painted_frame(character, frame, box, crop_full, out, mouth, float(w),
                                render_cfg.colour_match_band)
        result.append(frame if painted is None else painted)
    return result


def _reference(frame: np.ndarray, box: np.ndarray, landmarks: np.ndarray, cfg: EvalConfig) -> _Reference:
    size = cfg.metric_crop_size
    mouth = metrics.mouth_box(metrics.lip_points(landmarks, box, size), size, cfg.mouth_pad)
    return _Reference(frame=frame, box=box, metric_crop=geometry.crop(frame, box, size), mouth=mouth)


def _view(character: Character, frame: np.ndarray, box) -> np.ndarray:
    """The (S, S, 3) model view of `frame` at `box`: what the SyncNet and the generator see."""
    return model_crop(character, frame, box)[1].copy()


def _observe(variant: _Variant, character: Character, frame: np.ndarray, box, cfg: EvalConfig,
             mouth: tuple[int, int, int, int]) -> np.ndarray:
    """Detect the lips, keep the model view, the mouth region and the paste seam of one frame;
    returns its metric crop."""
    lms = variant.detector.detect(frame)
    variant.lips.append(None if lms is None else metrics.lip_points(lms, box, cfg.metric_crop_size))
    variant.apertures.append(None if lms is None else float(geometry.mouth_aperture(lms)))
    variant.views.append(_view(character, frame, box))
    crop = geometry.crop(frame, box, cfg.metric_crop_size)
    x0, y0, x1, y1 = mouth
    variant.mouths.append(crop[y0:y1, x0:x1].copy())
    variant.seams.append(metrics.seam(frame, box, character.geometry.feather))
    return crop


def _compare(variant: _Variant, character: Character, frame: np.ndarray, box, ref: _Reference,
             cfg: EvalConfig) -> np.ndarray:
    """All per-frame measurements of one variant frame against the real frame; returns its metric crop."""
    crop = _observe(variant, character, frame, box, cfg, ref.mouth)
    x0, y0, x1, y1 = ref.mouth
    variant.psnr_full.append(metrics.psnr(frame, ref.frame))
    variant.ssim_full.append(metrics.ssim(frame, ref.frame))
    variant.psnr_mouth.append(metrics.psnr(crop[y0:y1, x0:x1], ref.metric_crop[y0:y1, x0:x1]))
    variant.ssim_mouth.append(metrics.ssim(crop[y0:y1, x0:x1], ref.metric_crop[y0:y1, x0:x1]))
    return crop


def _sync(character: Character, views: list[np.ndarray], frames: np.ndarray, mel: np.ndarray, n_audio: int,
          cfg: EvalConfig, audio_offset: int, roll: int = 0) -> dict | None:
    """LSE of model views against the clip's audio (rolled by `roll` frames: the shuffled variant's own audio)."""
    if character.syncnet is None:
        return None
    faces = torch.from_numpy(np.stack([to_chw(v) for v in views]))  # (N, 3, S, S)

    def windows_of(audio_frames: np.ndarray) -> np.ndarray:
        source = (audio_frames - roll) % n_audio  # rolled features: frame j heard frame j - roll
        lo, hi = int(source.min()), int(source.max())
        return mel_windows(mel, hi - lo + 1, character.audio, start=lo)[source - lo]

    score = metrics.sync_score(character.syncnet, faces, frames, windows_of, n_audio, max_offset=cfg.sync_max_offset,
                               audio_offset=audio_offset, batch_size=cfg.sync_batch_size)
    return score.as_dict()


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or baseline is None or baseline == 0 else value / baseline


def _temporal(variant: _Variant, silent: np.ndarray) -> dict:
    """What viewers see of one variant (or of the real frames): jitter, flicker, sharpness, seam, and
    the mouth in silent frames (docs/QUALITY.md)."""
    seams = [s for s in variant.seams if s is not None]
    quiet = [a for a, q in zip(variant.apertures, silent) if q and a is not None]
    quiet_steps = [abs(b - a) for a, b, qa, qb in zip(variant.apertures[:-1], variant.apertures[1:], silent[:-1],
                                                      silent[1:]) if qa and qb and a is not None and b is not None]
    return {
        "jitter": metrics.lip_jitter(variant.lips),
        "flicker": metrics.flicker(variant.mouths),
        "sharpness": float(np.mean([metrics.sharpness(m) for m in variant.mouths])),
        "seam_colour": float(np.mean([s[0] for s in seams])) if seams else None,
        "seam_gradient": float(np.mean([s[1] for s in seams])) if seams else None,
        "silent": {"frames": int(silent.sum()), "aperture": float(np.mean(quiet)) if quiet else None,
                   "motion": float(np.mean(quiet_steps)) if quiet_steps else None},
    }


def _summary(variant: _Variant, real: _Variant, silent: np.ndarray) -> dict:
    both = [(g, r) for g, r in zip(variant.lips, real.lips) if g is not None and r is not None]
    quiet = [(g, r) for g, r, q in zip(variant.lips, real.lips, silent) if q and g is not None and r is not None]
    seen, truth = _temporal(variant, silent), _temporal(real, silent)
    # the lip distance of the silent frames alone: where silence handling changes the frame
    seen["silent"]["lmd"] = metrics.lmd(np.stack([g for g, _ in quiet]), np.stack([r for _, r in quiet])) if quiet \
        else None
    return {
        "psnr_full": float(np.mean(variant.psnr_full)),
        "ssim_full": float(np.mean(variant.ssim_full)),
        "psnr_mouth": float(np.mean(variant.psnr_mouth)),
        "ssim_mouth": float(np.mean(variant.ssim_mouth)),
        "lmd": metrics.lmd(np.stack([g for g, _ in both]), np.stack([r for _, r in both])) if both else None,
        "lmd_frames": len(both),
        **seen,
        "vs_real": {k: _ratio(seen[k], truth[k]) for k in ("jitter", "flicker", "sharpness", "seam_colour",
                                                           "seam_gradient")},
    }


def _strip_png(rows: list[list[np.ndarray]], labels: tuple[str, ...]) -> bytes:
    """PNG of rows of equal-size crops, one column per label, the label written on the top row."""
    grid = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    width = rows[0][0].shape[1]
    for i, label in enumerate(labels):
        cv2.putText(grid, label, (i * width + 6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("PNG encoding of the strip failed")
    return png.tobytes()


# ---------------------------------------------------------------------------------------------
# the procedure


def evaluate(dataset_dir: str | Path, character_uri: str, out_json: str, strip_png: str | None = None,
             max_frames: int | None = None, *, cfg: EvalConfig = EvalConfig(),
             render_cfg: RenderConfig = RenderConfig(), character: Character | None = None,
             progress: ProgressFn | None = None) -> dict:
    """Evaluate the character at `character_uri` on the held-out frames of `dataset_dir` (path or URI).

    Writes the metrics as JSON to `out_json` (and the strip to `strip_png`, both paths or URIs) and
    returns the same dict. `character` (an already loaded Character) skips loading `character_uri`.
    """
    started = time.perf_counter()
    # 1. check inputs, load the character and the dataset's arrays
    for out in (out_json, strip_png):
        if out:
            storage.check_output_path(out)
    root, meta = _check_inputs(dataset_dir, max_frames)
    if character is None:
        character = load_character(character_uri, device=resolve_device(cfg.device))
        prepare_for_inference(character, render_cfg)
    pairing = training_pairing(character, cfg, str(character_uri))
    offset = pairing.sync_audio_offset
    boxes = np.load(root / layout.BOXES_FILE)
    landmarks = np.load(root / layout.LANDMARKS_FILE)
    n_frames = int(meta["n_frames"])

    # 2. the clip's audio: features for the generator (own and shuffled) and mel for the SyncNet
    wav = media.read_audio(root / layout.AUDIO_FILE, character.audio.sample_rate)
    feats = audio_features(character, wav, render_cfg.feature_batch_size,
                           render_cfg.feature_smooth_frames)  # (N_audio, D)
    n_audio = len(feats)
    roll = int(round(n_audio * cfg.shuffle_shift))
    shuffled_feats = np.roll(feats, roll, axis=0)  # frame j gets the audio of frame j - roll
    mel = melspectrogram(wav, character.audio)
    frames = held_out_frames(n_frames, n_audio, pairing.held_out_fraction, max_frames)
    # pauses rest the mouth as in a dub (silence=rest); the shuffled variant rests where its audio pauses
    rest = vad.frame_rest_weights(wav, n_audio, character.audio, render_cfg)
    # never rest on a held-out frame: its real mouth is what the generated frame is compared with
    held_out_split = split_frames(n_frames, pairing.held_out_fraction).val
    mouth = (resting_mouth(character, render_cfg, exclude=held_out_split.tolist())
             if rest is not None and rest.any() else None)
    shuffled_rest = None if rest is None else np.roll(rest, roll)
    # the silent frames are measured whatever the silence mode (keep paints them, but they are still silent)
    pauses = rest if rest is not None else vad.frame_rest_weights(wav, n_audio, character.audio,
                                                                  dataclasses.replace(render_cfg, silence="rest"))
    silent = pauses[frames] >= 1.0
    strip_at = set(np.unique(np.linspace(0, len(frames) - 1, cfg.strip_frames).round().astype(int)).tolist())

    # 3. render and measure, batch by batch; one landmark tracker per variant (frames are in order)
    strip_rows: list[list[np.ndarray]] = []
    with FaceMeshDetector() as d_real, FaceMeshDetector() as d_gen, FaceMeshDetector() as d_shuf, \
            FaceMeshDetector() as d_tmpl:
        real = _Variant("real", d_real)
        variants = {"generated": _Variant("generated", d_gen), "shuffled": _Variant("shuffled", d_shuf),
                    "template": _Variant("template", d_tmpl)}
        for lo in range(0, len(frames), cfg.batch_size):
            ks = frames[lo:lo + cfg.batch_size]
            real_frames = [media.read_image(layout.frame_path(root, int(k))) for k in ks]
            real_boxes = [boxes[k] for k in ks]
            a, b = int(ks[0]), int(ks[-1]) + 1  # held-out frames are contiguous
            outputs = {
                "generated": _generated_frames(character, real_frames, real_boxes,
                                               context_range(feats, a, b, character.audio), render_cfg,
                                               None if rest is None else rest[a:b], mouth),
                "shuffled": _generated_frames(character, real_frames, real_boxes,
                                              context_range(shuffled_feats, a, b, character.audio), render_cfg,
                                              None if shuffled_rest is None else shuffled_rest[a:b], mouth),
            }
            for i, k in enumerate(ks):
                j = lo + i  # position in the held-out sequence = the output frame index of a dub from frame 0
                ref = _reference(real_frames[i], real_boxes[i], landmarks[k], cfg)
                _observe(real, character, ref.frame, ref.box, cfg, ref.mouth)
                crops = [ref.metric_crop]
                for name in ("generated", "shuffled"):
                    crops.append(_compare(variants[name], character, outputs[name][i], ref.box, ref, cfg))
                t = geometry.bounce(j, character.n_templates)
                _compare(variants["template"], character, media.read_image(character.template_path(t)),
                         character.boxes[t], ref, cfg)
                if j in strip_at:
                    strip_rows.append(crops)
            if progress:
                progress(min(lo + cfg.batch_size, len(frames)), len(frames))

    # 4. sync scores against the clip's real audio
    report = {name: _summary(v, real, silent) for name, v in variants.items()}
    for name, v in variants.items():
        report[name]["sync"] = _sync(character, v.views, frames, mel, n_audio, cfg, offset)
    report["shuffled"]["sync_own_audio"] = _sync(character, variants["shuffled"].views, frames, mel, n_audio, cfg,
                                                 offset,
                                                 roll=roll)
    report["real"] = {"sync": _sync(character, real.views, frames, mel, n_audio, cfg, offset),
                      "lips_found": sum(p is not None for p in real.lips), **_temporal(real, silent)}

    # 5. write the JSON (and the strip)
    result = json_safe({
        "eval_format": EVAL_FORMAT,
        "character": {"uri": str(character_uri), "name": character.name, "preset": character.preset,
                      "version": character.version},
        "dataset": {"uri": str(dataset_dir), "name": meta.get("name"), "n_frames": n_frames, "audio_frames": n_audio},
        "frames": {"evaluated": len(frames), "first": int(frames[0]), "last": int(frames[-1]),
                   "held_out_fraction": pairing.held_out_fraction},
        "pairing": asdict(pairing),
        "settings": {**asdict(cfg), "sync_distance": "1 - cosine similarity of the SyncNet embeddings",
                     "silence": render_cfg.silence,
                     "shuffle_roll_frames": roll, "syncnet": character.syncnet is not None},
        "metrics": report,
        "seconds": time.perf_counter() - started,
    })
    storage.write_json(out_json, result)
    if strip_png:
        storage.write_bytes(strip_png, _strip_png(strip_rows, ("real",) + VARIANTS[:2]))
    return result


# ---------------------------------------------------------------------------------------------
# a table for people


def _fmt(value, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _table(result: dict, header: tuple[str, ...], cells: Callable[[dict], list[str]]) -> str:
    """A Markdown table with one row per variant and the real frames: `cells(row)` after the name."""
    lines = ["| " + " | ".join(("variant", *header)) + " |", "|" + "---|" * (len(header) + 1)]
    for name in (*VARIANTS, "real"):
        lines.append("| " + " | ".join([name, *cells(result["metrics"][name])]) + " |")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """The evaluation as Markdown: fidelity and sync per variant, then what viewers see (viewer_table)."""
    def cells(row: dict) -> list[str]:
        sync = row.get("sync") or {}
        return [_fmt(row.get("psnr_full"), 2), _fmt(row.get("ssim_full"), 4), _fmt(row.get("psnr_mouth"), 2),
                _fmt(row.get("ssim_mouth"), 4), _fmt(row.get("lmd"), 2), _fmt(sync.get("distance"), 4),
                _fmt(sync.get("confidence"), 4), str(sync.get("offset", "-"))]

    header = ("PSNR full", "SSIM full", "PSNR mouth", "SSIM mouth", "LMD (px @320)", "LSE-D", "LSE-C", "offset")
    return _table(result, header, cells) + "\n\n" + viewer_table(result)


def viewer_table(result: dict) -> str:
    """What viewers see, per variant next to the real footage: lip jitter (px @320 per frame), mouth
    flicker (grey levels per frame), sharpness (Laplacian variance), seam colour / gradient at the
    paste box, and aperture / motion / lip distance in silent frames."""
    def cells(row: dict) -> list[str]:
        silent = row.get("silent") or {}
        return [_fmt(row.get("jitter"), 2), _fmt(row.get("flicker"), 2), _fmt(row.get("sharpness"), 1),
                _fmt(row.get("seam_colour"), 2), _fmt(row.get("seam_gradient"), 2), str(silent.get("frames", "-")),
                _fmt(silent.get("aperture"), 3), _fmt(silent.get("motion"), 3), _fmt(silent.get("lmd"), 2)]

    header = ("jitter", "flicker", "sharpness", "seam colour", "seam gradient", "silent frames", "silent aperture",
              "silent motion", "silent LMD")
    return _table(result, header, cells)
