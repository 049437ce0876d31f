"""Storage URIs: local paths, `file://...` and `s3://bucket/key`, with atomic publishing.

This is the only module that imports fsspec. Everything else passes URIs (plain strings) around
and calls the functions below; see docs/STORAGE.md for the guarantees.

S3 endpoint and credentials come from the environment (docs/STORAGE.md). The endpoint may
travel in a job's runtime_env; credentials never do (Ray logs runtime envs in plain text): on a
cluster they come from the nodes (instance role, shared credentials file, `ray start`'s env).
  LIPSYNC_S3_ENDPOINT (else AWS_ENDPOINT_URL)   e.g. http://127.0.0.1:8333; unset means AWS
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY      unset means boto's default chain (IAM role, ...)
  LIPSYNC_CACHE_DIR                             root of cached_local_dir's cache

Atomic publishing, in short: readers of a final path/key only ever see a complete file (local:
os.replace of a sibling temp file; S3: an object appears whole) and a directory only counts as
published when its `_COMPLETE` marker exists (local: the directory arrives by one rename, marker
included; S3: the marker object is written after every file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.utils import get_protocol, stringify_path

from lipsync.errors import InputError, OutputExistsError

ENDPOINT_ENV = "LIPSYNC_S3_ENDPOINT"
FALLBACK_ENDPOINT_ENV = "AWS_ENDPOINT_URL"
KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_ENV = "AWS_SECRET_ACCESS_KEY"
CACHE_DIR_ENV = "LIPSYNC_CACHE_DIR"
COMPLETE_MARKER = "_COMPLETE"
LOCAL_PROTOCOLS = ("file", "local")

Uri = str | os.PathLike


# --------------------------------------------------------------------------------------------
# URIs and filesystems


def _as_str(uri: Uri) -> str:
    return stringify_path(uri)


def protocol(uri: Uri) -> str:
    """The URI's protocol: "s3", "file" (also for plain local paths), ..."""
    return get_protocol(_as_str(uri))


def is_remote(uri: Uri) -> bool:
    """True for object-store URIs (s3://...); False for local paths and file:// URIs."""
    return protocol(uri) not in LOCAL_PROTOCOLS


def s3_endpoint() -> str | None:
    return os.environ.get(ENDPOINT_ENV) or os.environ.get(FALLBACK_ENDPOINT_ENV) or None


def s3_options() -> dict[str, Any]:
    """s3fs constructor options taken from the environment (read at every call, never cached).

    No `region_name` is passed: with a custom endpoint, forcing "us-east-1" makes bucket creation
    fail on S3-compatible servers. Listings are not cached, because other processes (Ray
    workers, other nodes) write the same prefixes and a stale listing would hide their output.
    """
    opts: dict[str, Any] = {"use_listings_cache": False}
    endpoint = s3_endpoint()
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    key, secret = os.environ.get(KEY_ENV), os.environ.get(SECRET_ENV)
    if key and secret:
        opts["key"], opts["secret"] = key, secret
    return opts


def filesystem(uri: Uri) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it (no protocol; local paths absolute)."""
    text = _as_str(uri)
    proto = get_protocol(text)
    if proto == "s3":
        fs = fsspec.filesystem("s3", **s3_options())
    elif proto in LOCAL_PROTOCOLS:
        fs = fsspec.filesystem("file", auto_mkdir=True)
    else:  # other fsspec protocols (memory://, gs://, ...) with their own defaults
        fs, path = fsspec.core.url_to_fs(text)
        return fs, path
    return fs, fs._strip_protocol(text)


def join(uri: Uri, *parts: str) -> str:
    """Append path parts to a URI or local path ("/" separators for URIs)."""
    text = _as_str(uri)
    if "://" in text:
        return posixpath.join(text.rstrip("/"), *parts) if parts else text
    return os.path.join(text, *parts)


def name(uri: Uri) -> str:
    """Last component of a URI or path ("s3://b/x/y.mp4" -> "y.mp4")."""
    return posixpath.basename(_as_str(uri).rstrip("/"))


def _parent_and_name(path: str) -> tuple[str, str]:
    path = path.rstrip("/")
    return posixpath.dirname(path), posixpath.basename(path)


def _temp_name(final_name: str, kind: str = "tmp") -> str:
    """A sibling name for `final_name` that no other writer uses: ".name.tmp-<uuid>"."""
    return f".{final_name}.{kind}-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------------------------
# whole-object reads and writes


def exists(uri: Uri) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: Uri) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def write_bytes(uri: Uri, data: bytes) -> None:
    """Write `data` so that readers see either the old content or all of `data`.

    Local: temp file + os.replace. S3: one PUT, which S3 already publishes whole.
    """
    if is_remote(uri):
        fs, path = filesystem(uri)
        fs.pipe_file(path, data)
        return
    with atomic_file(uri) as tmp:
        tmp.write_bytes(data)


def read_text(uri: Uri, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_text(uri: Uri, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def read_json(uri: Uri) -> Any:
    return json.loads(read_bytes(uri))


def json_safe(value: Any) -> Any:
    """Non-finite floats (PSNR of identical images) become null: JSON has no inf (recursive)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(uri: Uri, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def ls(uri: Uri) -> list[str]:
    """Names (not paths) of the entries directly under `uri`, sorted. FileNotFoundError if absent."""
    fs, path = filesystem(uri)
    return sorted(name(p) for p in fs.ls(path, detail=False))


def rm(uri: Uri, recursive: bool = False) -> None:
    """Delete a file (or a directory/prefix with recursive=True). FileNotFoundError if absent."""
    fs, path = filesystem(uri)
    fs.rm(path, recursive=recursive)


def open_uri(uri: Uri, mode: str = "rb", **kwargs: Any) -> IO:
    """A file object for `uri` (streamed for S3). Writes through it are NOT atomic: use atomic_file."""
    fs, path = filesystem(uri)
    return fs.open(path, mode, **kwargs)


# --------------------------------------------------------------------------------------------
# local copies of remote data


@contextlib.contextmanager
def local_copy(uri: Uri) -> Iterator[Path]:
    """Yield a local path holding `uri` (a file or a directory).

    Local URIs are yielded as they are (never deleted). Remote ones are downloaded into a
    fresh temp dir, which is removed on exit: for tools that need a real path (ffmpeg, cv2).
    """
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise InputError(_as_str(uri), "file not found")
    if not is_remote(uri):
        yield Path(path)
        return
    tmp_dir = Path(tempfile.mkdtemp(prefix="lipsync-copy-"))
    try:
        local = tmp_dir / name(uri)
        if fs.isdir(path):
            download_dir(uri, local)
        else:
            fs.get_file(path, str(local))
        yield local
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _files_under(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Relative posix paths of every file under `root` (recursively), sorted."""
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(root)
    return sorted(posixpath.relpath(p, root) for p in fs.find(root))


def download_dir(uri: Uri, local_dir: Uri) -> Path:
    """Copy every file under `uri` into `local_dir` (created), keeping relative paths."""
    fs, path = filesystem(uri)
    dest = Path(_as_str(local_dir))
    rel = _files_under(fs, path)
    dest.mkdir(parents=True, exist_ok=True)
    for r in rel:
        (dest / r).parent.mkdir(parents=True, exist_ok=True)
    if rel:
        fs.get([posixpath.join(path.rstrip("/"), r) for r in rel], [str(dest / r) for r in rel])
    return dest


def upload_dir(local_dir: Uri, uri: Uri, exclude: tuple[str, ...] = ()) -> list[str]:
    """Copy every file under `local_dir` to `uri`, keeping relative paths; returns them.

    Not atomic by itself: atomic_dir builds on it.
    """
    src = Path(_as_str(local_dir))
    if not src.is_dir():
        raise FileNotFoundError(str(src))
    rel = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    rel = [r for r in rel if r not in exclude]
    fs, path = filesystem(uri)
    if rel:
        fs.put([str(src / r) for r in rel], [posixpath.join(path.rstrip("/"), r) for r in rel])
    return rel


def default_cache_root() -> Path:
    """$LIPSYNC_CACHE_DIR, else $XDG_CACHE_HOME/lipsync, else ~/.cache/lipsync."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lipsync"


def cache_key(uri: Uri) -> str:
    """Directory name in the cache for remote `uri`.

    The key holds the endpoint (two servers may both have "s3://bucket/x") and, when the
    directory was published by atomic_dir, the id in its `_COMPLETE` marker: re-publishing a
    directory under the same URI (overwrite=True) then gives a new key instead of a stale hit.
    """
    text = _as_str(uri).rstrip("/")
    marker = join(text, COMPLETE_MARKER)
    publish_id = ""
    if exists(marker):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            publish_id = str(read_json(marker)["id"])
    digest = hashlib.sha256(f"{s3_endpoint()}|{text}|{publish_id}".encode()).hexdigest()[:20]
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in name(text))[:40]
    return f"{readable}-{digest}"


def cached_local_dir(uri: Uri, cache_root: Uri | None = None) -> Path:
    """A local directory with the content of `uri`, downloaded at most once per node.

    For datasets and character bundles that many workers on one node read. Local URIs return
    themselves. Remote ones go to `<cache_root>/<cache_key(uri)>`: downloaded into a temp dir
    beside it, then os.rename'd into place; when two processes race, the rename of the second
    fails because the target exists and it deletes its own copy. A directory in the cache is
    therefore always complete. Cached content is treated as immutable (see cache_key).
    """
    if not is_remote(uri):
        fs, path = filesystem(uri)
        if not fs.isdir(path):
            raise FileNotFoundError(_as_str(uri))
        return Path(path)
    root = Path(_as_str(cache_root)) if cache_root is not None else default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / cache_key(uri)
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        download_dir(uri, tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():  # a real failure, not a lost race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the loser's copy (gone already for the winner)
    return target


# --------------------------------------------------------------------------------------------
# atomic publishing


@contextlib.contextmanager
def atomic_file(uri: Uri, temp_dir: Uri | None = None) -> Iterator[Path]:
    """Yield a local temp path; on normal exit its content appears at `uri` in one step.

    Local: the temp file is `.name.tmp-<uuid>` in the target's directory (same filesystem), and
    os.replace moves it over the target. S3: the file is uploaded to the temp key
    `.name.tmp-<uuid>` beside the target, server-side copied to the final key, and the temp key
    deleted; S3 has no rename, but a copy creates the final object in one step, so readers only
    ever see a complete object there. On an exception nothing is written to the target (an
    existing target is left untouched) and every temp file/key is removed.

    `temp_dir` (same kind as `uri`: both local or both remote) holds the temp file/key instead of
    the target's directory. A process killed mid-write cannot clean up after itself; a batch job
    points this at the item's work prefix, so such a leftover lands there, with the item's other
    work files, and not among the published outputs.
    """
    fs, path = filesystem(uri)
    parent, final = _parent_and_name(path)
    if temp_dir is not None and is_remote(temp_dir) != is_remote(uri):
        raise ValueError(f"temp dir {_as_str(temp_dir)} and target {_as_str(uri)} must both be local or both remote")
    temp_parent = parent if temp_dir is None else filesystem(temp_dir)[1].rstrip("/")
    if not is_remote(uri):
        fs.makedirs(parent, exist_ok=True)
        fs.makedirs(temp_parent, exist_ok=True)
        tmp = Path(temp_parent) / _temp_name(final)
        try:
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written to the temp file for {_as_str(uri)}")
            _replace_local(tmp, Path(path))
        finally:
            tmp.unlink(missing_ok=True)
        return
    local_dir = Path(tempfile.mkdtemp(prefix="lipsync-atomic-"))
    try:
        local = local_dir / final
        yield local
        if not local.exists():
            raise FileNotFoundError(f"nothing was written to the temp file for {_as_str(uri)}")
        remote_tmp = posixpath.join(temp_parent, _temp_name(final))
        try:
            fs.put_file(str(local), remote_tmp)
            fs.cp_file(remote_tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(remote_tmp)
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def _replace_local(src: Path, target: Path) -> None:
    """os.replace; across filesystems (EXDEV) the file is first copied beside the target."""
    try:
        os.replace(src, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        beside = target.parent / _temp_name(target.name)
        try:
            shutil.copyfile(src, beside)
            os.replace(beside, target)
        finally:
            beside.unlink(missing_ok=True)


def dir_is_complete(uri: Uri) -> bool:
    """True when `uri` is a directory published by atomic_dir (its `_COMPLETE` marker exists)."""
    return exists(join(uri, COMPLETE_MARKER))


def _marker_json(n_files: int) -> str:
    return json.dumps({"id": uuid.uuid4().hex, "files": n_files,
                       "published_at": datetime.now(timezone.utc).isoformat()}) + "\n"


def _write_marker(local_dir: Path) -> None:
    n_files = sum(1 for p in local_dir.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
    (local_dir / COMPLETE_MARKER).write_text(_marker_json(n_files))


@contextlib.contextmanager
def atomic_dir(uri: Uri, overwrite: bool = False) -> Iterator[Path]:
    """Yield a local temp dir; on normal exit it is published at `uri` with a `_COMPLETE` marker.

    An existing target raises OutputExistsError(uri) before the body runs, unless `overwrite`.
    Local: the temp dir is a sibling (`.name.tmp-<uuid>`), the marker is written into it and one
    os.rename puts it in place (with overwrite, the old dir is renamed aside first, then
    deleted). S3 (no rename): with overwrite the old prefix is deleted, the files are uploaded
    to the final prefix and the marker is written LAST, so `dir_is_complete` is true only once
    every file is there. On an exception nothing is left at the target.
    """
    if exists(uri) and not overwrite:
        raise OutputExistsError(_as_str(uri))
    if is_remote(uri):
        with _atomic_remote_dir(uri, overwrite) as tmp:
            yield tmp
    else:
        with _atomic_local_dir(uri, overwrite) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_local_dir(uri: Uri, overwrite: bool) -> Iterator[Path]:
    _, path = filesystem(uri)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / _temp_name(target.name)
    tmp.mkdir()
    try:
        yield tmp
        _write_marker(tmp)
        _rename_dir_into_place(tmp, target, overwrite, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_dir_into_place(tmp: Path, target: Path, overwrite: bool, uri: Uri) -> None:
    """os.rename `tmp` to `target`; with overwrite, move an existing target aside first."""
    aside = None
    if target.exists():
        if not overwrite:
            raise OutputExistsError(_as_str(uri))  # appeared while the body ran
        aside = target.parent / _temp_name(target.name, kind="old")
        os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except OSError:
        if aside is not None:
            os.rename(aside, target)  # put the old one back
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _atomic_remote_dir(uri: Uri, overwrite: bool) -> Iterator[Path]:
    fs, path = filesystem(uri)
    tmp = Path(tempfile.mkdtemp(prefix="lipsync-atomic-dir-"))
    try:
        yield tmp
        if fs.exists(path):
            if not overwrite:
                raise OutputExistsError(_as_str(uri))  # appeared while the body ran
            fs.rm(path, recursive=True)
        try:
            upload_dir(tmp, uri, exclude=(COMPLETE_MARKER,))
            _write_marker(tmp)
            fs.put_file(str(tmp / COMPLETE_MARKER), posixpath.join(path.rstrip("/"), COMPLETE_MARKER))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path, recursive=True)  # a half-uploaded prefix must not stay behind
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a local file, read in chunks (input keys for re-runs, source hashes in meta)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# preflight: check inputs and outputs before any work, one line per problem

PREFLIGHT_CONNECT_TIMEOUT_S = 3.0  # an endpoint that does not answer fails within seconds
PREFLIGHT_READ_TIMEOUT_S = 10.0
PREFLIGHT_ATTEMPTS = 2  # per request (botocore), and s3fs's own retries of transient errors
_PROBE_PREFIX = ".lipsync-write-check-"

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "AuthorizationHeaderMalformed", "InvalidClientTokenId", "TokenRefreshRequired"}


def _preflight_fs(uri: Uri) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of `uri`; for S3 a fresh client with short timeouts and few retries."""
    if protocol(uri) != "s3":
        return filesystem(uri)
    opts = s3_options()
    opts["config_kwargs"] = {"connect_timeout": PREFLIGHT_CONNECT_TIMEOUT_S,
                             "read_timeout": PREFLIGHT_READ_TIMEOUT_S,
                             "retries": {"total_max_attempts": PREFLIGHT_ATTEMPTS, "mode": "standard"}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    fs.retries = PREFLIGHT_ATTEMPTS
    return fs, fs._strip_protocol(_as_str(uri))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def storage_failure_reason(exc: BaseException, uri: Uri) -> str:
    """One line saying why an access to `uri` failed (botocore, aiohttp and OS errors)."""
    names = {type(e).__name__ for e in _causes(exc)}
    endpoint = s3_endpoint() or "AWS S3"
    if is_remote(uri):
        for e in _causes(exc):
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", "")) if hasattr(e, "response") else ""
            if code in _CREDENTIAL_CODES:
                return f"S3 rejected the credentials ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            if code in {"403", "AccessDenied", "AllAccessDisabled"}:
                return ("access denied by S3 (403): wrong credentials, or they may not use this bucket; "
                        "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
            if code == "NoSuchBucket":
                return "the bucket does not exist"
        if names & {"NoCredentialsError", "PartialCredentialsError"}:
            return "no S3 credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or use an instance role)"
        if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionRefusedError",
                    "ClientConnectorError", "ConnectionError", "ReadTimeoutError", "ServerDisconnectedError",
                    "TimeoutError", "FSTimeoutError"}:
            return (f"cannot reach the S3 endpoint {endpoint} (connection refused or timed out; "
                    f"check {ENDPOINT_ENV})")
        if isinstance(exc, PermissionError):
            return f"access denied by S3 ({' '.join(str(exc).split())[:120]})"
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, NotADirectoryError):
        return "a parent of this path is a file, not a directory"
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if getattr(exc, "errno", None) == errno.EROFS:
        return "read-only file system"
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return "no space left on the device"
    text = " ".join(str(exc).split())[:160]
    return f"storage error ({type(exc).__name__}: {text})" if text else f"storage error ({type(exc).__name__})"


@contextlib.contextmanager
def as_input_error(uri: Uri, doing: str = "") -> Iterator[None]:
    """Turn any storage failure inside the block into InputError(uri, reason)."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # botocore/aiohttp/OS errors: all become one line naming the URI
        reason = storage_failure_reason(exc, uri)
        raise InputError(_as_str(uri), f"{doing}: {reason}" if doing else reason) from None


def check_readable(uri: Uri) -> None:
    """InputError(uri, reason) unless `uri` (a file or a directory) exists and can be read.

    Reads one byte of a file (or lists a directory), so missing files, wrong credentials, an
    unreachable endpoint and unreadable local files all fail here, within a few seconds.
    """
    fs, path = _preflight_fs(uri)
    with as_input_error(uri):
        info = fs.info(path)
        if info.get("type") == "directory":
            fs.ls(path, detail=False)
        elif is_remote(uri):
            fs.cat_file(path, start=0, end=1)
        else:
            with open(path, "rb") as f:
                f.read(1)


def check_writable_dir(uri: Uri) -> None:
    """InputError(uri, reason) unless files can be written under the directory (or prefix) `uri`.

    Local: the directory is created when missing (as writes would), must not be a file, and a
    probe file is created in it and removed. S3: a probe object is written under the prefix and
    deleted, which fails on wrong credentials, a missing bucket (where the server does not
    create one) or an unreachable endpoint.
    """
    fs, path = _preflight_fs(uri)
    probe = posixpath.join(path.rstrip("/"), _PROBE_PREFIX + uuid.uuid4().hex)
    if not is_remote(uri):
        with as_input_error(uri):
            target = Path(path)
            if target.exists() and not target.is_dir():
                raise InputError(_as_str(uri), "is a file, expected a directory")
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(_as_str(uri), f"cannot create the directory: {storage_failure_reason(exc, uri)}"
                                 ) from None
            try:
                fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except OSError as exc:
                raise InputError(_as_str(uri), f"directory is not writable: {storage_failure_reason(exc, uri)}"
                                 ) from None
            os.close(fd)
            os.unlink(probe)
        return
    with as_input_error(uri):
        if path.rstrip("/").count("/") > 0 and fs.isfile(path.rstrip("/")):
            raise InputError(_as_str(uri), "is an object (a file), expected a prefix (directory)")
    with as_input_error(uri, "cannot write there"):
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)


def check_output_path(uri: Uri) -> None:
    """InputError(uri, reason) unless a file can be published at `uri`.

    The path must not be a directory (an existing one, a prefix with objects under it, or a
    URI ending in "/"), and its parent must be a writable directory (check_writable_dir).
    Whether an existing file there may be replaced is the caller's overwrite decision.
    """
    text = _as_str(uri)
    if text.endswith(("/", os.sep)):
        raise InputError(text, "is a directory path, expected a file path")
    fs, path = _preflight_fs(uri)
    if is_remote(uri) and "/" not in path.strip("/"):
        raise InputError(text, "has no object key (expected s3://bucket/key)")
    with as_input_error(uri):
        if fs.isdir(path):
            raise InputError(text, "is a directory, expected a file path")
    parent = posixpath.dirname(text) if "://" in text else os.path.dirname(os.path.abspath(text))
    try:
        check_writable_dir(parent)
    except InputError as exc:
        raise InputError(text, f"its directory {parent}: {exc.problem}") from None
