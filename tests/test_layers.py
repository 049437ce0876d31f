"""Who may import whom, one runtime policy, and how the CLI reports what goes wrong."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lipsync
import lipsync_cli.main as cli
from lipsync.errors import InputError
from lipsync.runtime import autocast, autocast_dtype, cpu_has_native_bf16, resolve_device

REPO = Path(__file__).resolve().parents[1]


def _library_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(lipsync.__path__, "lipsync."))


def test_the_library_never_imports_ray():
    """Every module under lipsync/ imported in a fresh interpreter: Ray is not among what came with them."""
    modules = _library_modules()
    assert len(modules) > 30 and "lipsync.render.paint" in modules and "lipsync.runtime" in modules
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_cli_lives_outside_the_library():
    assert not (REPO / "lipsync" / "cli.py").exists()
    assert "lipsync_cli.main:app" in (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize("name, expected", [("cpu", "cpu"), ("auto", "cuda" if torch.cuda.is_available() else "cpu")])
def test_resolve_device(name, expected):
    assert resolve_device(name).type == expected


@pytest.mark.parametrize("name, words", [("tpu", "unknown device 'tpu'"), ("cuda:x", "unknown device")])
def test_resolve_device_rejects_unknown_names(name, words):
    with pytest.raises(InputError, match=words):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_names_are_one_policy_for_every_stage(name):
    """"cuda:1" is a valid name for train, render, eval and dub alike; without a GPU it is an input error."""
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device(name)


def test_precision_policy(tmp_path):
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None and autocast_dtype(cpu, "bf16") == torch.bfloat16
    assert autocast_dtype(cpu, "auto", training=True) is None  # CPU training stays fp32
    assert (autocast_dtype(cpu, "auto") == torch.bfloat16) == cpu_has_native_bf16()
    with autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(InputError, match="unknown precision"):
        autocast_dtype(cpu, "fp16")
    (tmp_path / "no").write_text("flags : fpu avx512f avx512_vnni\n")
    (tmp_path / "yes").write_text("flags : fpu avx512f avx512_bf16\n")
    assert not cpu_has_native_bf16(tmp_path / "no") and cpu_has_native_bf16(tmp_path / "yes")
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_unexpected_errors_exit_1_with_the_traceback_in_a_log(tmp_path, monkeypatch):
    """A bug is not an input error: exit 1, one line naming the log file that holds the traceback."""
    monkeypatch.setenv(cli.LOG_DIR_ENV, str(tmp_path / "logs"))

    def broken(*args, **kwargs):
        raise ValueError("a bug deep inside: list index out of range")

    monkeypatch.setattr("lipsync.render.render", broken)  # the CLI imports it when the command runs
    result = CliRunner().invoke(cli.app, ["render", "--character", "c", "--audio", "a.wav", "-o",
                                          str(tmp_path / "o.mp4")])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "unexpected ValueError in `lipsync render`: a bug deep inside" in text
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and f"traceback in {logs[0]}" in text
    assert "Traceback" in logs[0].read_text() and "def broken" not in text


def test_input_errors_still_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv(cli.LOG_DIR_ENV, str(tmp_path / "logs"))

    def bad_input(*args, **kwargs):
        raise InputError(tmp_path / "a.wav", "audio is empty")

    monkeypatch.setattr("lipsync.render.render", bad_input)
    result = CliRunner().invoke(cli.app, ["render", "--character", "c", "--audio", "a.wav", "-o",
                                          str(tmp_path / "o.mp4")])
    assert result.exit_code == 2 and "a.wav: audio is empty" in " ".join(result.output.split())
    assert not (tmp_path / "logs").exists()
