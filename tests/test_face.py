"""lipsync.face: geometry on synthetic images, landmarks + crop boxes on real media."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipsync.config import GeometryConfig
from lipsync.face import geometry as geo
from lipsync.face import preview
from lipsync.models import model_preset

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
OBAMA = MEDIA / "edtalk_uncrop_Obama.mp4"
CFG = GeometryConfig()
S = 320
MARGIN = model_preset("st2d-328").crop_margin
CROP_FULL = S + 2 * MARGIN  # 328


def natural_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient plus blurred noise: image-like, with texture but no aliasing."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([60 + 120 * xx / w, 40 + 150 * yy / h, 200 - 100 * (xx + yy) / (w + h)], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 12, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


# --- crop / paste-back ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box",
    [
        (130, 150, 316, 336),  # inside the frame, Obama-like size (186 px -> 328 enlarges)
        (40, 60, 440, 460),  # inside, 400 px (328 shrinks)
        (-40, 300, 160, 500),  # past the left and bottom edges
    ],
)
def test_crop_then_paste_identity_returns_the_frame(box):
    frame = natural_image(450, 480)
    crop_full = geo.crop(frame, box, CROP_FULL)
    assert crop_full.shape == (CROP_FULL, CROP_FULL, 3) and crop_full.dtype == np.uint8

    pasted = geo.paste_back(frame, box, crop_full, CFG)  # the "model" returned its input

    diff = np.abs(pasted.astype(np.int16) - frame.astype(np.int16))
    assert diff.mean() < 1.0
    assert diff.max() <= 6
    assert pasted is not frame and pasted.shape == frame.shape


def test_crop_pads_by_edge_replication():
    frame = natural_image(100, 120)
    box = (-20, 70, 40, 130)  # 60 px, past the left and bottom edges
    expected = cv2.copyMakeBorder(frame[70:100, 0:40], 0, 30, 20, 0, cv2.BORDER_REPLICATE)
    assert np.array_equal(geo.crop(frame, box, 60), expected)
    # A box that misses the frame entirely still gives a valid crop of the nearest edge pixel.
    far = geo.crop(frame, (200, 200, 210, 210), 16)
    assert far.shape == (16, 16, 3) and np.all(far == frame[-1, -1])
    left = geo.crop(frame, (-30, 10, -10, 30), 20)  # left of the frame, rows 10..29
    assert np.array_equal(left, np.repeat(frame[10:30, :1], 20, axis=1))
    # A crop at its own size is a copy, never a view into the caller's frame.
    same = geo.crop(frame, (0, 0, 50, 50), 50)
    assert np.array_equal(same, frame[:50, :50]) and not np.shares_memory(same, frame)


def test_crop_rejects_non_square_boxes():
    with pytest.raises(ValueError, match="square"):
        geo.crop(natural_image(50, 50), (0, 0, 20, 30), 16)


def test_paste_constant_crop_fills_centre_and_leaves_outside_untouched():
    frame = natural_image(300, 320)
    x0, y0, x1, y1 = box = (60, 50, 260, 250)
    colour = np.array([10, 250, 30], np.uint8)
    crop_full = np.broadcast_to(colour, (CROP_FULL, CROP_FULL, 3)).copy()

    pasted = geo.paste_back(frame, box, crop_full, CFG)

    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(pasted[outside], frame[outside])
    ramp = round(CFG.feather * (x1 - x0))
    assert np.all(pasted[y0 + ramp : y1 - ramp, x0 + ramp : x1 - ramp] == colour)
    # Feathered: on a flat frame, each pixel along a row through the middle moves from the old
    # colour (at the box border) monotonically to the pasted colour (at the centre).
    flat = np.full_like(frame, 200)
    row = geo.paste_back(flat, box, crop_full, CFG)[(y0 + y1) // 2, x0 : (x0 + x1) // 2].astype(int)
    dist = np.abs(row - colour).sum(axis=1)
    assert np.all(np.diff(dist) <= 0) and dist[-1] == 0
    assert dist[0] > 0.95 * np.abs(200 - colour.astype(int)).sum()  # the border is almost the old frame
    assert len(np.unique(dist)) > ramp // 2  # a ramp, not a step


def test_feather_mask_is_monotone_from_border_to_centre():
    mask = geo.feather_mask(200, CFG.feather)[:, :, 0]
    half = mask[100, :100]
    assert np.all(np.diff(half) >= 0) and half[0] < 0.01 and half[-1] == 1.0
    assert np.allclose(mask, mask.T) and np.allclose(mask, mask[::-1, ::-1])
    assert geo.feather_mask(200, CFG.feather) is geo.feather_mask(200, CFG.feather)  # cached
    assert np.all(geo.feather_mask(50, 0.0) == 1.0)


def test_paste_writes_only_the_in_frame_part_of_an_overhanging_box():
    frame = natural_image(120, 100)
    box = (60, -30, 160, 70)  # past the top and right edges
    crop_full = np.full((CROP_FULL, CROP_FULL, 3), 255, np.uint8)
    out = frame.copy()
    result = geo.paste_back(frame, box, crop_full, CFG, out=out)
    assert result is out and out.shape == frame.shape
    assert np.array_equal(out[70:], frame[70:]) and np.array_equal(out[:, :60], frame[:, :60])
    assert np.all(out[10:40, 75:95] == 255)  # well inside the box
    # Entirely outside: nothing changes.
    assert np.array_equal(geo.paste_back(frame, (200, 200, 300, 300), crop_full, CFG), frame)


# --- model input ---------------------------------------------------------------------------------


def test_inner_and_mask_lower_face_zero_exactly_the_configured_rectangle():
    crop_full = natural_image(CROP_FULL, CROP_FULL) | 1  # no zero pixels to start with
    img = geo.inner(crop_full, MARGIN)
    assert img.shape == (S, S, 3)
    assert np.array_equal(img, crop_full[4:-4, 4:-4])

    masked = geo.mask_lower_face(img, CFG)
    x0, y0, x1, y1 = geo.mask_rect(S, CFG)
    assert (x0, y0, x1, y1) == (5, 5, 315, 310)  # the seed's cv2.rectangle((5, 5, 310, 305))
    inside = np.zeros((S, S), bool)
    inside[y0:y1, x0:x1] = True
    assert np.all(masked[inside] == 0)
    assert np.array_equal(masked[~inside], img[~inside])
    assert np.all(img != 0)  # the input was not modified

    other = GeometryConfig(mask_box=(0.25, 0.5, 0.75, 1.0))
    assert geo.mask_rect(160, other) == (40, 80, 120, 160)
    assert np.count_nonzero(np.all(geo.mask_lower_face(img, other) == 0, axis=2)) == 160 * 160


# --- bounce --------------------------------------------------------------------------------------


def test_bounce_walks_forward_then_backward():
    n = 5
    seq = [geo.bounce(k, n) for k in range(20)]
    assert seq[:9] == [0, 1, 2, 3, 4, 3, 2, 1, 0]
    assert seq[8:17] == seq[:9]  # period 2n - 2 = 8
    assert all(abs(a - b) == 1 for a, b in itertools.pairwise(seq))
    for n in (2, 3, 7, 250):
        vals = [geo.bounce(k, n) for k in range(5 * n)]
        assert min(vals) == 0 and max(vals) == n - 1
        assert geo.bounce(10**9 + 3, n) == geo.bounce((10**9 + 3) % (2 * n - 2), n)  # pure in k


def test_bounce_small_n_and_invalid_arguments():
    assert [geo.bounce(k, 1) for k in range(5)] == [0] * 5
    assert [geo.bounce(k, 2) for k in range(5)] == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError):
        geo.bounce(0, 0)
    with pytest.raises(ValueError):
        geo.bounce(-1, 4)


# --- landmarks over time -------------------------------------------------------------------------


def test_fill_missing_interpolates_linear_runs_and_holds_the_ends():
    rng = np.random.default_rng(1)
    start, velocity = rng.uniform(0, 400, (468, 2)), rng.uniform(-3, 3, (468, 2))
    truth = [(start + k * velocity).astype(np.float32) for k in range(12)]
    seen = [None, None] + truth[2:4] + [None, None, None] + truth[7:10] + [None, None]

    filled, missing = geo.fill_missing(seen)

    assert missing == [0, 1, 4, 5, 6, 10, 11]
    assert filled.shape == (12, 468, 2) and filled.dtype == np.float32
    np.testing.assert_allclose(filled[2:10], np.stack(truth[2:10]), atol=1e-3)
    assert np.array_equal(filled[0], truth[2]) and np.array_equal(filled[1], truth[2])
    assert np.array_equal(filled[11], truth[9])


def test_fill_missing_rejects_all_missing_and_mixed_shapes():
    with pytest.raises(ValueError, match="no face"):
        geo.fill_missing([None, None])
    with pytest.raises(ValueError):
        geo.fill_missing([np.zeros((468, 2)), np.zeros((10, 2))])


def test_smooth_keeps_constants_and_linear_motion_and_reduces_noise():
    const = np.full((30, 468, 2), 123.5, np.float32)
    assert np.allclose(geo.smooth(const, 5), const)

    linear = (np.arange(30, dtype=np.float32)[:, None, None] * np.ones((1, 468, 2), np.float32)) * 2.0
    np.testing.assert_allclose(geo.smooth(linear, 5), linear, atol=1e-4)  # centred, also at the ends

    rng = np.random.default_rng(2)
    noisy = rng.normal(0, 3, (200, 468, 2)).astype(np.float32)
    smoothed = geo.smooth(noisy, 5)
    assert smoothed.shape == noisy.shape
    assert smoothed[2:-2].var() < 0.3 * noisy.var()  # ~1/5 for white noise
    assert np.array_equal(geo.smooth(noisy, 1), noisy)
    with pytest.raises(ValueError):
        geo.smooth(noisy, 4)


# --- crop boxes ----------------------------------------------------------------------------------


def test_crop_box_follows_the_seed_rule():
    lms = np.zeros((468, 2), np.float32)
    lms[CFG.jaw_left] = (100.4, 250)
    lms[CFG.jaw_right] = (290.2, 240)
    lms[CFG.nose_bridge] = (200, 180.6)
    x0, y0, x1, y1 = geo.crop_box(lms, CFG)
    assert (x0, y0) == (100, 181) and x1 - x0 == y1 - y0 == 190
    boxes = geo.crop_boxes(np.stack([lms, lms + 10]), CFG)
    assert boxes.shape == (2, 4) and np.array_equal(boxes[1], boxes[0] + 10)
    wide = geo.crop_box(lms, GeometryConfig(box_expand=1.2))
    assert wide[2] - wide[0] == 228 and abs((wide[0] + wide[2]) / 2 - (x0 + x1) / 2) <= 0.5


# --- preview -------------------------------------------------------------------------------------


def test_contact_sheet_grid_and_png(tmp_path):
    imgs = [np.full((40, 40, 3), 40 * i, np.uint8) for i in range(5)]
    sheet = preview.contact_sheet(imgs, cols=3, cell=64)
    assert sheet.shape == (128, 192, 3)
    assert np.all(sheet[64:, 128:] == 0)  # the sixth cell is empty
    assert np.all(sheet[40, 100] == 40) and np.all(sheet[100, 100] == 160)
    assert sheet[:20, :20].max() > 200 and sheet[40:64, :40].max() == 0  # white label "0" top-left
    path = tmp_path / "sheet.png"
    preview.write_png(path, sheet)
    assert np.array_equal(cv2.imread(str(path)), sheet)


# --- real media ----------------------------------------------------------------------------------


def _decode_frames(path: Path, count: int) -> list[np.ndarray]:
    from lipsync.io.media import iter_video_frames

    return list(itertools.islice(iter_video_frames(path, fps=25, pix_fmt="bgr24"), count))


@pytest.mark.media
@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype")
@pytest.mark.skipif(not OBAMA.exists(), reason=f"real media not found at {MEDIA}")
def test_obama_landmarks_and_crop_boxes():
    from lipsync.face.landmarks import FaceMeshDetector

    frames = _decode_frames(OBAMA, 30)
    assert len(frames) == 30 and frames[0].shape == (450, 450, 3)
    with FaceMeshDetector(min_detection_confidence=0.5, min_tracking_confidence=0.5) as detector:
        found = [detector.detect(frame) for frame in frames]
    assert all(lms is not None for lms in found)
    lms, missing = geo.fill_missing(found)
    assert missing == [] and lms.shape == (30, 468, 2) and lms.dtype == np.float32
    lms = geo.smooth(lms, CFG.smooth_window)

    boxes = geo.crop_boxes(lms, CFG)
    side = boxes[:, 2] - boxes[:, 0]
    assert np.array_equal(side, boxes[:, 3] - boxes[:, 1])
    assert np.all((side >= 150) & (side <= 230))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.all((centre >= 0) & (centre < 450))
    for k in (13, 14, 61, 291, 152):  # inner lips, mouth corners, chin
        pts = lms[:, k]
        assert np.all((pts[:, 0] > boxes[:, 0]) & (pts[:, 0] < boxes[:, 2])), k
        assert np.all((pts[:, 1] > boxes[:, 1]) & (pts[:, 1] < boxes[:, 3])), k
    # The chin sits in the lower part of the crop with room below it (docs/GEOMETRY.md: ~0.77 of the side).
    chin_rel = (lms[:, 152, 1] - boxes[:, 1]) / side
    assert np.all((chin_rel > 0.6) & (chin_rel < 0.92))

    # Round trip on a real frame: crop -> identity model -> paste-back.
    pasted = geo.paste_back(frames[0], boxes[0], geo.crop(frames[0], boxes[0], CROP_FULL), CFG)
    assert np.abs(pasted.astype(np.int16) - frames[0]).mean() < 1.0


@pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype")
def test_detector_finds_no_face_in_a_blank_image_and_closes():
    from lipsync.face.landmarks import FaceMeshDetector

    detector = FaceMeshDetector()
    with detector:
        assert detector.detect(np.full((128, 128, 3), 127, np.uint8)) is None
        with pytest.raises(ValueError):
            detector.detect(np.zeros((128, 128), np.uint8))
    with pytest.raises(RuntimeError, match="closed"):
        detector.detect(np.zeros((128, 128, 3), np.uint8))
