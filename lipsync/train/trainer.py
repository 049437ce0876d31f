"""The training recipe: stage 1 SyncNet, then stage 2 the generator. Used by `lipsync train` and,
unchanged, by Ray Train workers (cluster/train.py); a `RunContext` supplies what differs.

    trainer = Trainer(cfg, dataset_dir, context)
    trainer.setup()          # check options, load data, build models, restore the latest checkpoint
    trainer.train()          # stage 1 (SyncNet) -> audio features -> stage 2 (generator)
    state = trainer.final_state()
    trainer.cleanup()

Stage 1 trains SyncNet with BCE on aligned (1) and misaligned (0) face/audio pairs; its audio
tower is then frozen and its per-frame 512-d outputs are the generator's `ave` features (unless
a pretrained AudioEncoder is given, which then supplies them). With `audio_features.backend`
hubert or wenet the generator's features come from that front-end instead (lipsync.audio.
frame_features over the dataset's aud.wav), SyncNet and its sync loss still work on the mel. Stage 2 trains the generator on
L1 + SSIM + the frozen SyncNet's sync loss (+ VGG perceptual with local weights).

Steps are counted per stage; checkpoints, logs and the progress bar use the global step
(SyncNet steps + generator steps). Only rank 0 validates, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lipsync import config as config_io
from lipsync.audio import frontend
from lipsync.audio.features import encode_frames
from lipsync.audio.mel import num_video_frames
from lipsync.config import TrainConfig
from lipsync.data.dataset import (
    CharacterFrames,
    GeneratorSamples,
    SyncPairs,
    load_frames,
    val_frames,
)
from lipsync.data import layout
from lipsync.errors import InputError
from lipsync.io import media, storage
from lipsync.models import (
    AudioEncoder,
    Generator,
    GeneratorConfig,
    SyncNet,
    SyncNetConfig,
    generator_config,
    load_audio_encoder,
    model_preset,
    sync_bce_loss,
)
from lipsync.runtime import autocast, seed_everything
from lipsync.train import checkpoint as ckpt
from lipsync.train.context import RunContext
from lipsync.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from lipsync.train.losses import (
    GeneratorLoss,
    MouthAdversary,
    PerceptualLoss,
    balanced_accuracy,
    load_vgg19,
    syncnet_loss,
)
from lipsync.train.metrics import MetricsLog, report_values
from lipsync.train.preflight import check_training

ProgressFn = Callable[[int, int, str], None]  # (global step, total steps, "syncnet 12/2000  loss ... steps/s")
StopFn = Callable[[], bool]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


def dataset_fingerprint(meta: dict) -> dict[str, Any]:
    return {"name": meta.get("name"), "n_frames": meta.get("n_frames"),
            "sha256": (meta.get("source") or {}).get("sha256")}


class Trainer:
    def __init__(self, cfg: TrainConfig, dataset_dir: str | Path, context: RunContext | None = None,
                 progress: ProgressFn | None = None, should_stop: StopFn | None = None):
        self.cfg = cfg
        self.dataset_dir = Path(dataset_dir)
        self.ctx = context or RunContext()
        self.progress = progress
        self.should_stop = should_stop or (lambda: False)
        self.metrics = MetricsLog()
        self.syncnet_step = 0
        self.generator_step = 0
        self.features: np.ndarray | None = None  # (n_frames, feature_dim) per-frame audio features
        self.audio_backend = cfg.audio_features.backend
        self.stopped_early = False
        self._report_due = False  # something was logged since the last report (set on every rank)
        self._reported = 0  # metrics records already reported

    # ------------------------------------------------------------------------------------------
    # setup

    def setup(self) -> None:
        cfg = self.cfg
        # 1. options that cannot work are rejected before any data is read (the split, SyncNet's
        # negatives and the batch sizes from meta.json alone: lipsync.train.preflight)
        preset = model_preset(cfg.preset)
        self.plan = check_training(cfg, layout.read_meta(self.dataset_dir), str(self.dataset_dir), self.ctx.world_size)
        self.device = self.ctx.device(cfg.device)
        pretrained_encoder = self._load_pretrained_encoder()
        self.audio_frontend = self._load_audio_frontend()
        perceptual = self._load_perceptual()
        # 2. data (the audio config with the front-end's feature width and stack shape)
        self.frames: CharacterFrames = load_frames(self.dataset_dir, preset.size, preset.crop_margin,
                                                   cfg.val_fraction)
        self.frames.audio = frontend.audio_config_for(self.frames.audio, self.audio_backend)
        # 3. models: the architecture of a resumed run comes from its checkpoint
        with self.ctx.latest_checkpoint() as found:
            state = self._read_resume_state(found) if found is not None else None
        seed_everything(cfg.seed)
        gen_cfg = (config_io.from_dict(GeneratorConfig, state["generator_config"]) if state
                   else generator_config(cfg.preset, self.audio_backend))
        sync_cfg = config_io.from_dict(SyncNetConfig, state["syncnet_config"]) if state else preset.syncnet
        self.generator = Generator(gen_cfg)
        self.syncnet = SyncNet(sync_cfg)
        self.feature_encoder: AudioEncoder | None = pretrained_encoder
        self.features_from = "syncnet" if pretrained_encoder is None else f"pretrained:{Path(cfg.audio_encoder).name}"
        if state:
            self._restore_weights(state)
        # 4. devices, data-parallel wrappers, optimizers (their state after the move to the device)
        self.syncnet_model = self.ctx.prepare_model(self.syncnet, self.device)
        self.syncnet_optim = torch.optim.Adam(self.syncnet.parameters(), lr=cfg.syncnet_lr)
        self.generator_optim_state = state.get("generator_optim") if state else None
        self.discriminator_state = {k: state.get(k) for k in ("discriminator", "discriminator_optim",
                                                               "discriminator_config")} if state else {}
        if state and state.get("syncnet_optim"):
            self.syncnet_optim.load_state_dict(state["syncnet_optim"])
        self.perceptual = perceptual.to(self.device) if perceptual is not None else None
        self.loader_generator = torch.Generator()

    def _load_pretrained_encoder(self) -> AudioEncoder | None:
        if not self.cfg.audio_encoder:
            return None
        with local_file(self.cfg.audio_encoder, "audio encoder weights") as path:
            return load_audio_encoder(path)

    def _load_audio_frontend(self):
        """The hubert / wenet model (None for ave), loaded before any data is read."""
        backend, weights = self.audio_backend, self.cfg.audio_features.weights
        if backend == "ave":
            return None
        if self.cfg.audio_encoder:
            raise InputError(self.cfg.audio_encoder, f"--audio-encoder is a pretrained ave AudioEncoder; it does "
                                                     f"not apply to the {backend} audio front-end")
        return frontend.load_frontend(backend, weights, self.device)

    def _load_perceptual(self) -> PerceptualLoss | None:
        if not self.cfg.vgg_weights:
            return None
        with local_file(self.cfg.vgg_weights, "VGG19 weights") as path:
            return PerceptualLoss(load_vgg19(path))

        self.frames.audio = frontend.audio_config_for(self.frames.audio, self.audio_backend)
    def _read_resume_state(self, directory: Path) -> dict[str, Any]:
        state, metrics = ckpt.read_checkpoint(directory)
        if state.get("preset") != self.cfg.preset:
            raise InputError(directory, f"checkpoint is of preset {state.get('preset')!r}, not {self.cfg.preset!r}")
        if state.get("dataset") != dataset_fingerprint(self.frames.meta):
            raise InputError(directory, "checkpoint was trained on another dataset")
        backend, _ = frontend.backend_of(state.get("train_config"))
        if backend != self.audio_backend:
            raise InputError(directory, f"checkpoint was trained with the {backend} audio front-end, not "
                                        f"{self.audio_backend}")
        self.syncnet_step = int(state["syncnet_step"])
        self.generator_step = int(state["generator_step"])
        self.metrics = metrics
        self.metrics.truncate(self.global_step)
        if self.ctx.is_main:
            self.metrics.add({"stage": "resume", "step": self.global_step, "stage_step": self.global_step})
        return state

    def _restore_weights(self, state: dict[str, Any]) -> None:
        self.syncnet.load_state_dict(state["syncnet"])
        if state.get("generator") is not None:
            self.generator.load_state_dict(state["generator"])
        if state.get("audio_encoder") is not None and self.feature_encoder is None \
                and state.get("features_from", "syncnet") != "syncnet":
            self.feature_encoder = AudioEncoder()
            self.feature_encoder.load_state_dict(state["audio_encoder"])
            self.features_from = state["features_from"]

    @property
    def global_step(self) -> int:
        return self.syncnet_step + self.generator_step

    # ------------------------------------------------------------------------------------------
    # train

    def train(self) -> None:
        self.started = time.perf_counter()
        self._reported = len(self.metrics.records)  # a resumed run reports only what it logs from here
        self.train_syncnet()
        if self.stopped_early:
            return
        self.freeze_syncnet_and_encode_audio()
        self.train_generator()

    def batches(self, loader: DataLoader, done_steps: int) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches, epoch after epoch, starting where a run with `done_steps` steps stopped.

        Each epoch's order comes from (seed, epoch) and every item from (seed, epoch, index), so
        the batches after a resume are exactly those the uninterrupted run would have drawn.
        """
        per_epoch = len(loader)
        epoch, skip = divmod(done_steps, per_epoch)
        while True:
            self._set_epoch(loader, epoch)
            for i, batch in enumerate(loader):
                if i >= skip:
                    yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            epoch, skip = epoch + 1, 0

    def _set_epoch(self, loader: DataLoader, epoch: int) -> None:
        loader.dataset.set_epoch(epoch)
        sampler = loader.sampler
        if hasattr(sampler, "set_epoch"):  # DistributedSampler (added by prepare_loader)
            sampler.seed = self.cfg.seed
            sampler.set_epoch(epoch)
        else:
            self.loader_generator.manual_seed(self.cfg.seed * 100_003 + epoch)

    def _loader(self, dataset, batch_size: int) -> DataLoader:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                            generator=self.loader_generator, num_workers=self.cfg.loader_workers,
                            pin_memory=self.device.type == "cuda")
        return self.ctx.prepare_loader(loader)

    # --- stage 1 --------------------------------------------------------------------------------

    def train_syncnet(self) -> None:
        cfg = self.cfg
        if self.syncnet_step >= cfg.syncnet_steps:
            return
        face_size = tuple(self.syncnet.config.face_size)
        pairs = SyncPairs(self.frames, self.frames.split.train, cfg.negatives, cfg.seed,
                          audio_offset=cfg.sync_audio_offset, augment=cfg.sync_augment)
        loader = self._loader(pairs, cfg.syncnet_batch_size)
        self.syncnet_model.train()
        timer = StepTimer()
        for batch in self.batches(loader, self.syncnet_step):
            with autocast(self.device, cfg.precision, training=True):
                loss, sim = syncnet_loss(self.syncnet_model, batch["face"], batch["mel"], batch["label"],
                                         face_size)
            self._step(self.syncnet_optim, loss, self.syncnet.parameters())
            self.syncnet_step += 1
            timer.tick()
            last = self.syncnet_step >= cfg.syncnet_steps
            if self.syncnet_step % cfg.log_every == 0 or last:
                self._log("syncnet", self.syncnet_step, timer, loss=loss, acc=balanced_accuracy(sim, batch["label"]))
            if self.syncnet_step % cfg.val_every == 0 or last:
                self._log("syncnet", self.syncnet_step, timer, **self.validate_syncnet())
            if self._end_of_step(last, timer):
                return

    @torch.no_grad()
    def validate_syncnet(self) -> dict[str, float]:
        """BCE and balanced accuracy (threshold 0.5) on held-out frames; rank 0 only."""
        if not self.ctx.is_main or self.frames.split.val.size == 0:
            return {}
        cfg = self.cfg
        pairs = SyncPairs(self.frames, self._val_frames(), cfg.negatives, cfg.seed, fixed=True,
                          negatives_per_frame=cfg.val_negatives_per_frame, audio_offset=cfg.sync_audio_offset)
        sims, labels = [], []
        self.syncnet.eval()
        for batch in DataLoader(pairs, batch_size=cfg.syncnet_batch_size):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with autocast(self.device, cfg.precision, training=True):
                _, sim = syncnet_loss(self.syncnet, batch["face"], batch["mel"], batch["label"],
                                      tuple(self.syncnet.config.face_size))
            sims.append(sim.float())
            labels.append(batch["label"])
        self.syncnet.train()
        sim, label = torch.cat(sims), torch.cat(labels)
        return {"val_loss": float(sync_bce_loss(sim, label)), "val_acc": balanced_accuracy(sim, label)}

    def _val_frames(self) -> np.ndarray:
        """At most val_max_frames held-out frames, evenly spaced."""
        return val_frames(self.frames.split, self.cfg.val_max_frames)

    def freeze_syncnet_and_encode_audio(self) -> None:
        """Freeze SyncNet; compute the per-frame features with its audio tower (or the pretrained encoder)."""
        self.syncnet.eval().requires_grad_(False)
        self.syncnet_model = self.syncnet  # no DDP wrapper for a frozen model
        if self.audio_backend != "ave":
            self.features = dataset_features(self.audio_backend, self.audio_frontend, self.frames)
            return
        # ave: the AudioEncoder over exactly the mel windows SyncNet was trained on
        encoder = self.feature_encoder if self.feature_encoder is not None else self.syncnet.audio_encoder
        encoder.to(self.device).eval().requires_grad_(False)
        self.features = encode_frames(encoder, self.frames.mel_windows, device=self.device)  # (n, 512)

    # --- stage 2 --------------------------------------------------------------------------------

    def train_generator(self) -> None:
        cfg = self.cfg
        self.generator_model = self.ctx.prepare_model(self.generator, self.device)
        self.generator_optim = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr)
        if self.generator_optim_state:
            self.generator_optim.load_state_dict(self.generator_optim_state)
        syncnet = self.syncnet if cfg.loss.sync > 0 else None
        self.loss_fn = GeneratorLoss(cfg.loss, syncnet, self.perceptual)
        self.adversary = self._build_adversary() if cfg.loss.adversarial > 0 else None
        if self.generator_step >= cfg.generator_steps:
            return
        if self.generator_step == 0:
            self._log("generator", 0, None, **self.validate_generator(), **self.reference_copy_baseline())
            self._flush_report()  # the step-0 held-out L1 and the reference-copy baseline
        samples = GeneratorSamples(self.frames, self.frames.split.train, self.features, cfg.seed,
                                   audio_offset=cfg.sync_audio_offset, reference_unlike=cfg.reference_unlike)
        loader = self._loader(samples, cfg.batch_size)
        self.generator_model.train()
        timer = StepTimer()
        for batch in self.batches(loader, self.generator_step):
            loss, parts, pred = self.generator_loss(self.generator_model, batch, self.generator_step)
            if self.adversary is not None and self.generator_step >= cfg.adversarial_after:
                parts["adv"] = self.adversary.generator_term(pred)
                loss = loss + cfg.loss.adversarial * parts["adv"]
                parts["adv"] = parts["adv"].detach()
            self._step(self.generator_optim, loss, self.generator.parameters())
            if self.adversary is not None:
                parts["disc"], parts["disc_acc"] = self._discriminator_step(batch["target"], pred)
            self.generator_step += 1
            timer.tick()
            last = self.generator_step >= cfg.generator_steps
            if self.generator_step % cfg.log_every == 0 or last:
                self._log("generator", self.generator_step, timer, loss=loss, **parts)
            if self.generator_step % cfg.val_every == 0 or last:
                self._log("generator", self.generator_step, timer, **self.validate_generator())
            if self._end_of_step(last, timer):
                return

    def _build_adversary(self) -> MouthAdversary:
        """The mouth discriminator, its optimizer and (resumed) state; only when loss.adversarial > 0."""
        saved = self.discriminator_state
        config = DiscriminatorConfig(**saved["discriminator_config"]) if saved.get("discriminator_config") \
            else DiscriminatorConfig()
        self.discriminator = PatchDiscriminator(config)
        if saved.get("discriminator") is not None:
            self.discriminator.load_state_dict(saved["discriminator"])
        model = self.ctx.prepare_model(self.discriminator, self.device)
        self.discriminator_optim = torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.discriminator_lr,
                                                    betas=(0.5, 0.999))
        if saved.get("discriminator_optim"):
            self.discriminator_optim.load_state_dict(saved["discriminator_optim"])
        return MouthAdversary(self.discriminator, model, self.cfg.loss.mouth_region)

    def _discriminator_step(self, real: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the mouth discriminator on this batch's real and generated crops: (loss, accuracy)."""
        loss, accuracy = self.adversary.discriminator_loss(real, pred.detach())
        self._step(self.discriminator_optim, loss, self.discriminator.parameters())
        return loss.detach(), accuracy

    def generator_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        return generator_forward(model, self.loss_fn, batch, self.device, self.cfg.precision,
                                 use_sync=step >= self.cfg.sync_loss_after)

    def _val_samples(self) -> GeneratorSamples:
        return GeneratorSamples(self.frames, self._val_frames(), self.features, self.cfg.seed, fixed=True,
                                audio_offset=self.cfg.sync_audio_offset)

    @torch.no_grad()
    def validate_generator(self) -> dict[str, float]:
        """Weighted loss and its parts on held-out frames (eval mode); rank 0 only."""
        if not self.ctx.is_main or self.frames.split.val.size == 0:
            return {}
        totals: dict[str, float] = {}
        count = 0
        self.generator.eval()
        for batch in DataLoader(self._val_samples(), batch_size=self.cfg.batch_size):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            loss, parts, _ = self.generator_loss(self.generator, batch, self.cfg.sync_loss_after)
            n = len(batch["target"])
            for k, v in {"loss": loss, **parts}.items():
                totals[f"val_{k}"] = totals.get(f"val_{k}", 0.0) + float(v) * n
            count += n
        self.generator.train()
        return {k: v / count for k, v in totals.items()}

    @torch.no_grad()
    def reference_copy_baseline(self) -> dict[str, float]:
        """Held-out L1 of the trivial prediction "the reference crop itself" (a floor to beat)."""
        if not self.ctx.is_main or self.frames.split.val.size == 0:
            return {}
        total, count = 0.0, 0
        for batch in DataLoader(self._val_samples(), batch_size=64):
            diff = (batch["input"][:, :3] - batch["target"]).abs()  # reference crop vs target
            total += float(diff.mean(dim=(1, 2, 3)).sum())
            count += len(diff)
        return {"val_l1_reference_copy": total / count}

    # --- shared by both stages ------------------------------------------------------------------

    def _step(self, optim: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
        optimizer_step(optim, loss, params, self.cfg.grad_clip)

    def _end_of_step(self, last_of_stage: bool, timer: "StepTimer") -> bool:
        """Checkpoint, progress and the stop hooks after an optimizer step; True ends the stage."""
        stop = self.should_stop()
        if self.global_step % self.cfg.checkpoint_every == 0 or last_of_stage or stop:
            self.save_checkpoint()
        self._flush_report()  # a log step without a checkpoint
        self.ctx.on_step(self.global_step)
        if self.progress:
            extra = f"{self._stage_text()}  {timer.describe(self.metrics)}"
            self.progress(self.global_step, self.cfg.total_steps, extra)
        if stop and not last_of_stage:
            self.stopped_early = True
        return last_of_stage or stop

    def _stage_text(self) -> str:
        """The progress bar's stage, e.g. "syncnet 120/2000" (the bar itself counts all steps)."""
        if self.generator_step:
            return f"generator {self.generator_step}/{self.cfg.generator_steps}"
        return f"syncnet {self.syncnet_step}/{self.cfg.syncnet_steps}"

    def _log(self, stage: str, stage_step: int, timer: "StepTimer | None", **values: Any) -> None:
        self._report_due = True  # on every rank (Ray's report is collective); only rank 0 has values
        if not self.ctx.is_main or not values:
            return
        record = {"stage": stage, "stage_step": stage_step, "step": self.global_step,
                  "time": round(time.perf_counter() - self.started, 3)}
        if timer is not None and timer.rate() is not None:
            record["steps_per_s"] = timer.rate()
        self.metrics.add({**record, **{k: _number(v) for k, v in values.items()}})
        self.ctx.write_metrics(self.metrics, plot=False)  # the curve is drawn at checkpoints

    # ------------------------------------------------------------------------------------------
    # save

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (see lipsync.train.checkpoint)."""
        feature_encoder = self.feature_encoder if self.feature_encoder is not None else self.syncnet.audio_encoder
        stage1_done = self.syncnet_step >= self.cfg.syncnet_steps
        generator_optim = getattr(self, "generator_optim", None)
        discriminator = getattr(self, "discriminator", None)
        d_saved = getattr(self, "discriminator_state", {})
        return {
            "syncnet_step": self.syncnet_step,
            "generator_step": self.generator_step,
            "preset": self.cfg.preset,
            "crop_margin": self.frames.margin,
            "generator_config": config_io.to_dict(self.generator.config),
            "syncnet_config": config_io.to_dict(self.syncnet.config),
            "train_config": config_io.to_dict(self.cfg),
            "dataset": dataset_fingerprint(self.frames.meta),
            "syncnet": _cpu_state(self.syncnet),
            "syncnet_optim": self.syncnet_optim.state_dict(),
            "generator": _cpu_state(self.generator),
            "generator_optim": generator_optim.state_dict() if generator_optim else self.generator_optim_state,
            "audio_encoder": _cpu_state(feature_encoder) if stage1_done else None,
            "features_from": self.features_from,
            # the mouth discriminator (loss.adversarial > 0): training only, never in a bundle
            "discriminator": _cpu_state(discriminator) if discriminator is not None else d_saved.get("discriminator"),
            "discriminator_optim": self.discriminator_optim.state_dict() if discriminator is not None
            else d_saved.get("discriminator_optim"),
            "discriminator_config": dataclasses.asdict(discriminator.config) if discriminator is not None
            else d_saved.get("discriminator_config"),
        }

    def save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint directory; every rank takes part in publishing it (Ray's
        report is collective)."""
        metrics = self._report_values()
        with tempfile.TemporaryDirectory(prefix="lipsync-ckpt-") as tmp:
            written = ckpt.write_checkpoint(Path(tmp) / "ckpt", self.state(), self.metrics) if self.ctx.is_main \
                else None
            self.ctx.save_checkpoint(written, self.global_step, metrics)

    def _report_values(self) -> dict[str, Any]:
        """Step counters + what was logged since the last report (lipsync.train.metrics.report_values)."""
        new = self.metrics.records[self._reported:]
        self._reported, self._report_due = len(self.metrics.records), False
        return {"step": self.global_step, "syncnet_step": self.syncnet_step, "generator_step": self.generator_step,
                **report_values(new, self.metrics)}

    def _flush_report(self) -> None:
        if self._report_due:
            self.ctx.report(self._report_values())

    def final_state(self) -> dict[str, Any]:
        return self.state()

    def summary(self) -> dict[str, Any]:
        """What the bundle records about this run."""
        return run_summary(self.state(), self.metrics, self.ctx.world_size, self.device.type)

    # ------------------------------------------------------------------------------------------
    # cleanup

    def cleanup(self) -> None:
        """Release the preloaded crops and models (a long-lived Ray worker may train again)."""
        self.frames = None  # type: ignore[assignment]
        self.features = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def dataset_features(backend: str, model: Any, frames: CharacterFrames) -> np.ndarray:
    """(n_frames, feature_dim) front-end features of a dataset's aud.wav, one row per video frame
    (lipsync.audio.frame_features; the audio is padded with silence if it is shorter than the video)."""
    cfg = frames.audio
    wav = media.read_audio(frames.root / layout.AUDIO_FILE, cfg.sample_rate)
    n = frames.n_frames
    need = -(-n * cfg.sample_rate // cfg.fps)  # samples of n video frames
    if wav.size < need:
        wav = np.concatenate([wav, np.zeros(need - wav.size, np.float32)])
    feats = frontend.frame_features(backend, model, wav, cfg)
    assert len(feats) == num_video_frames(wav.size, cfg) >= n
    return feats[:n]


def run_summary(state: dict[str, Any], metrics: MetricsLog, world_size: int, device: str) -> dict[str, Any]:
    """The `train` entry of bundle.json, from a final training state and its metrics."""
    return {
        "syncnet_steps": state["syncnet_step"],
        "generator_steps": state["generator_step"],
        "world_size": world_size,
        "device": device,
        "features_from": state.get("features_from"),
        "audio_features": (state.get("train_config") or {}).get("audio_features"),
        "syncnet_val_acc": metrics.last("syncnet", "val_acc"),
        "val_l1": metrics.last("generator", "val_l1"),
        "val_l1_reference_copy": metrics.last("generator", "val_l1_reference_copy"),
        "config": state.get("train_config"),
        "dataset": state.get("dataset"),
    }


def generator_forward(model: nn.Module, loss_fn: GeneratorLoss, batch: dict[str, torch.Tensor],
                      device: torch.device, precision: str, use_sync: bool = True
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One generator forward on a GeneratorSamples batch (already on `device`): (loss, parts, prediction)."""
    with autocast(device, precision, training=True):
        pred = model(batch["input"], batch["audio"])  # (N, 6, S, S) -> (N, 3, S, S)
        loss, parts = loss_fn(pred, batch["target"], batch["mel"], use_sync=use_sync)
    return loss, parts, pred


def optimizer_step(optim: torch.optim.Optimizer, loss: torch.Tensor, params, grad_clip: float) -> None:
    """zero_grad, backward, clip, step (zeroing first: gradients never leak across steps)."""
    optim.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(list(params), grad_clip)
    optim.step()


class StepTimer:
    """Steps per second over the steps since the last log line (excluding validation time is not
    attempted: it is a rough throughput for the progress bar)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1

    def rate(self) -> float | None:
        dt = time.perf_counter() - self.t0
        return self.steps / dt if self.steps and dt > 0 else None

    def describe(self, metrics: MetricsLog) -> str:
        rate = self.rate()
        loss = next((r["loss"] for r in reversed(metrics.records) if "loss" in r), None)
        parts = [f"loss {loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else "",
                 f"{rate:.2f} steps/s" if rate else ""]
        return "  ".join(p for p in parts if p)


def _number(v: Any) -> float:
    return float(v.detach()) if torch.is_tensor(v) else float(v)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in unwrap(module).state_dict().items()}


@contextlib.contextmanager
def local_file(uri: str, what: str) -> Iterator[Path]:
    """A local path for a file URI (downloaded for s3://); InputError when it does not exist."""
    if not storage.exists(uri):
        raise InputError(uri, f"{what} not found")
    with storage.local_copy(uri) as path:
        yield path
