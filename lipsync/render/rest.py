"""The resting mouth: where the audio has no voice, the lower face is the character's own closed mouth.

The resting template is the median mouth of the footage's own pauses (templates inside a pause of
the dataset's audio, found by voice activity when the bundle was written), or the template whose
real mouth is most closed (smallest inner-lip aperture, lipsync.face.geometry.mouth_aperture, among
templates with a face) when the footage has too few pause frames (resting_template). In a pause,
frame k keeps its own template t = bounce(k) (head pose, eyes, background) and takes the lower-face band
(RenderConfig.rest_box, feathered) from the resting template's crop: both crops are cut around
the face from landmarks, so the band lands on the mouth. At the edges of a pause the generated
crop and the rested one are cross-faded by the frame's rest weight (lipsync.audio.vad), a pure
function of k and the item's audio, so shards cut anywhere render a pause identically.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from lipsync.bundle import Character
from lipsync.config import RenderConfig
from lipsync.face import geometry
from lipsync.io import media


@dataclass(frozen=True)
class RestingMouth:
    template: int  # index of the resting template
    aperture: float  # its inner-lip aperture
    crop: np.ndarray  # (S+2m, S+2m, 3) uint8: its model crop
    alpha: np.ndarray  # (S+2m, S+2m, 1) float32: where its pixels replace the frame's (the band)


def resting_template(character: Character, cfg: RenderConfig, exclude: Collection[int] = ()) -> int:
    """The template the mouth rests on (templates without a face, and `exclude`, are never chosen).

    rest_template `pause`: of the templates inside the footage's own pauses (Character.footage_pauses),
    the one with the median real inner-lip aperture: how this person's mouth looks when they are
    silent, which is often not fully closed (the most closed frame is usually a pressed "m" or "b").
    With fewer than rest_min_pause_templates such templates, or `closed`: the most closed template.
    `exclude`: e.g. held-out frames an evaluation compares against.
    """
    aperture = geometry.mouth_aperture(character.landmarks)  # (n,)
    usable = np.ones(len(aperture), bool)
    usable[[t for t in character.frames_without_face if t < len(usable)]] = False
    usable[[t for t in exclude if 0 <= t < len(usable)]] = False
    if not usable.any():
        raise ValueError(f"character {character.name!r} has no template with a face to rest the mouth on")
    pauses = np.zeros_like(usable)
    pauses[sorted(character.footage_pauses)] = True
    pauses &= usable
    if cfg.rest_template == "pause" and pauses.sum() >= cfg.rest_min_pause_templates:
        candidates = np.flatnonzero(pauses)
        order = candidates[np.argsort(aperture[candidates], kind="stable")]
        return int(order[(len(order) - 1) // 2])  # the median (the lower one of an even count)
    return int(np.flatnonzero(usable)[np.argmin(aperture[usable])])


def _smooth_ramp(n: int, lo: float, hi: float, feather: float) -> np.ndarray:
    """(n,) weights: 1 on [lo, hi), falling to 0 over `feather` pixels outside it (smoothstep)."""
    x = np.arange(n) + 0.5
    if feather <= 0:
        return ((x >= lo) & (x < hi)).astype(np.float32)
    t = np.clip(np.minimum(x - lo, hi - x) / feather + 1.0, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def band_alpha(character: Character, cfg: RenderConfig) -> np.ndarray:
    """(S+2m, S+2m, 1) float32 blend weights of the rest band in full-crop pixels."""
    s, m = character.size, character.margin
    fx0, fy0, fx1, fy1 = cfg.rest_box
    feather = cfg.rest_feather * s
    rows = _smooth_ramp(s + 2 * m, m + fy0 * s, m + fy1 * s, feather)
    cols = _smooth_ramp(s + 2 * m, m + fx0 * s, m + fx1 * s, feather)
    return np.outer(rows, cols)[:, :, None]


def resting_mouth(character: Character, cfg: RenderConfig, exclude: Collection[int] = ()) -> RestingMouth:
    """The character's resting mouth (reads one template JPEG); `exclude`: see resting_template."""
    t = resting_template(character, cfg, exclude)
    frame = media.read_image(character.template_path(t))
    crop_full = geometry.crop(frame, character.boxes[t], character.crop_size)
    aperture = float(geometry.mouth_aperture(character.landmarks[t]))
    return RestingMouth(template=t, aperture=aperture, crop=crop_full, alpha=band_alpha(character, cfg))


def rested_crop(crop_full: np.ndarray, generated_crop: np.ndarray | None, mouth: RestingMouth,
                weight: float) -> np.ndarray:
    """The crop to paste for a frame with rest weight `weight` in (0, 1].

    crop_full: the template's own (S+2m)^2 crop; generated_crop: the same with the generated inner
    S x S (not used, and may be None, at weight 1). Result: (1 - w) * generated + w * (template with
    the resting band), as uint8.
    """
    real = crop_full.astype(np.float32)
    rested = real + mouth.alpha * (mouth.crop.astype(np.float32) - real)
    if weight >= 1.0:
        out = rested
    else:
        if generated_crop is None:
            raise ValueError(f"a rest weight of {weight} < 1 needs the generated crop")
        out = generated_crop.astype(np.float32) * (1.0 - weight) + rested * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
