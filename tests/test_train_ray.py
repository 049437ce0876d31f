"""Ray Train on a real Ray head: 2 CPU workers (DDP over gloo), checkpoints, failure and resume.

The driver is this test process, connected to the `ray_head` fixture's cluster; the workers
import `cluster.train` from the installed package. Tiny preset, a handful of steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipsync.bundle import BUNDLE_FILE, load_character
from lipsync.io import storage
from lipsync.config import TrainConfig, load_config
from lipsync.train.checkpoint import read_checkpoint
from lipsync.train.metrics import CURVE_FILE, METRICS_FILE, MetricsLog, curve_figure

pytestmark = pytest.mark.integration

QUICK = ["preset=tiny", "batch_size=4", "syncnet_batch_size=8", "val_max_frames=8", "val_negatives_per_frame=1",
         "log_every=1", "val_every=1000", "checkpoint_every=2", "keep_checkpoints=3", "device=cpu"]


@pytest.fixture(scope="module")
def ray_cluster(ray_head, tmp_path_factory):
    import ray

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(storage.CACHE_DIR_ENV, str(cache))  # where workers cache s3 datasets (worker_env)
        ray.init(address=ray_head.gcs_address, log_to_driver=False)
        try:
            yield ray_head
        finally:
            ray.shutdown()


def report_lines(head) -> list[str]:
    """The `[train] step ...` lines rank 0 printed so far (Ray writes worker stdout to logs/worker-*.out)."""
    logs = Path(head.temp_dir) / "session_latest" / "logs"
    return [line.split("[train] ", 1)[1] for path in sorted(logs.glob("worker-*.out"))
            for line in path.read_text(errors="replace").splitlines() if "[train] step " in line]


def test_two_workers_train_and_write_checkpoints_and_a_bundle(ray_cluster, prepared_obama, tmp_path):
    from cluster.train import train_on_ray

    cfg = load_config(TrainConfig, None, QUICK + ["syncnet_steps=2", "generator_steps=2"])
    out = tmp_path / "bundle"
    before = len(report_lines(ray_cluster))
    result = train_on_ray(str(prepared_obama), str(out), cfg, storage_path=str(tmp_path / "ray"), name="run",
                          num_workers=2, max_failures=0)
    checkpoints = sorted(p.name for p in (tmp_path / "ray" / "run").glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2  # global steps 2 and 4
    state, metrics = read_checkpoint(Path(result.checkpoint_uri))
    assert (state["syncnet_step"], state["generator_step"]) == (2, 2)
    info = json.loads((out / BUNDLE_FILE).read_text())
    assert info["train"]["world_size"] == 2 and info["train"]["generator_steps"] == 2
    assert load_character(str(out)).n_templates == 500
    # both ranks trained: DDP splits each epoch, so each rank's loader has half the batches
    assert any(r.get("stage") == "generator" and "loss" in r for r in metrics.records)
    # issue 15: a report at every log step (log_every=1), in the job log with losses and held-out metrics:
    # global steps 1, 2 (SyncNet; 2 with its checkpoint), 2 again (generator step 0: held-out L1 and the
    # reference-copy baseline), 3, 4 (generator; 4 with its checkpoint)
    lines = report_lines(ray_cluster)[before:]
    assert [line.split(" (")[0] for line in lines] == ["step 1", "step 2", "step 2", "step 3", "step 4"], lines
    assert "syncnet loss" in lines[0] and "val_l1_reference_copy" in lines[2] and "generator" in lines[4]
    assert "val_acc" in lines[1] and "val_l1 " in lines[4], lines
    # the bundle keeps the history (the same records as the final checkpoint) and the loss curve
    history = MetricsLog.from_jsonl((out / METRICS_FILE).read_text()).records
    assert history == metrics.records
    assert info["train"]["history"] == METRICS_FILE and (out / CURVE_FILE).is_file()
    for stage in ("syncnet", "generator"):
        assert [r["stage_step"] for r in history if r["stage"] == stage and "loss" in r] == [1, 2], stage
    assert len(curve_figure(history).axes) == 2  # one panel per stage


def test_a_failed_worker_resumes_from_the_checkpoint_on_s3(ray_cluster, prepared_obama, s3_tmp, tmp_path):
    from cluster.train import FAILURE_MARKER, train_on_ray

    dataset_uri = storage.join(s3_tmp, "dataset")
    storage.upload_dir(prepared_obama, dataset_uri)
    # with the mouth discriminator (issue 16): data-parallel too, in the checkpoint, resumed with the rest
    cfg = load_config(TrainConfig, None, QUICK + ["syncnet_steps=2", "generator_steps=4", "loss.adversarial=0.05"])
    out = tmp_path / "bundle"
    result = train_on_ray(dataset_uri, str(out), cfg, storage_path=storage.join(s3_tmp, "ray"), name="run",
                          num_workers=2, max_failures=1, fail_at_step=5)
    assert storage.exists(storage.join(s3_tmp, "ray", "run", FAILURE_MARKER))  # it did fail once
    assert result.checkpoint_uri.startswith(s3_tmp)
    state, metrics = read_checkpoint(storage.cached_local_dir(result.checkpoint_uri))
    assert (state["syncnet_step"], state["generator_step"]) == (2, 4)
    resumes = [r["step"] for r in metrics.records if r.get("stage") == "resume"]
    assert resumes == [4]  # restarted from the step-4 checkpoint, not from scratch
    steps = [r["step"] for r in metrics.records if r.get("stage") == "generator" and "loss" in r]
    assert steps == [3, 4, 5, 6]  # step 5 (the failed one) was trained again, once in the history
    assert all("adv" in r and "disc" in r for r in metrics.records if r.get("stage") == "generator" and "loss" in r)
    assert state["discriminator"] is not None and state["discriminator_optim"]["state"]
    assert load_character(str(out)).version == result.version


def test_every_reader_of_a_remote_checkpoint_gets_its_own_copy(s3_tmp, tmp_path):
    """Two ranks on one node resuming at once: Ray's as_directory() shares one download directory,
    and a second download over it tore the first rank's state.pt (CI). Each reader gets a private
    copy; one reader leaving does not touch the other's files; a local checkpoint is not copied."""
    from ray.train import Checkpoint

    from cluster.train import private_copy, run_storage

    payload = {"state.pt": bytes(range(256)) * 8192, "metrics.jsonl": b'{"step": 4}\n'}  # 2 MiB + a line
    for name, data in payload.items():
        storage.write_bytes(storage.join(s3_tmp, "ckpt", name), data)
    root, filesystem = run_storage(s3_tmp)
    checkpoint = Checkpoint(f"{root}/ckpt", filesystem=filesystem)
    with private_copy(checkpoint) as first:
        with private_copy(checkpoint) as second:
            assert first != second
            for directory in (first, second):
                assert {p.name: p.read_bytes() for p in directory.iterdir()} == payload
        assert not second.exists()  # removed when its reader left...
        assert {p.name: p.read_bytes() for p in first.iterdir()} == payload  # ...the other's copy untouched
    assert not first.exists()

    local = tmp_path / "local_ckpt"
    local.mkdir()
    (local / "state.pt").write_bytes(b"x")
    with private_copy(Checkpoint.from_directory(str(local))) as directory:
        assert directory == local
    assert (local / "state.pt").read_bytes() == b"x"  # read in place, never removed
