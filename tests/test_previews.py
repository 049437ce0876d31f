"""Issue 15 items 6 and 11: render warns about an undertrained character; render's --preview PNG;
the prepare contact sheet marks interpolated (faceless) frames and outlines the mask.

One real 30-frame Obama clip with two frames blacked out (no face: prepare interpolates them);
a tiny untrained character from it, whose bundle.json records held-out numbers of an undertrained
or a trained run (bundle.json is not part of the weights' version, so the test edits it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from clips import OBAMA
from lipsync.bundle import BUNDLE_FILE, save_bundle, undertrained, undertrained_warning
from lipsync.config import AudioConfig, GeometryConfig, PrepareConfig
from lipsync.data import layout
from lipsync.data.prepare import prepare, preview_frames
from lipsync.face.preview import INTERPOLATED_BGR, MASK_BGR
from lipsync.io import media
from lipsync.models import build_generator, build_syncnet
from lipsync.models.audio_encoder import AudioEncoder
from lipsync.render.preview import PREVIEW_HEIGHT, preview_indices

pytestmark = pytest.mark.media
FACELESS = (12, 13)
CELL = 160  # prepare's contact-sheet cell
UNDERTRAINED = {"val_l1": 0.081, "val_l1_reference_copy": 0.079}
TRAINED = {"val_l1": 0.044, "val_l1_reference_copy": 0.077}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, media_dir) -> dict:
    """30 frames of the Obama clip, frames 12 and 13 black, prepared with a contact sheet."""
    root = tmp_path_factory.mktemp("faceless")
    media.write_wav(root / "clip.wav", media.read_audio(media_dir / OBAMA)[: 30 * 16000 // 25])
    with media.VideoWriter(root / "clip.mp4", 450, 450, media.EncodeSettings(crf=12), audio=root / "clip.wav") as w:
        for i, frame in enumerate(media.iter_video_frames(media_dir / OBAMA)):
            if i == 30:
                break
            w.write(np.zeros_like(frame) if i in FACELESS else frame)
    prepare(str(root / "clip.mp4"), "faceless", str(root / "ds"), PrepareConfig(), preview_uri=str(root / "sheet.png"))
    return {"ds": root / "ds", "sheet": root / "sheet.png"}


@pytest.fixture(scope="module")
def bundles(dataset, tmp_path_factory) -> dict[str, Path]:
    """The same tiny untrained character twice: bundle.json recording undertrained / trained numbers."""
    root = tmp_path_factory.mktemp("bundles")
    torch.manual_seed(0)
    save_bundle(str(root / "under"), name="faceless", preset="tiny", generator=build_generator("tiny"),
                audio_encoder=AudioEncoder(), syncnet=build_syncnet("tiny"), audio=AudioConfig(),
                geometry=GeometryConfig(), dataset_dir=str(dataset["ds"]), train_info={"steps": 0, **UNDERTRAINED})
    shutil.copytree(root / "under", root / "trained")
    info = json.loads((root / "trained" / BUNDLE_FILE).read_text())
    info["train"].update(TRAINED)
    (root / "trained" / BUNDLE_FILE).write_text(json.dumps(info))
    return {"under": root / "under", "trained": root / "trained"}


@pytest.fixture(scope="module")
def speech(tmp_path_factory, media_dir) -> Path:
    """1 s of real speech: 25 output frames."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    media.write_wav(path, media.read_audio(media_dir / "sadtalker_RD_Radio34_002.wav")[:16000])
    return path


def lipsync_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipsync_cli.main", *args], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


# --- item 6: undertrained -----------------------------------------------------------------------


def test_undertrained_check_is_relative_to_the_reference_copy_baseline():
    assert undertrained(UNDERTRAINED) == (0.081, 0.079)
    assert undertrained({"val_l1": 0.075, "val_l1_reference_copy": 0.079}) is not None  # below, not clearly
    assert undertrained(TRAINED) is None
    assert undertrained({"steps": 0}) is None and undertrained({}) is None  # nothing recorded: nothing said
    assert undertrained_warning("b", UNDERTRAINED) == (
        "b looks undertrained: held-out L1 0.081 vs 0.079 for copying the reference; train longer (--steps)")


def test_render_warns_once_for_an_undertrained_bundle_and_writes_a_preview(bundles, speech, tmp_path):
    out, png = tmp_path / "under.mp4", tmp_path / "preview.png"
    proc = lipsync_cli("render", "--character", str(bundles["under"]), "--audio", str(speech), "-o", str(out),
                       "--device", "cpu", "--preview", str(png))
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stderr.split())
    expected = (f"warning: {bundles['under']} looks undertrained: held-out L1 0.081 vs 0.079 for copying the "
                f"reference; train longer (--steps)")
    assert text.count(expected) == 1, proc.stderr
    assert media.count_video_frames(out) == 25
    # item 11: 4 evenly spaced frames, one row each: the 450x450 frame at 240 px, then the painted crop
    image = cv2.imread(str(png))
    assert image.shape == (4 * PREVIEW_HEIGHT, 240 + PREVIEW_HEIGHT, 3)
    assert preview_indices(25) == [0, 8, 16, 24]
    rows = image.reshape(4, PREVIEW_HEIGHT, -1, 3)
    assert all(row[:, 240:].std() > 10 for row in rows)  # every row holds a crop, not an empty panel
    assert f"preview {png}" in text


def test_render_of_a_trained_bundle_prints_no_warning(bundles, speech, tmp_path):
    proc = lipsync_cli("render", "--character", str(bundles["trained"]), "--audio", str(speech),
                       "-o", str(tmp_path / "trained.mp4"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "undertrained" not in proc.stderr and "warning" not in proc.stderr.lower(), proc.stderr


# --- item 11: the prepare contact sheet ---------------------------------------------------------


def _right_edge(tile: np.ndarray, width: int = 2) -> np.ndarray:
    """The rightmost `width` columns of a tile, as (n, 3) (the labels sit at the left)."""
    return tile[:, -width:].reshape(-1, 3)


def test_contact_sheet_marks_interpolated_frames_and_outlines_the_mask(dataset):
    meta = json.loads((dataset["ds"] / layout.META_FILE).read_text())
    assert meta["frames_without_face"] == list(FACELESS)
    shown = preview_frames(meta["n_frames"], meta["frames_without_face"])
    assert set(FACELESS) <= set(shown) and len(shown) == 16
    sheet = cv2.imread(str(dataset["sheet"]))
    assert sheet.shape == (4 * CELL, 4 * CELL, 3)
    red, green = np.array(INTERPOLATED_BGR), np.array(MASK_BGR)
    for i, frame in enumerate(shown):
        r, c = divmod(i, 4)
        tile = sheet[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL].astype(int)
        red_share = (np.abs(_right_edge(tile) - red).sum(axis=1) < 60).mean()  # PNG is lossless; allow anti-aliasing
        if frame in FACELESS:
            assert red_share > 0.9, (frame, red_share)
        else:
            assert red_share < 0.05, (frame, red_share)
            # the mask outline: green pixels along the row at mask_box's top edge (5/320 of the side)
            y0 = round(GeometryConfig().mask_box[1] * CELL)
            assert (np.abs(tile[y0, CELL // 4:3 * CELL // 4] - green).sum(axis=1) < 60).mean() > 0.9, frame


def test_dub_dry_run_names_an_undertrained_character_once(bundles, speech, tmp_path):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("id,character,audio\n" + "".join(f"{i},{bundles[b]},{speech}\n" for i, b in
                                                         (("a", "under"), ("b", "under"), ("c", "trained"))))
    proc = lipsync_cli("dub", str(catalog), "--output-root", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("items 3: 3 to render"), proc.stdout
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [f"warning: {undertrained_warning(str(bundles['under']), UNDERTRAINED)}"], proc.stdout
