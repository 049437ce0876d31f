"""Storage problems found before any work: one line naming the URI, exit 2 (issue 11, item 8)."""

from __future__ import annotations

import socket
import time

from typer.testing import CliRunner

from lipsync_cli.main import app

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(result) -> str:
    return " ".join(result.output.split())


def test_render_output_that_is_a_directory(tmp_path):
    (tmp_path / "out.mp4").mkdir()
    result = runner.invoke(app, ["render", "--character", str(tmp_path / "c"), "--audio", str(tmp_path / "a.wav"),
                                 "-o", str(tmp_path / "out.mp4")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'out.mp4'}: is a directory" in _one_line(result)


def test_render_output_under_a_file(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    out = tmp_path / "blocker" / "out.mp4"
    result = runner.invoke(app, ["render", "--character", str(tmp_path / "c"), "--audio", str(tmp_path / "a.wav"),
                                 "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert str(out) in _one_line(result) and "is a file" in _one_line(result)


def test_render_unreachable_s3_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_S3_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    started = time.monotonic()
    result = runner.invoke(app, ["render", "--character", str(tmp_path / "c"), "--audio", "s3://bucket/a.wav",
                                 "-o", str(tmp_path / "out.mp4")])
    assert result.exit_code == 2, result.output
    text = _one_line(result)
    assert text.startswith("error: s3://bucket/a.wav:") and "Traceback" not in result.output
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out.mp4").exists()


def test_eval_json_output_that_is_a_directory(tmp_path):
    (tmp_path / "m.json").mkdir()
    result = runner.invoke(app, ["eval", "--dataset", str(tmp_path / "ds"), "--character", str(tmp_path / "c"),
                                 "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 2, result.output
    assert "m.json" in _one_line(result)
