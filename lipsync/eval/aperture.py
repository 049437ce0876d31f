"""How much the mouth opens on speech the character never heard, against its real footage.

The held-out evaluation cannot see a mumbling dub: there the reference input shows the true mouth
of the same frame. Here the character dubs new speech (the render path, as shipped) and the inner-lip
aperture of every output frame (lipsync.face.geometry.mouth_aperture, relative to the inter-ocular
distance) is compared with that of the character's own template frames, both detected the same way
(MediaPipe Face Mesh, one tracker per video, no smoothing). No ground truth is needed; what it
cannot tell is whether the mouth opens at the *right* moments (that is the sync score's job).

Statistics per side: mean, standard deviation, 5th and 95th percentiles, mean frame-to-frame
motion |a[k+1] - a[k]|; and for the dub: std and mean as ratios to the real footage's, and the
share of its frames whose aperture lies inside the real footage's 5th-95th percentile range.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lipsync.bundle import TEMPLATES_DIR, Character, load_character
from lipsync.config import RenderConfig
from lipsync.data import layout
from lipsync.errors import InputError
from lipsync.face import geometry
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.io import media, storage
from lipsync.render.paint import prepare_for_inference
from lipsync.render.pipeline import render
from lipsync.render.preview import template_boxes
from lipsync.runtime import resolve_device


def apertures_of(frames: Iterable[np.ndarray]) -> np.ndarray:
    """Inner-lip aperture of each frame with a detected face (frames without one are left out)."""
    values = []
    with FaceMeshDetector() as detector:
        for frame in frames:
            lms = detector.detect(frame)
            if lms is not None:
                values.append(float(geometry.mouth_aperture(lms)))
    return np.asarray(values, np.float32)


def aperture_stats(a: np.ndarray) -> dict:
    if a.size == 0:
        raise ValueError("no frame with a detected face")
    return {"frames": int(a.size), "mean": float(a.mean()), "std": float(a.std()),
            "p5": float(np.percentile(a, 5)), "p95": float(np.percentile(a, 95)),
            "motion": float(np.abs(np.diff(a)).mean()) if a.size > 1 else 0.0}


def compare_apertures(dub: np.ndarray, real: np.ndarray) -> dict:
    """The dub's aperture statistics against the real footage's (see the module docstring)."""
    d, r = aperture_stats(dub), aperture_stats(real)
    inside = float(((dub >= r["p5"]) & (dub <= r["p95"])).mean())
    return {"dub": d, "real": r,
            "std_ratio": d["std"] / r["std"] if r["std"] > 0 else float("nan"),
            "mean_ratio": d["mean"] / r["mean"] if r["mean"] > 0 else float("nan"),
            "motion_ratio": d["motion"] / r["motion"] if r["motion"] > 0 else float("nan"),
            "inside_real_range": inside}


@functools.lru_cache(maxsize=4)
def footage_apertures(character_uri: str) -> np.ndarray:
    """Apertures of the character's real footage: its template frames in order, read alone (no
    model is loaded); measured once per process and character."""
    n = len(template_boxes(character_uri))
    frames_dir = storage.join(str(character_uri), TEMPLATES_DIR, layout.FRAMES_DIR)

    def frames():
        for t in range(n):
            with storage.local_copy(storage.join(frames_dir, f"{t}.jpg")) as local:
                yield media.read_image(local)

    return apertures_of(frames())


def video_apertures(video_uri: str, named: str) -> np.ndarray:
    """Apertures of every frame of a dub; InputError naming `named` when no frame shows a face."""
    with storage.local_copy(video_uri) as local:
        dub = apertures_of(media.iter_video_frames(local))
    if dub.size == 0:
        raise InputError(named, "no face was detected in any frame of the dub")
    return dub


def dub_mouth_stats(video_uri: str, character_uri: str) -> dict:
    """`compare_apertures` of a published dub against its character's footage."""
    return compare_apertures(video_apertures(video_uri, video_uri), footage_apertures(str(character_uri)))


def unseen_speech(character_uri: str, audio_uri: str, render_cfg: RenderConfig = RenderConfig(), *,
                  dub_out: str | None = None, character: Character | None = None) -> dict:
    """Dub `audio_uri` with the character and compare the dub's mouth aperture with its footage's.

    `dub_out` keeps the dub (path or URI); otherwise it is rendered into a temporary file.
    """
    storage.check_readable(audio_uri)
    if character is None:
        character = load_character(character_uri, device=resolve_device(render_cfg.device))
        prepare_for_inference(character, render_cfg)
    with tempfile.TemporaryDirectory(prefix="lipsync-aperture-") as tmp:
        out = dub_out or str(Path(tmp) / "dub.mp4")
        result = render(character_uri, audio_uri, out, render_cfg, overwrite=True, character=character)
        dub = video_apertures(out, audio_uri)
    report = compare_apertures(dub, footage_apertures(str(character_uri)))
    report.update(audio=audio_uri, frames_rendered=result.frames, silence=render_cfg.silence,
                  resting_frames=result.stats.resting)
    return report
