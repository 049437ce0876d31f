"""The `lipsync` command as a user runs it, in a subprocess: output, exit code (issue 15).

--version, a missing --config file, quiet prepare (no third-party noise), `lipsync info`, and
train's checks before step 1.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
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
