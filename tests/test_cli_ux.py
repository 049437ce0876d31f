"""The `lipsync` command as a user runs it, in a subprocess: output, exit code (issue 15).

--version, a missing --config file, quiet prepare and dub (no third-party noise), `lipsync info`,
train's checks before step 1, and one flag vocabulary (-o/--out, --json, flags, exit codes).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import re
import subprocess
import time
import sys
from pathlib import Path

import pytest

from clips import OBAMA, write_clip

LIPSYNC = str(Path(sys.executable).parent / "lipsync")
# What MediaPipe / TFLite / absl / protobuf printed on `lipsync prepare` before (issue 15, item 7).
THIRD_PARTY_NOISE = ("Created TensorFlow Lite XNNPACK delegate", "Feedback manager requires",
                     "GetPrototype", "absl::InitializeLog", "inference_feedback_manager", "UserWarning")


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIPSYNC_LOG_DIR": str(cwd / "logs"), "COLUMNS": "200"}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([LIPSYNC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def test_version(tmp_path):
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"lipsync {importlib.metadata.version('lipsync')}\n" == "lipsync 0.1.0\n"


def test_help_lists_the_global_options(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for word in ("--verbose", "--quiet", "--version", "prepare", "render", "info"):
        assert word in result.stdout, word


@pytest.mark.parametrize("name", ["nonexist.yaml", "foo", "sub/dir/missing.yml"])
def test_missing_config_file_is_one_line_exit_2(tmp_path, name):
    result = run_cli("render", "--config", name, "--character", "c", "--audio", "a.wav", "-o", "o.mp4",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert line.startswith(f"error: {name}: ") and "cannot read config file" in line
    assert "yaml.yaml" not in line and "lipsync/configs" not in line  # the user's path, as given


@pytest.fixture(scope="module")
def clip(media_dir, tmp_path_factory) -> Path:
    """1 s (25 frames) of the Obama clip as an mp4."""
    return write_clip(tmp_path_factory.mktemp("ux_clip"), media_dir / OBAMA, 25)


@pytest.mark.media
def test_prepare_prints_no_third_party_noise(clip, tmp_path):
    result = run_cli("prepare", str(clip), "--name", "clip", "--out", str(tmp_path / "ds"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    heard = [s for s in THIRD_PARTY_NOISE if s in result.stderr + result.stdout]
    assert not heard, result.stderr
    assert "prepared clip" in result.stderr and "25 frames" in result.stderr
    # -v shows what was kept from the terminal, in the debug log: the check above is not vacuous
    verbose = run_cli("-v", "prepare", str(clip), "--name", "clip", "--out", str(tmp_path / "ds2"), cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "DEBUG lipsync.face.landmarks" in verbose.stderr and "XNNPACK" in verbose.stderr
    # -q: nothing at all on success
    quiet = run_cli("-q", "prepare", str(clip), "--name", "clip", "--out", str(tmp_path / "ds3"), cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == "", quiet.stderr


# --- lipsync info ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(clip) -> Path:
    """The 25-frame clip, prepared (in this process: the subprocess run is tested above)."""
    from lipsync.config import PrepareConfig
    from lipsync.data.prepare import prepare

    prepare(str(clip), "clip", str(clip.parent / "ds"), PrepareConfig())
    return clip.parent / "ds"


@pytest.fixture(scope="module")
def bundle(dataset) -> Path:
    """A tiny untrained bundle whose bundle.json records a training summary (as train writes it)."""
    import torch

    from lipsync.bundle import save_bundle
    from lipsync.config import AudioConfig, GeometryConfig
    from lipsync.models import build_generator, build_syncnet
    from lipsync.models.audio_encoder import AudioEncoder

    torch.manual_seed(0)
    out = dataset.parent / "bundle"
    save_bundle(str(out), name="clip", preset="tiny", generator=build_generator("tiny"), audio_encoder=AudioEncoder(),
                syncnet=build_syncnet("tiny"), audio=AudioConfig(), geometry=GeometryConfig(), dataset_dir=dataset,
                train_info={"syncnet_steps": 20, "generator_steps": 30, "device": "cpu", "world_size": 1,
                            "syncnet_val_acc": 0.625, "val_l1": 0.0812, "val_l1_reference_copy": 0.0734})
    return out


@pytest.mark.media
def test_info_bundle(bundle, tmp_path):
    import json

    from lipsync.models import model_preset

    result = run_cli("info", str(bundle), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "preset          tiny" in text and "audio front-end ave" in text
    assert "syncnet 20 + generator 30 = 50" in text
    assert "0.0812 vs reference-copy baseline 0.0734 (NOT below the baseline: undertrained)" in text
    assert "accuracy 0.625" in text and "frames          25 (0 without a face)" in text
    facts = json.loads(run_cli("info", str(bundle), "--json", cwd=tmp_path).stdout)
    version = json.loads((bundle / "bundle.json").read_text())["version"]
    assert facts["kind"] == "bundle" and facts["version"] == version and version in text
    assert facts["train_steps"] == {"syncnet": 20, "generator": 30} and facts["frames"] == 25
    assert facts["crop_margin"] == model_preset("tiny").crop_margin
    assert facts["held_out"]["l1"] == 0.0812 and facts["held_out"]["l1_reference_copy"] == 0.0734


@pytest.mark.media
def test_info_dataset(dataset, tmp_path):
    import json

    result = run_cli("info", str(dataset), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "frames          25 at 25 fps (0 without a face" in result.stdout
    facts = json.loads(run_cli("info", str(dataset), "--json", cwd=tmp_path).stdout)
    assert facts["kind"] == "dataset" and facts["frames"] == 25 and facts["fps"] == 25
    assert facts["frames_without_face"] == 0


def test_info_dub_report(tmp_path):
    import json

    from lipsync.dub.report import ItemResult, build_report

    items = [ItemResult("a", "ok", "a.mp4", frames=50, row=0),
             ItemResult("b", "failed", "b.mp4", error="audio.wav: not found", row=1),
             ItemResult("c", "skipped", "c.mp4", row=2)]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(build_report(items=items, run={}, timings={"total_s": 10.0})))
    result = run_cli("info", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3: 1 done, 1 failed, 1 skipped" in result.stdout
    assert "failed row 1 b: audio.wav: not found" in result.stdout
    facts = json.loads(run_cli("info", str(path), "--json", cwd=tmp_path).stdout)
    assert facts["counts"] == {"ok": 1, "failed": 1, "skipped": 1}
    assert facts["failures"] == [{"row": 1, "id": "b", "error": "audio.wav: not found"}]
    # a dub output root: its newest run's report (not an older one, not a progress record)
    reports = tmp_path / "dubs" / "_reports"
    reports.mkdir(parents=True)
    (reports / "20260101T000000.000000Z.json").write_text(path.read_text())
    (reports / "20250101T000000.000000Z.json").write_text(json.dumps(build_report(items=[], run={}, timings={})))
    (reports / "20260101T000000.000000Z-progress.json").write_text("{}")
    newest = json.loads(run_cli("info", str(tmp_path / "dubs"), "--json", cwd=tmp_path).stdout)
    assert newest["path"].endswith("20260101T000000.000000Z.json") and newest["counts"] == facts["counts"]


@pytest.mark.parametrize("make", ["missing", "file", "empty_dir", "other_json"])
def test_info_of_anything_else_is_one_line_exit_2(tmp_path, make):
    target = tmp_path / {"missing": "nope", "file": "x.mp4", "empty_dir": "d", "other_json": "o.json"}[make]
    if make == "file":
        target.write_bytes(b"not a video")
    elif make == "empty_dir":
        target.mkdir()
    elif make == "other_json":
        target.write_text('{"a": 1}')
    result = run_cli("info", str(target), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert one_error_line(result).startswith(f"error: {target}: ")


# --- train: checked before step 1, and the plan ---------------------------------------------------


@pytest.mark.media
def test_train_on_a_too_short_dataset_fails_before_step_1(dataset, tmp_path):
    """25 frames: the held-out split (3 frames) cannot give SyncNet negatives 5+ frames away. This
    used to fail after the whole SyncNet stage, with exit 1 and no fix."""
    started = time.monotonic()
    result = run_cli("train", "--dataset", str(dataset), "--out", str(tmp_path / "b"), "--preset", "tiny",
                     "--steps", "300", "--device", "cpu", cwd=tmp_path)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert line.startswith(f"error: {dataset}: the held-out split of 3 frames (val_fraction=0.1) is too short for "
                           "SyncNet negatives 5+ frames away: use at least 3.6 s of video (91 frames at 25 fps)")
    assert "--set val_fraction=0 (no held-out metrics)" in line
    assert "plan:" not in result.stderr and "steps/s" not in result.stderr and "train tiny" not in result.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.run").exists()  # nothing written
    assert seconds < 60, seconds  # the import of torch on a busy machine, no training


@pytest.mark.media
def test_train_prints_its_plan_first(dataset, tmp_path):
    result = run_cli("train", "--dataset", str(dataset), "--out", str(tmp_path / "b"), "--preset", "tiny",
                     "--syncnet-steps", "2", "--steps", "1", "--device", "cpu", "--set", "val_fraction=0",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first == "plan: syncnet 2 + generator 1 = 3 steps (--syncnet-steps, --steps); 25 training frames, " \
                    "0 held out", result.stderr
    assert "2 SyncNet + 1 generator steps" in " ".join(result.stderr.split())
    assert "generator 1/1" in result.stderr  # the bar names its stage


def test_version_help_and_info_do_not_import_torch():
    """They answer at once: the commands import their libraries (torch: seconds) when they run."""
    from lipsync import bundle, info

    assert info.BUNDLE_FILE == bundle.BUNDLE_FILE
    code = "import sys, lipsync_cli.main, lipsync.info; print('torch' in sys.modules, 'mediapipe' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- one flag vocabulary: -o/--out, --device, --overwrite, --json; exit codes in --help (item 10) ----

COMMANDS = ("prepare", "train", "render", "dub", "eval", "info")


def test_help_lists_the_exit_codes(tmp_path):
    text = run_cli("--help", cwd=tmp_path).stdout
    assert "Exit codes:" in text
    rows = {line.split()[0]: line for line in text.split("Exit codes:")[1].splitlines() if line.strip()}
    assert "done" in rows["0"] and "log file" in rows["1"] and "bad input" in rows["2"]
    assert "some items failed" in rows["3"] and "interrupted" in rows["130"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_booleans_as_flags_and_one_vocabulary(tmp_path, command):
    result = run_cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "<bool>" not in text  # typer's rich help showed "--overwrite <bool>"
    assert "--json" in text
    if command != "info":
        assert "-o, --out <str>" in text
    if command in ("prepare", "train", "render", "dub"):
        assert re.search(r"^ +--overwrite {2,}\S", text, re.M), text  # a flag: no value
    if command in ("train", "render", "dub", "eval"):
        assert "--device <str>" in text
    assert not re.search(r"^ +--output(-root)? ", text, re.M)  # the old spellings work, hidden


@pytest.mark.parametrize("spelling", ["-o", "--out", "--output"])
def test_render_takes_o_out_and_the_old_output(tmp_path, spelling):
    """All three reach the input checks (a missing audio file), none is an unknown option."""
    result = run_cli("render", "--character", "c", "--audio", "missing.wav", spelling, "o.mp4", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert "missing.wav" in line and "not found" in line, line


def test_render_without_or_with_two_outputs_is_one_line_exit_2(tmp_path):
    result = run_cli("render", "--character", "c", "--audio", "a.wav", cwd=tmp_path)
    assert result.returncode == 2 and one_error_line(result) == "error: missing option -o/--out (the .mp4 to write)"
    result = run_cli("render", "--character", "c", "--audio", "a.wav", "-o", "a.mp4", "--output", "b.mp4", cwd=tmp_path)
    assert result.returncode == 2 and "disagree" in one_error_line(result)


@pytest.mark.parametrize("spelling", ["-o", "--out", "--output-root"])
def test_dub_dry_run_json_on_stdout(tmp_path, spelling):
    """--json: the plan as JSON alone on stdout; exit 3 when rows would fail (no Ray, no media)."""
    catalog = tmp_path / "c.csv"
    catalog.write_text("id,character,audio\nx,no_bundle,missing.wav\n")
    result = run_cli("dub", str(catalog), spelling, str(tmp_path / "out"), "--dry-run", "--json", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["items"] == 1 and plan["to_render"] == 0
    assert plan["failed"][0]["id"] == "x" and "missing.wav" in plan["failed"][0]["error"]
    assert not (tmp_path / "out").exists()


def test_jobs_take_o_out(tmp_path):
    """jobs/batch_dub.py: -o/--out, and --output-root as before; missing both is argparse's exit 2."""
    repo = Path(__file__).resolve().parents[1]
    catalog = tmp_path / "c.csv"
    catalog.write_text("id,character,audio\nx,no_bundle,missing.wav\n")
    job = [sys.executable, str(repo / "jobs" / "batch_dub.py"), "--catalog", str(catalog)]
    for spelling in ("-o", "--out", "--output-root"):
        result = subprocess.run([*job, spelling, str(tmp_path / "out"), "--dry-run", "--json"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 3, result.stderr
        assert json.loads(result.stdout)["failed"][0]["id"] == "x"
    missing = subprocess.run(job, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "-o/--out" in missing.stderr


@pytest.mark.media
def test_render_json_on_stdout(bundle, tmp_path):
    result = run_cli("render", "--character", str(bundle), "--audio", str(bundle.parent / "clip.wav"),
                     "--out", str(tmp_path / "dub.mp4"), "--device", "cpu", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["command"] == "render" and facts["frames"] == 25 and facts["out"] == str(tmp_path / "dub.mp4")
    assert facts["stats"]["frames"] == 25 and (tmp_path / "dub.mp4").is_file()
    assert "rendered" in result.stderr  # the summary line stays on stderr


# --- dub on the embedded Ray: no third-party noise by default (issue 15, "Done when") -------------

# What `lipsync dub` printed before (Ray 2.60): the token-auth warning, Ray Data's INFO lines and
# progress-bar warning, and the driver core worker's actor-restart line (C++ log echoed to fd 2).
RAY_NOISE = ("Token authentication", "streaming_executor", "Starting execution of Dataset", "Execution plan",
             "Progress bars disabled", "core_worker.cc", "max_restarts", " WARNING ", " INFO ")


@pytest.mark.media
def test_dub_prints_no_ray_noise(bundle, tmp_path):
    """One item, 1 s of audio, on the CLI's embedded local Ray (~35 s here; twice: plain and -v)."""
    catalog = tmp_path / "catalog.csv"
    with open(catalog, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "character", "audio"])
        writer.writerow(["one", str(bundle), str(bundle.parent / "clip.wav")])
    env_keep = os.environ.pop("RAY_AUTH_MODE", None)  # as a user runs it (the ray_head fixture sets it)
    try:
        result = run_cli("dub", str(catalog), "-o", str(tmp_path / "dubs"), "--device", "cpu", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        heard = [s for s in RAY_NOISE + THIRD_PARTY_NOISE if s in result.stderr + result.stdout]
        assert not heard, result.stderr
        assert "1: 1 ok, 0 failed, 0 skipped" in result.stderr and "dub " in result.stderr  # bar and summary
        assert (tmp_path / "dubs" / "one.mp4").is_file()
        # -v leaves Ray's own output alone: the check above is not vacuous
        verbose = run_cli("-v", "dub", str(catalog), "-o", str(tmp_path / "dubs2"), "--device", "cpu", cwd=tmp_path)
        assert verbose.returncode == 0, verbose.stderr
        assert "Starting execution of Dataset" in verbose.stderr
    finally:
        if env_keep is not None:
            os.environ["RAY_AUTH_MODE"] = env_keep


@pytest.mark.media
def test_eval_json_dash_prints_the_metrics_on_stdout(bundle, dataset, tmp_path):
    """eval's --json names the metrics file (as before -o/--out); `--json -` prints them on stdout."""
    result = run_cli("eval", "--dataset", str(dataset), "--character", str(bundle), "--json", "-",
                     "--max-frames", "2", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["frames"]["evaluated"] == 2 and "-> stdout" in result.stderr
    assert not (tmp_path / "-").exists()
    both = run_cli("eval", "--dataset", str(dataset), "--character", str(bundle), "-o", str(tmp_path / "e.json"),
                   "--json", "-", "--max-frames", "2", "--device", "cpu", cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["frames"] == json.loads((tmp_path / "e.json").read_text())["frames"]


# --- render and dub: checked before the first frame (item 4) --------------------------------------


@pytest.mark.parametrize("problem", ["root_under_a_file", "cuda_without_gpu"])
def test_dub_checks_before_ray_starts(tmp_path, problem):
    """An output root that cannot be written, or --device cuda on a machine without CUDA: one
    line, exit 2, in seconds (no Ray started). Both used to start Ray, then fail every item with
    exit 1 (the output root) or wait for a GPU forever (cuda)."""
    import torch

    if problem == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    catalog = tmp_path / "c.csv"
    catalog.write_text("id,character,audio\nx,no_bundle,missing.wav\n")
    (tmp_path / "afile").write_text("")
    root = tmp_path / ("afile/sub" if problem == "root_under_a_file" else "out")
    extra = ["--device", "cuda"] if problem == "cuda_without_gpu" else []
    started = time.monotonic()
    result = run_cli("dub", str(catalog), "-o", str(root), *extra, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    if problem == "root_under_a_file":
        assert line.startswith(f"error: {root}: cannot create the directory"), line
    else:
        assert "--device cuda" in line and "use --device cpu or auto" in line, line
        assert not root.exists()  # nothing written
    assert time.monotonic() - started < 60


def test_train_job_takes_o_out_and_device():
    """jobs/train_character.py: -o/--out and --device cpu|cuda as the CLI spells them; --gpu as before."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "jobs" / "train_character.py"
    spec = importlib.util.spec_from_file_location("train_character_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    base = ["--dataset", "d", "--storage-path", "s"]
    assert job.parse_args([*base, "-o", "b"]).out == "b" and not job.parse_args([*base, "--out", "b"]).gpu
    assert job.parse_args([*base, "-o", "b", "--device", "cuda"]).gpu
    assert job.parse_args([*base, "-o", "b", "--gpu"]).gpu
    with pytest.raises(SystemExit) as exit_info:
        job.parse_args([*base, "-o", "b", "--gpu", "--device", "cpu"])
    assert exit_info.value.code == 2
