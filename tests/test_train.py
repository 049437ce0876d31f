"""Training: dataset items, the two stages on real frames, checkpoints/resume, bundles, the CLI.

Everything runs the tiny preset (or smaller) on the real prepared Obama clip (`prepared_obama`,
500 frames) on the CPU. Numbers that tests assert (SyncNet held-out accuracy, overfit loss drop)
are printed so a run shows how much margin they had.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from lipsync.audio.features import context_stack, encode_frames
from lipsync.bundle import BUNDLE_FILE, GENERATOR_FILE, load_character, save_bundle
from lipsync.config import AudioConfig, GeometryConfig
from lipsync.data.dataset import (
    GeneratorSamples,
    NegativeSampling,
    SyncPairs,
    item_rng,
    load_frames,
    split_frames,
)
from lipsync.data.inputs import to_chw
from lipsync.errors import InputError, OutputExistsError
from lipsync.face.geometry import mask_rect
from lipsync.models import AudioEncoder, Generator, GeneratorConfig, build_generator, build_syncnet
from lipsync.config import TrainConfig, load_config
from lipsync.train import LocalContext, Trainer
from lipsync.train.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from lipsync.config import LossWeights
from lipsync.train.losses import GeneratorLoss, PerceptualLoss, load_vgg19
from lipsync.train.metrics import CURVE_FILE, METRICS_FILE, MetricsLog, curve_figure
from lipsync.train.trainer import generator_forward, optimizer_step

REPO = Path(__file__).resolve().parents[1]
TINY = 128  # tiny preset: S
MARGIN = 4

# Small, fast runs: tiny preset, small batches, validation on a few held-out frames only.
QUICK = ["preset=tiny", "batch_size=4", "syncnet_batch_size=8", "val_max_frames=8", "val_negatives_per_frame=1",
         "log_every=1", "val_every=1000", "checkpoint_every=1000", "keep_checkpoints=10"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def frames(prepared_obama: Path):
    return load_frames(prepared_obama, TINY, MARGIN, val_fraction=0.1)


# --- dataset -------------------------------------------------------------------------------------


def test_split_holds_out_the_last_frames():
    split = split_frames(500, 0.1)
    assert (split.n_train, split.val[0], split.val[-1]) == (450, 450, 499)
    assert not set(split.train) & set(split.val)
    assert split_frames(7, 0.1).val.tolist() == [6]  # at least one held-out frame
    with pytest.raises(ValueError):
        split_frames(2, 0.5)  # would leave a single training frame


def test_frames_are_preloaded_crops_with_mel_windows(frames):
    assert frames.crops.shape == (500, TINY + 2 * MARGIN, TINY + 2 * MARGIN, 3)
    assert frames.crops.dtype == np.uint8
    assert frames.mel_windows.shape == (500, 80, 16)
    assert frames.split.n_train == 450
    assert frames.model_view(3).shape == (TINY, TINY, 3)
    assert frames.crops.std() > 10  # real pixels, not a blank buffer


def test_sync_pairs_positive_is_own_window_negative_is_far_and_in_split(frames):
    neg = NegativeSampling(min_shift=5, max_shift=15, far_fraction=0.5)
    offset = -2
    pairs = SyncPairs(frames, frames.split.train, neg, seed=0, audio_offset=offset)
    assert len(pairs) == 2 * 450
    windows = frames.mel_windows
    for i in range(20, 220, 2):  # k >= 10: away from the clamped windows at the start
        k = i // 2
        pos, negative = pairs[i], pairs[i + 1]
        assert pos["label"] == 1.0 and negative["label"] == 0.0
        assert torch.equal(pos["face"], negative["face"])
        assert np.array_equal(pos["mel"][0].numpy(), windows[k + offset])
        # the negative's audio belongs to another training frame at least min_shift away
        matches = [j - offset for j in range(450) if np.array_equal(negative["mel"][0].numpy(), windows[j])]
        assert matches and all(abs(j - k) >= neg.min_shift for j in matches)
    # validation pairs only draw audio from the validation split
    val = SyncPairs(frames, frames.split.val, neg, seed=0, fixed=True, negatives_per_frame=3)
    assert len(val) == 4 * 50
    for i in range(1, 40, 4):
        m = val[i]["mel"][0].numpy()
        assert any(np.array_equal(m, windows[j]) for j in range(450, 500))


def test_items_depend_only_on_seed_epoch_and_index(frames):
    neg = NegativeSampling()
    a = SyncPairs(frames, frames.split.train, neg, seed=3)
    b = SyncPairs(frames, frames.split.train, neg, seed=3)
    assert all(torch.equal(a[i]["mel"], b[i]["mel"]) for i in range(1, 40, 2))
    b.set_epoch(1)
    assert not all(torch.equal(a[i]["mel"], b[i]["mel"]) for i in range(1, 40, 2))


def test_sync_augmentation_shifts_or_mirrors_faces_but_keeps_audio_and_labels(frames):
    assert np.array_equal(frames.shifted_view(7, 0, 0), frames.model_view(7))
    with pytest.raises(ValueError):
        frames.shifted_view(7, MARGIN + 1, 0)
    plain = SyncPairs(frames, frames.split.train, NegativeSampling(), seed=0)
    augmented = SyncPairs(frames, frames.split.train, NegativeSampling(), seed=0, augment=True)
    changed = 0
    for i in range(40):
        a, b = plain[i], augmented[i]
        assert torch.equal(a["mel"], b["mel"]) and a["label"] == b["label"]
        assert a["face"].shape == b["face"].shape
        changed += not torch.equal(a["face"], b["face"])
    assert changed >= 30


def test_generator_sample_has_masked_target_and_other_reference(frames):
    feats = np.random.default_rng(0).standard_normal((500, 512)).astype(np.float32)
    samples = GeneratorSamples(frames, frames.split.train, feats, seed=0)
    x0, y0, x1, y1 = mask_rect(TINY, frames.geometry)
    views = np.stack([to_chw(frames.model_view(j)) for j in range(450)])  # (450, 3, S, S)
    for i in (0, 17, 449):
        item = samples[i]
        ref, masked, target = item["input"][:3].numpy(), item["input"][3:].numpy(), item["target"].numpy()
        assert item["input"].shape == (6, TINY, TINY) and item["audio"].shape == (32, 16, 16)
        assert np.array_equal(target, views[i])
        assert (masked[:, y0:y1, x0:x1] == 0).all()
        assert np.array_equal(masked[:, :y0], target[:, :y0])  # above the mask: untouched
        ref_frames = [j for j in range(450) if np.array_equal(views[j], ref)]
        assert ref_frames and i not in ref_frames  # another training frame
        assert np.array_equal(item["audio"].numpy(), context_stack(feats, i, frames.audio))
    # validation targets are held-out frames; their references still come from the training split
    val = GeneratorSamples(frames, frames.split.val, feats, seed=0, fixed=True)
    assert len(val) == 50
    assert any(np.array_equal(views[j], val[3]["input"][:3].numpy()) for j in range(450))



def test_unlike_references_have_the_most_different_mouths(frames):
    """reference_unlike=1: every training reference lies in the far half of apertures from its target's;
    0 (the default) draws exactly the references it drew before the option existed."""
    feats = np.zeros((500, 512), np.float32)
    a = frames.apertures
    assert a.shape == (500,) and 0 <= a.min() < a.max() < 1
    plain = GeneratorSamples(frames, frames.split.train, feats, seed=0)
    unlike = GeneratorSamples(frames, frames.split.train, feats, seed=0, reference_unlike=1.0)
    gaps_plain, gaps_unlike = [], []
    for i in range(0, 450, 3):
        r = unlike.reference_frame(i, i)
        distance = np.abs(a[:450] - a[i])
        median_gap = np.median(np.delete(distance, i))
        assert r != i and distance[r] >= median_gap - 1e-7, (i, r)
        gaps_plain.append(distance[plain.reference_frame(i, i)])
        gaps_unlike.append(distance[r])
    assert np.mean(gaps_unlike) > 1.3 * np.mean(gaps_plain)  # measured 0.067 vs 0.043 on this clip
    for i in (0, 17, 449):  # the default draw is the one from before the option: uniform over the other frames
        r = int(item_rng(0, 0, i).integers(449))
        assert plain.reference_frame(i, i) == (r + 1 if r >= i else r)
    # validation targets ignore it: the held-out loss stays comparable across settings
    val_plain = GeneratorSamples(frames, frames.split.val, feats, seed=0, fixed=True)
    val_unlike = GeneratorSamples(frames, frames.split.val, feats, seed=0, fixed=True, reference_unlike=1.0)
    assert [val_plain.reference_frame(i, int(k)) for i, k in enumerate(frames.split.val)] == \
           [val_unlike.reference_frame(i, int(k)) for i, k in enumerate(frames.split.val)]

# --- stage 2: the generator learns ---------------------------------------------------------------


def test_generator_overfits_a_tiny_real_batch(prepared_obama):
    """4 real crops at 64 px: the library's forward/step drive the loss down by 90%."""
    torch.manual_seed(0)
    small = load_frames(prepared_obama, 64, MARGIN, val_fraction=0.1)
    feats = encode_frames(AudioEncoder(), small.mel_windows)  # (500, 512) from an untrained encoder
    samples = GeneratorSamples(small, np.array([10, 120, 240, 360]), feats, seed=0, fixed=True)
    batch = default_collate([samples[i] for i in range(4)])
    model = Generator(GeneratorConfig(size=64, widths=(8, 16, 32, 64, 128)))
    loss_fn = GeneratorLoss(LossWeights(l1=1.0, ssim=0.2, sync=0.0), syncnet=None)
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, l1 = [], []
    for _ in range(300):
        loss, parts, _ = generator_forward(model, loss_fn, batch, torch.device("cpu"), precision="fp32")
        optimizer_step(optim, loss, model.parameters(), grad_clip=1.0)
        losses.append(float(loss))
        l1.append(float(parts["l1"]))
    first, last = losses[0], float(np.mean(losses[-5:]))
    print(f"overfit: loss {first:.4f} -> {last:.4f} ({1 - last / first:.1%} lower); "
          f"L1 {l1[0]:.4f} -> {np.mean(l1[-5:]):.4f}")
    assert last < 0.1 * first


# --- stage 1: SyncNet separates aligned from misaligned audio ------------------------------------


def test_syncnet_separates_aligned_from_shifted_audio_on_held_out_frames(prepared_obama):
    cfg = load_config(TrainConfig, None, ["preset=tiny", "syncnet_steps=200", "generator_steps=0", "syncnet_batch_size=32",
                                   "val_every=50", "log_every=50", "checkpoint_every=100000", "seed=0"])
    trainer = Trainer(cfg, prepared_obama)
    trainer.setup()
    trainer.train()
    accs = [r["val_acc"] for r in trainer.metrics.records if "val_acc" in r]
    print(f"SyncNet held-out balanced accuracy by 50 steps: {accs}")
    assert accs[-1] > 0.6
    assert trainer.features.shape == (500, 512) and np.isfinite(trainer.features).all()
    assert not any(p.requires_grad for p in trainer.syncnet.parameters())  # frozen after stage 1


# --- checkpoints, determinism, resume ------------------------------------------------------------


def _run(dataset: Path, run_dir: Path, overrides: list[str], resume: bool = False) -> Trainer:
    cfg = load_config(TrainConfig, None, QUICK + overrides)
    ctx = LocalContext(run_dir, resume=resume, keep=cfg.keep_checkpoints)
    trainer = Trainer(cfg, dataset, ctx)
    trainer.setup()
    trainer.train()
    return trainer


def _losses(trainer: Trainer) -> list[tuple]:
    return [(r["stage"], r["stage_step"], r["loss"]) for r in trainer.metrics.records if "loss" in r]


def test_same_seed_same_losses_and_resume_gives_the_same_weights(prepared_obama, tmp_path):
    full = _run(prepared_obama, tmp_path / "a", ["syncnet_steps=2", "generator_steps=4"])
    again = _run(prepared_obama, tmp_path / "b", ["syncnet_steps=2", "generator_steps=4"])
    assert _losses(full) == _losses(again)  # deterministic on CPU
    other_seed = _run(prepared_obama, tmp_path / "c", ["syncnet_steps=2", "generator_steps=1", "seed=1"])
    assert _losses(other_seed)[0] != _losses(full)[0]

    # a run stopped after generator step 2, resumed to step 4 in a new process-like Trainer
    _run(prepared_obama, tmp_path / "d", ["syncnet_steps=2", "generator_steps=2"])
    assert latest_checkpoint(tmp_path / "d").name == "ckpt-00000004"
    resumed = _run(prepared_obama, tmp_path / "d", ["syncnet_steps=2", "generator_steps=4"], resume=True)
    assert resumed.generator_step == 4
    for name, tensor in full.generator.state_dict().items():
        assert torch.equal(tensor, resumed.generator.state_dict()[name]), name
    assert _losses(resumed) == _losses(full)  # history continued, not restarted

    state, metrics = read_checkpoint(latest_checkpoint(tmp_path / "d"))
    assert (state["syncnet_step"], state["generator_step"]) == (2, 4)
    assert [r["step"] for r in metrics.records if r["stage"] == "resume"] == [4]
    # checkpoints at the end of each stage (checkpoint_every is larger than the run)
    assert [p.name for p in list_checkpoints(tmp_path / "d")] == ["ckpt-00000002", "ckpt-00000004", "ckpt-00000006"]
    assert (tmp_path / "d" / METRICS_FILE).is_file() and (tmp_path / "d" / CURVE_FILE).stat().st_size > 1000


def test_run_dir_with_checkpoints_needs_resume_or_overwrite(prepared_obama, tmp_path):
    _run(prepared_obama, tmp_path / "r", ["syncnet_steps=2", "generator_steps=0"])
    with pytest.raises(InputError, match="--resume"):
        LocalContext(tmp_path / "r").check(overwrite=False)
    LocalContext(tmp_path / "r").check(overwrite=True)
    assert latest_checkpoint(tmp_path / "r") is None


# --- bundles ---------------------------------------------------------------------------------------


_MODULES: dict = {}


def _save(out: Path, dataset: Path, generator, overwrite: bool = False) -> str:
    if not _MODULES:
        torch.manual_seed(1)
        _MODULES.update(audio_encoder=AudioEncoder(), syncnet=build_syncnet("tiny"))
    return save_bundle(str(out), name="obama", preset="tiny", generator=generator, audio=AudioConfig(),
                       geometry=GeometryConfig(), dataset_dir=dataset, train_info={"note": "test"},
                       overwrite=overwrite, **_MODULES)


def test_bundle_round_trip_gives_the_same_generator_outputs(prepared_obama, tmp_path):
    torch.manual_seed(0)
    generator = build_generator("tiny").eval()
    out = tmp_path / "bundle"
    version = _save(out, prepared_obama, generator)
    character = load_character(str(out))
    assert character.version == version and len(version) == 64
    assert (character.name, character.preset, character.n_templates) == ("obama", "tiny", 500)
    assert (character.size, character.crop_size) == (TINY, TINY + 8)
    assert character.boxes.dtype == np.int32 and character.landmarks.shape == (500, 468, 2)
    assert (character.template_dir / "full_body_img" / "499.jpg").is_file()
    x, audio = torch.rand(2, 6, TINY, TINY), torch.rand(2, 32, 16, 16)
    with torch.no_grad():
        assert torch.equal(generator(x, audio), character.generator(x, audio))
    info = json.loads((out / BUNDLE_FILE).read_text())
    assert info["bundle_format"] == 1 and info["frame_size"] == [450, 450] and info["train"] == {"note": "test"}

    with pytest.raises(OutputExistsError):
        _save(out, prepared_obama, generator)
    assert _save(out, prepared_obama, generator, overwrite=True) == version  # same weights, same version


def test_load_character_rejects_missing_corrupt_and_incompatible_bundles(prepared_obama, tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_character(str(tmp_path / "nothing"))
    out = tmp_path / "bundle"
    _save(out, prepared_obama, build_generator("tiny"))
    weights = out / GENERATOR_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # flip bits in a weight
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="version"):
        load_character(str(out))

    out2 = tmp_path / "bundle2"
    _save(out2, prepared_obama, build_generator("tiny"))
    info = json.loads((out2 / BUNDLE_FILE).read_text())
    (out2 / BUNDLE_FILE).write_text(json.dumps({**info, "bundle_format": 99}))
    with pytest.raises(InputError, match="bundle format 99"):
        load_character(str(out2))
    (out2 / BUNDLE_FILE).write_text("{not json")
    with pytest.raises(InputError, match="corrupt"):
        load_character(str(out2))


# --- optional losses and encoders ------------------------------------------------------------------


def test_vgg_perceptual_loss_from_a_torchvision_layout_file(tmp_path):
    from lipsync.models.vgg import VGG19Features

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in VGG19Features().features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # the classifier part is ignored
    torch.save(state, tmp_path / "vgg19.pth")
    loss = PerceptualLoss(load_vgg19(tmp_path / "vgg19.pth"))
    a = torch.rand(2, 3, 64, 64, requires_grad=True)
    assert float(loss(a, a.detach())) == 0.0
    value = loss(a, torch.rand(2, 3, 64, 64))
    value.backward()
    assert float(value) > 0 and a.grad.abs().sum() > 0
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="VGG19"):
        load_vgg19(tmp_path / "bad.pth")


# --- the CLI ---------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lipsync_cli", "train", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=600)


def test_cli_trains_a_bundle_with_a_pretrained_audio_encoder(prepared_obama, tmp_path):
    encoder = AudioEncoder()
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01)
    # SyncTalk_2D's file layout: keys without the `audio_encoder.` prefix
    torch.save({k.removeprefix("audio_encoder."): v for k, v in encoder.state_dict().items()},
               tmp_path / "audio_visual_encoder.pth")
    out = tmp_path / "bundle"
    weights = str(tmp_path / "audio_visual_encoder.pth")
    done = _cli("--dataset", str(prepared_obama), "--out", str(out), "--preset", "tiny", "--steps", "2",
                "--syncnet-steps", "2", "--device", "cpu", "--audio-encoder", weights,
                *[a for kv in QUICK[1:] for a in ("--set", kv)])
    assert done.returncode == 0, done.stderr
    assert "trained tiny" in done.stderr
    character = load_character(str(out))
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, character.audio_encoder.state_dict()[name]), name
    info = json.loads((out / BUNDLE_FILE).read_text())
    assert info["train"]["features_from"] == "pretrained:audio_visual_encoder.pth"
    assert info["train"]["generator_steps"] == 2
    run_dir = Path(str(out) + ".run")
    assert (run_dir / METRICS_FILE).is_file() and (run_dir / CURVE_FILE).is_file()
    # issue 15: the bundle keeps the run's history (every log_every=1 step of both stages) and its curve
    history = MetricsLog.from_jsonl((out / METRICS_FILE).read_text()).records
    assert history == MetricsLog.from_jsonl((run_dir / METRICS_FILE).read_text()).records
    for stage in ("syncnet", "generator"):
        assert [r["stage_step"] for r in history if r["stage"] == stage and "loss" in r] == [1, 2], stage
    assert info["train"]["history"] == METRICS_FILE and (out / CURVE_FILE).is_file()
    assert info["name"] == "obama" == character.name  # the character's, not a file copied beside it


def test_loss_curve_has_a_panel_per_stage_and_the_reference_copy_baseline():
    records = [{"stage": "syncnet", "stage_step": s, "step": s, "loss": 0.7 - 0.1 * s} for s in (1, 2)] + [
        {"stage": "generator", "stage_step": 0, "step": 2, "val_l1": 0.19, "val_l1_reference_copy": 0.077},
        {"stage": "generator", "stage_step": 1, "step": 3, "loss": 0.3, "l1": 0.12}]
    fig = curve_figure(records)
    syncnet, generator = fig.axes
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["stage: syncnet", "stage: generator"]
    baseline = [line for line in generator.lines if line.get_label() == "val L1 of copying the reference"]
    assert len(baseline) == 1 and set(baseline[0].get_ydata()) == {0.077}  # a horizontal line
    assert not any("reference" in line.get_label() for line in syncnet.lines)


@pytest.mark.parametrize("case", ["missing_files", "bad_format", "bundle_exists", "unknown_preset"])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(prepared_obama, tmp_path, case):
    """In-process (typer's CliRunner); the real entry point is run by the test above."""
    import shutil

    from typer.testing import CliRunner

    from lipsync_cli.main import app

    dataset, out, preset, extra = prepared_obama, tmp_path / "bundle", "tiny", ["--device", "cpu"]
    if case == "missing_files":
        dataset = tmp_path / "ds"
        shutil.copytree(prepared_obama, dataset)
        (dataset / "mel.npy").unlink()
    elif case == "bad_format":
        dataset = tmp_path / "ds"
        shutil.copytree(prepared_obama, dataset)
        meta = json.loads((dataset / "meta.json").read_text())
        (dataset / "meta.json").write_text(json.dumps({**meta, "dataset_format": 99}))
    elif case == "bundle_exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "unknown_preset":
        preset = "huge"
    done = CliRunner().invoke(app, ["train", "--dataset", str(dataset), "--out", str(out), "--preset", preset,
                                    "--steps", "1", *extra])
    assert done.exit_code == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    if case == "bundle_exists":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not Path(str(out) + ".run").exists()
