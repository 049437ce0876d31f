"""Evaluation: metric known answers, the sync offset search, and `lipsync eval` end to end."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from clips import OBAMA, prepare_clip
from lipsync.config import TrainConfig
from lipsync.eval import metrics
from lipsync.eval.metrics import lip_indices, lip_points, lmd, mouth_box, psnr, ssim, sync_score


def _texture(seed: int = 0, size: int = 96) -> np.ndarray:
    """A smooth random colour texture (blurred noise), so small shifts change it a little, large ones more."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


# --- image metrics -----------------------------------------------------------------------------------


def test_identical_images_are_perfect():
    img = _texture()
    assert psnr(img, img.copy()) == float("inf")
    assert ssim(img, img.copy()) == pytest.approx(1.0, abs=1e-9)


def test_psnr_known_value_and_shift_lowers_it():
    a = np.full((32, 32, 3), 100, np.uint8)
    b = np.full((32, 32, 3), 110, np.uint8)  # MSE = 100
    assert psnr(a, b) == pytest.approx(10 * np.log10(255.0**2 / 100.0))
    img = _texture(1)
    scores = [psnr(img[:, 8:-8], img[:, 8 + s:img.shape[1] - 8 + s]) for s in (0, 1, 3)]
    assert scores[0] == float("inf") and scores[1] > scores[2] > 10.0
    sims = [ssim(img[:, 8:-8], img[:, 8 + s:img.shape[1] - 8 + s]) for s in (0, 1, 3)]
    assert sims[0] > sims[1] > sims[2]


def test_image_metrics_reject_mismatched_or_tiny_images():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


# --- lips --------------------------------------------------------------------------------------------


def test_lip_indices_are_the_face_mesh_lips():
    idx = lip_indices()
    assert len(idx) == 40 and len(set(idx.tolist())) == 40
    # mouth corners (61, 291), upper/lower outer lip centre (0, 17), inner lip centre (13, 14)
    assert {0, 13, 14, 17, 61, 291} <= set(idx.tolist())
    assert 1 not in idx and 234 not in idx  # nose tip, jaw


def test_lip_points_are_in_crop_pixels():
    lms = np.zeros((468, 2), np.float32)
    lms[lip_indices()] = (150.0, 175.0)
    pts = lip_points(lms, (100, 100, 200, 200), 320)  # 100 px box -> 320 px crop
    assert pts.shape == (40, 2)
    np.testing.assert_allclose(pts, np.tile([[160.0, 240.0]], (40, 1)))


def test_lmd_known_answers():
    real = np.array([[[0.0, 0.0], [0.0, 10.0]]])  # a mouth 10 px open
    assert lmd(real, real) == 0.0
    assert lmd(real + [37.0, -5.0], real) == pytest.approx(0.0)  # translation is centred away
    wide = np.array([[[0.0, 0.0], [0.0, 20.0]]])  # 20 px open: each point 5 px off after centring
    assert lmd(wide, real) == pytest.approx(5.0)
    assert lmd(np.concatenate([real, wide]), np.concatenate([real, real])) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        lmd(real, wide[:, :1])


def test_mouth_box_pads_and_clips():
    pts = np.array([[100.0, 200.0], [140.0, 230.0]])
    assert mouth_box(pts, 320, 0.0) == (100, 200, 140, 230)
    assert mouth_box(pts, 320, 0.1) == (68, 168, 172, 262)
    assert mouth_box(np.array([[0.0, 300.0], [50.0, 330.0]]), 320, 0.05) == (0, 284, 66, 320)


# --- sync offset search ------------------------------------------------------------------------------


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.abs(), dim=1)


def test_score_from_embeddings_finds_a_known_shift():
    torch.manual_seed(0)
    n_audio, shift, d = 60, 3, 32
    audio_emb = _unit(torch.randn(n_audio, d))
    frames = np.arange(20, 40)
    face_emb = audio_emb[torch.from_numpy(frames + shift)]  # face k looks like the audio of frame k + 3
    curve = metrics.offset_curve(face_emb, audio_emb, frames, np.arange(n_audio), max_offset=10)
    score = metrics.score_from_curve(curve, 10)
    assert score.offset == shift
    assert score.distance == pytest.approx(0.0, abs=1e-6)
    assert score.confidence > 0.1
    assert score.offsets == list(range(-10, 11)) and len(score.curve) == 21


def test_offsets_without_audio_are_left_out():
    emb = _unit(torch.randn(5, 8))
    curve = metrics.offset_curve(emb, emb, np.arange(5), np.arange(5), max_offset=6)
    assert np.isnan(curve[0]) and np.isnan(curve[-1])  # offsets -6 and +6 reach no audio frame
    score = metrics.score_from_curve(curve, 6)
    assert score.offset == 0 and score.curve[0] is None


class CodeSyncNet(nn.Module):
    """An oracle SyncNet: a face's code is its lower half's brightness, a mel window's code its mean;
    embeddings are one-hot codes, so a face matches exactly the audio that carries its code."""

    def __init__(self, codes: int = 16):
        super().__init__()
        self.config = SimpleNamespace(face_size=(8, 16))
        self.codes = codes
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def _one_hot(self, value: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(value.round().long().clamp(0, self.codes - 1), self.codes).float()

    def forward(self, face: torch.Tensor, mel: torch.Tensor):
        face_code = face.mean(dim=(1, 2, 3)) * (self.codes - 1)
        return self._one_hot(face_code), self._one_hot(mel.mean(dim=(1, 2, 3)))


def test_sync_score_pairs_faces_with_their_audio_through_the_model():
    rng = np.random.default_rng(0)
    codes = CodeSyncNet(16)
    n_audio, shift, audio_offset = 80, -4, -2
    audio_code = np.concatenate([rng.permutation(16) for _ in range(n_audio // 16)])  # (80,)
    frames = np.arange(50, 70)
    # face k carries the code of audio frame k + audio_offset + shift
    face_code = audio_code[frames + audio_offset + shift]
    faces = torch.zeros(len(frames), 3, 32, 32)
    faces[:, :, 16:, :] = torch.from_numpy(face_code / 15.0).float()[:, None, None, None]

    def windows_of(audio_frames):
        return np.broadcast_to(audio_code[audio_frames][:, None, None], (len(audio_frames), 80, 16)).astype(np.float32)

    score = sync_score(codes, faces, frames, windows_of, n_audio, max_offset=10, audio_offset=audio_offset,
                       batch_size=7)
    assert score.offset == shift and score.distance == pytest.approx(0.0)
    assert score.confidence == pytest.approx(1.0)  # every other offset pairs different codes
    unshifted = sync_score(codes, faces, frames + shift, windows_of, n_audio, max_offset=10,
                           audio_offset=audio_offset)
    assert unshifted.offset == 0


# --- with a SyncNet trained on real data, and `lipsync eval` end to end --------------------------------

CLIP_FRAMES = 50  # 2 s of the Obama clip


@pytest.fixture(scope="module")
def one_thread():
    """The SyncNet trains ~10x faster with one thread on a loaded 2-core machine (no oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip_dataset(tmp_path_factory, media_dir) -> Path:
    """The first 2 s of the Obama clip, prepared (50 frames)."""
    return prepare_clip(tmp_path_factory.mktemp("eval_ds"), media_dir / OBAMA, CLIP_FRAMES, "obama2s")


@pytest.fixture(scope="module")
def trained(clip_dataset, one_thread):
    """Stage 1 of lipsync.train (SyncNet only) on every frame of the clip: ~300 steps, ~40 s on 2 loaded cores."""
    from lipsync.config import TrainConfig
    from lipsync.train import Trainer
    from lipsync.train.context import RunContext

    cfg = TrainConfig(preset="tiny", syncnet_steps=300, generator_steps=0, syncnet_batch_size=8, syncnet_lr=3e-3,
                      val_fraction=0.0, device="cpu", log_every=1000, val_every=1000, checkpoint_every=1000)
    trainer = Trainer(cfg, clip_dataset, RunContext())
    trainer.setup()
    trainer.train()
    return trainer


@pytest.mark.media
def test_trained_syncnet_finds_the_audio_shift(trained):
    from lipsync.data.inputs import to_chw

    frames = trained.frames
    n = frames.n_frames
    indices = np.arange(n)
    faces = torch.from_numpy(np.stack([to_chw(frames.model_view(k)) for k in indices]))
    found = {}
    for shift in (0, 3, -6):
        # audio delayed by `shift` frames: audio frame j carries what was said at frame j - shift
        def windows_of(audio_frames, shift=shift):
            return frames.mel_windows[np.clip(audio_frames - shift, 0, n - 1)]

        score = sync_score(trained.syncnet, faces, indices, windows_of, n, max_offset=10)
        assert score.confidence > 0.05, score
        found[shift] = score.offset
    # Shifting the audio moves the best offset by the shift. The mel windows of neighbouring frames
    # overlap (each spans 5 frames), so allow one frame; a briefly trained SyncNet's own alignment may
    # sit a couple of frames off its training pairing (window k starts AT frame k; its centre is k + 2).
    assert abs(found[0]) <= 3, found
    assert abs(found[3] - (found[0] + 3)) <= 1 and abs(found[-6] - (found[0] - 6)) <= 1, found


@pytest.fixture(scope="module")
def tiny_bundle(trained, clip_dataset, tmp_path_factory) -> str:
    """A tiny character: untrained generator, the SyncNet trained above (its audio tower = the features)."""
    from lipsync.bundle import save_bundle
    from lipsync.config import AudioConfig, GeometryConfig

    out = tmp_path_factory.mktemp("bundle") / "obama_tiny"
    save_bundle(str(out), name="obama2s", preset="tiny", generator=trained.generator.eval(),
                audio_encoder=trained.syncnet.audio_encoder, syncnet=trained.syncnet, audio=AudioConfig(),
                geometry=GeometryConfig(), dataset_dir=clip_dataset, train_info={"syncnet_steps": 300})
    return str(out)


class CopyReference(nn.Module):
    """A generator that paints the reference crop back unchanged (the real frame, here): ignores audio."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return x[:, :3]  # (N, 3, S, S): the reference channels


@pytest.mark.media
def test_evaluate_known_answer_with_a_copying_generator(tiny_bundle, clip_dataset, tmp_path):
    from lipsync.bundle import load_character
    from lipsync.eval.evaluate import evaluate

    character = load_character(tiny_bundle, device="cpu")
    character.generator = CopyReference()
    result = evaluate(clip_dataset, tiny_bundle, str(tmp_path / "m.json"), max_frames=4, character=character)
    m = result["metrics"]
    # the last 10% (the default val_fraction: this bundle records no training config): frames 45..49
    assert result["frames"] == {"evaluated": 4, "first": 45, "last": 48, "held_out_fraction": 0.1}
    assert result["pairing"] == {"held_out_fraction": 0.1, "sync_audio_offset": -2, "source": "defaults"}
    gen, shuf, tmpl = m["generated"], m["shuffled"], m["template"]
    # only a resize round trip of the crop separates the output from the real frame
    assert gen["psnr_full"] > 35 and gen["ssim_full"] > 0.98 and gen["ssim_mouth"] > 0.9
    assert gen["lmd"] < 1.5 and gen["lmd_frames"] == 4
    assert {k: v for k, v in shuf.items() if k != "sync_own_audio"} == gen  # the copy ignores the audio
    # the template baseline shows other frames (0..3, a dub's first templates): a different mouth
    assert tmpl["lmd"] > gen["lmd"] + 1.0 and tmpl["psnr_mouth"] < gen["psnr_mouth"]
    assert abs(gen["sync"]["distance"] - m["real"]["sync"]["distance"]) < 0.02


@pytest.mark.media
def test_eval_cli_writes_every_field_and_the_strip(tiny_bundle, clip_dataset, tmp_path):
    import json

    import cv2
    from typer.testing import CliRunner

    from lipsync_cli.main import app

    out, strip = tmp_path / "eval.json", tmp_path / "strip.png"
    result = CliRunner().invoke(app, ["eval", "--dataset", str(clip_dataset), "--character", tiny_bundle,
                                      "--json", str(out), "--strip", str(strip), "--max-frames", "3",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "| generated |" in result.output
    data = json.loads(out.read_text())
    assert data["frames"]["evaluated"] == 3 and data["character"]["preset"] == "tiny"
    for name in ("generated", "shuffled", "template"):
        row = data["metrics"][name]
        for key in ("psnr_full", "ssim_full", "psnr_mouth", "ssim_mouth", "lmd", "lmd_frames"):
            assert isinstance(row[key], (int, float)), (name, key, row[key])
        sync = row["sync"]
        assert 0.0 <= sync["distance"] <= 1.0 and -10 <= sync["offset"] <= 10 and len(sync["curve"]) == 21
    assert data["metrics"]["shuffled"]["sync_own_audio"]["offsets"] == list(range(-10, 11))
    assert data["metrics"]["real"]["sync"]["confidence"] >= 0.0
    assert data["settings"]["sync_max_offset"] == 10 and data["settings"]["shuffle_roll_frames"] == 25
    image = cv2.imread(str(strip))
    assert image.shape == (3 * 320, 3 * 320, 3)  # 3 frames x (real | generated | shuffled)


@pytest.mark.media
def test_eval_cli_bad_inputs_exit_2(tiny_bundle, clip_dataset, tmp_path):
    from typer.testing import CliRunner

    from lipsync_cli.main import app

    runner = CliRunner()
    out = tmp_path / "eval.json"
    for args, words in (
        (["--dataset", str(tmp_path / "nowhere"), "--character", tiny_bundle], "nowhere"),
        (["--dataset", str(clip_dataset), "--character", str(tmp_path / "nobody")], "nobody"),
        (["--dataset", str(clip_dataset), "--character", tiny_bundle, "--max-frames", "0"], "max-frames"),
    ):
        result = runner.invoke(app, ["eval", *args, "--json", str(out), "--device", "cpu"])
        assert result.exit_code == 2, result.output
        assert words in " ".join(result.output.split())
        assert not out.exists()


@pytest.mark.media
def test_eval_uses_the_split_and_pairing_the_bundle_was_trained_with(clip_dataset, tmp_path, one_thread):
    """A character trained with val_fraction 0.2 and sync_audio_offset -2 is scored on exactly its 10
    held-out frames (40..49 of 50) with the SyncNet's pairing -2, both read from bundle.json."""
    import json

    from lipsync.config import EvalConfig, load_config
    from lipsync.eval.evaluate import evaluate
    from lipsync.train import train_character

    cfg = load_config(TrainConfig, None, ["preset=tiny", "syncnet_steps=2", "generator_steps=2", "batch_size=2",
                                          "syncnet_batch_size=8", "val_fraction=0.2", "sync_audio_offset=-2",
                                          "device=cpu", "val_every=1000", "checkpoint_every=1000"])
    bundle = str(tmp_path / "char")
    train_character(str(clip_dataset), bundle, cfg, run_dir=tmp_path / "run")
    recorded = json.loads((tmp_path / "char" / "bundle.json").read_text())["train"]["config"]
    assert (recorded["val_fraction"], recorded["sync_audio_offset"]) == (0.2, -2)

    result = evaluate(clip_dataset, bundle, str(tmp_path / "m.json"), cfg=EvalConfig(device="cpu"))
    assert result["frames"] == {"evaluated": 10, "first": 40, "last": 49, "held_out_fraction": 0.2}
    assert result["pairing"] == {"held_out_fraction": 0.2, "sync_audio_offset": -2, "source": "bundle"}
    assert json.loads((tmp_path / "m.json").read_text())["pairing"]["source"] == "bundle"

    # an explicit EvalConfig value overrides the bundle (and says so)
    override = evaluate(clip_dataset, bundle, str(tmp_path / "o.json"), max_frames=2,
                        cfg=EvalConfig(device="cpu", held_out_fraction=0.1, sync_audio_offset=0))
    assert override["frames"]["first"] == 45
    assert override["pairing"] == {"held_out_fraction": 0.1, "sync_audio_offset": 0, "source": "override"}
