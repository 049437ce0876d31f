"""Dub catalogs: one row per output video, read from CSV or JSONL and validated up front.

Columns (CSV header or JSON keys):
    id           required  safe name: letters, digits, `_`, `-`, `.`; no path separators, no `..`
    character    required  character bundle URI
    audio        required  audio URI (anything ffmpeg decodes)
    output       optional  output URI (.mp4); default <output_root>/<id>.mp4
    start_frame  optional  int >= 0: first template frame of the bounce walk (default 0)
    crf          optional  int 0..51: H.264 quality of this item (default: the run's crf)
    overwrite    optional  true/false (also yes/no, 1/0): replace a file at `output` that this job
                           did not write (default false: such an item fails, the file stays)

Relative paths in `character` and `audio` are resolved against the directory the catalog lies
in (like a playlist), so a catalog and its media can move together; a relative `output` is
resolved against the output root.

Outputs are checked against each other and against the inputs, with URIs normalised first
(`/r/a.mp4`, `file:///r/a.mp4`, `/r/x/../a.mp4` and `/r//a.mp4` are one file; local paths also
through symlinks): two rows with one output, an output that is an input of any row (an audio
file, a character bundle or a file inside one, the catalog itself), an output under the root's
`_work/` or `_reports/`, and -- unless `allow_outputs_outside_root` -- an output outside the
output root are catalog errors.

Rows are the data records numbered from 1 in the order they appear: the CSV header and blank
lines are not rows (in a spreadsheet, CSV row N is line N + 1). Every problem is an `InputError(catalog_uri,
"row N: ...")`; the whole catalog is rejected before anything runs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable

from lipsync.errors import InputError
from lipsync.io import storage

REQUIRED_COLUMNS = ("id", "character", "audio")
OPTIONAL_COLUMNS = ("output", "start_frame", "crf", "overwrite")
ALL_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
URI_COLUMNS = ("character", "audio", "output")
OUTPUT_SUFFIX = ".mp4"
MAX_ID_LENGTH = 128
CRF_RANGE = (0, 51)  # libx264
RESERVED_DIRS = ("_work", "_reports")  # the run's bookkeeping under the output root (plan.py, report.py)
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
# Word characters (any script), '.', '-'; must not start with '.' (hidden files, "..").
_SAFE_ID = re.compile(r"^[^\W][\w.\-]*$")


@dataclass(frozen=True)
class CatalogItem:
    """One output of a dub run (URIs already resolved)."""

    id: str
    character: str
    audio: str
    output: str
    start_frame: int = 0
    crf: int | None = None  # None: the run's default
    row: int = 0  # where it came from, for messages
    overwrite: bool = False  # may replace a file at `output` that no earlier run of this job wrote


def read_catalog(uri: str, output_root: str, *, allow_outputs_outside_root: bool = False) -> list[CatalogItem]:
    """Read and validate the catalog at `uri` (.csv or .jsonl/.ndjson)."""
    fmt = catalog_format(uri)
    if not storage.exists(uri):
        raise InputError(uri, "catalog not found")
    try:
        text = storage.read_text(uri)
    except UnicodeDecodeError:
        raise InputError(uri, "catalog is not UTF-8 text") from None
    return parse_catalog(text, fmt, uri, output_root, allow_outputs_outside_root=allow_outputs_outside_root)


def catalog_format(uri: str) -> str:
    """"csv" or "jsonl", from the file extension."""
    suffix = PurePosixPath(storage.name(uri)).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise InputError(uri, f"unknown catalog format {suffix or '(no extension)'!r}: use .csv or .jsonl")


def parse_catalog(text: str, fmt: str, source: str, output_root: str, *,
                  allow_outputs_outside_root: bool = False) -> list[CatalogItem]:
    """Parse catalog `text` ("csv" | "jsonl"); `source` is its URI (messages, relative paths)."""
    rows = _csv_rows(text, source) if fmt == "csv" else _jsonl_rows(text, source)
    if not rows:
        raise InputError(source, "catalog has no rows")
    base, default_prefix = _parent(source), storage.join(output_root, "")  # "<root>/"
    items = [_to_item(row_no, raw, source, base, output_root, default_prefix) for row_no, raw in rows]
    uris = CatalogUris()
    _check_unique(items, source, uris)
    _check_outputs(items, source, output_root, allow_outputs_outside_root, uris)
    return items


# ---------------------------------------------------------------------------------------------
# reading rows


def _csv_rows(text: str, source: str) -> list[tuple[int, dict[str, Any]]]:
    """(row number, {column: non-blank cell}) per data record; blank lines are not records.

    csv.reader rather than DictReader: a third of the time at 100,000 rows, the same records.
    """
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")), skipinitialspace=True)
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise InputError(source, "catalog is empty (no header line)")
    _check_header(header, source)
    rows = []
    row_no = 0
    for cells in reader:
        if not cells:  # a blank line
            continue
        row_no += 1
        if len(cells) > len(header):
            raise InputError(source, f"row {row_no}: {len(cells)} cells but the header has {len(header)} columns")
        rows.append((row_no, {k: v for k, v in zip(header, cells) if v.strip()}))
    return rows


def _check_header(header: list[str], source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(source, f"header: missing column(s) {', '.join(map(repr, missing))} "
                                 f"(required: {', '.join(REQUIRED_COLUMNS)})")
    unknown = [c for c in header if c not in ALL_COLUMNS]
    if unknown:
        raise InputError(source, f"header: unknown column(s) {', '.join(map(repr, unknown))} "
                                 f"(known: {', '.join(ALL_COLUMNS)})")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise InputError(source, f"header: column(s) {', '.join(map(repr, dupes))} appear more than once")


def _jsonl_rows(text: str, source: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    for row_no, line in enumerate(lines, start=1):
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(source, f"row {row_no}: not valid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise InputError(source, f"row {row_no}: expected a JSON object, got {type(raw).__name__}")
        missing = [c for c in REQUIRED_COLUMNS if c not in raw]
        if missing:
            raise InputError(source, f"row {row_no}: missing column(s) {', '.join(map(repr, missing))}")
        unknown = [c for c in raw if c not in ALL_COLUMNS]
        if unknown:
            raise InputError(source, f"row {row_no}: unknown column(s) {', '.join(map(repr, unknown))} "
                                     f"(known: {', '.join(ALL_COLUMNS)})")
        rows.append((row_no, {k: v for k, v in raw.items() if v is not None and str(v).strip() != ""}))
    return rows


# ---------------------------------------------------------------------------------------------
# one row -> CatalogItem


def _to_item(row_no: int, raw: dict[str, Any], source: str, base: str, output_root: str,
             default_prefix: str) -> CatalogItem:
    """One row as a CatalogItem; `default_prefix` is storage.join(output_root, "") (once per catalog)."""
    def bad(problem: str) -> InputError:
        return InputError(source, f"row {row_no}: {problem}")

    for col in REQUIRED_COLUMNS:
        if col not in raw:
            raise bad(f"empty {col!r}")
    item_id = str(raw["id"]).strip()
    id_problem = unsafe_id_reason(item_id)
    if id_problem:
        raise bad(f"unsafe id {item_id!r}: {id_problem}")
    for col in URI_COLUMNS:
        if col in raw and not isinstance(raw[col], str):
            raise bad(f"{col!r} must be a string, got {raw[col]!r}")
    if "output" in raw:
        output = resolve_uri(raw["output"].strip(), output_root)
    else:
        output = default_prefix + item_id + OUTPUT_SUFFIX  # = default_output(output_root, item_id): no "/" in ids
    if not output.lower().endswith(OUTPUT_SUFFIX):
        raise bad(f"output {output!r} must end with {OUTPUT_SUFFIX}")
    start_frame = _int_cell(raw, "start_frame", bad, minimum=0)
    crf = _int_cell(raw, "crf", bad, minimum=CRF_RANGE[0], maximum=CRF_RANGE[1])
    overwrite = _bool_cell(raw, "overwrite", bad)
    return CatalogItem(
        id=item_id,
        character=resolve_uri(raw["character"].strip(), base),
        audio=resolve_uri(raw["audio"].strip(), base),
        output=output,
        start_frame=0 if start_frame is None else start_frame,
        crf=crf,
        row=row_no,
        overwrite=overwrite,
    )


def unsafe_id_reason(item_id: str) -> str | None:
    """Why `item_id` cannot name files and keys (None when it can).

    Ids become file names (<id>.mp4) and key prefixes (_work/<run>/<id>/), so they must not
    escape the output root or hide: no separators, no `..`, no leading dot, no spaces.
    """
    if not item_id:
        return "empty"
    if "/" in item_id or "\\" in item_id:
        return "contains a path separator"
    if ".." in item_id:
        return "contains '..'"
    if len(item_id) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if not _SAFE_ID.match(item_id):
        return "use letters, digits, '_', '-' and '.', not starting with '.' or '-'"
    return None


def _int_cell(raw: dict[str, Any], col: str, bad, minimum: int, maximum: int | None = None) -> int | None:
    if col not in raw:
        return None
    value = raw[col]
    if isinstance(value, bool) or not (isinstance(value, int) or re.fullmatch(r"\s*[+-]?\d+\s*", str(value))):
        raise bad(f"{col} must be an integer, got {value!r}")
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise bad(f"{col} must be {allowed}, got {number}")
    return number


def _bool_cell(raw: dict[str, Any], col: str, bad) -> bool:
    if col not in raw:
        return False
    value = raw[col]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise bad(f"{col} must be true or false, got {value!r}")


def _check_unique(items: list[CatalogItem], source: str, normalise: Callable[[str], str]) -> None:
    first_id: dict[str, CatalogItem] = {}
    first_output: dict[str, CatalogItem] = {}
    for item in items:
        if item.id in first_id:
            raise InputError(source, f"row {item.row}: duplicate id {item.id!r} (first on row {first_id[item.id].row})")
        first_id[item.id] = item
        key = normalise(item.output)
        if key in first_output:
            other = first_output[key]
            raise InputError(source, f"row {item.row}: duplicate output {item.output!r} "
                                     f"(also the output of row {other.row}, id {other.id!r})")
        first_output[key] = item


def _check_outputs(items: list[CatalogItem], source: str, output_root: str, allow_outside_root: bool,
                   normalise: Callable[[str], str]) -> None:
    """No output may replace an input, the catalog or the run's bookkeeping, or leave the root."""
    inputs: dict[str, tuple[str, CatalogItem]] = {}
    for item in items:
        inputs.setdefault(normalise(item.audio), ("audio", item))
        inputs.setdefault(normalise(item.character), ("character bundle", item))
    bundles = {normalise(i.character): i for i in items}
    catalog, root = normalise(source), normalise(output_root)
    for item in items:
        out = normalise(item.output)

        def bad(problem: str) -> InputError:
            return InputError(source, f"row {item.row}: output {item.output!r} {problem}")

        if out == catalog:
            raise bad("is the catalog itself")
        if out in inputs:
            kind, other = inputs[out]
            raise bad(f"is the {kind} of row {other.row} (id {other.id!r}): an output must not replace an input")
        for bundle, other in bundles.items():
            if is_within(out, bundle):
                raise bad(f"lies inside the character bundle of row {other.row} (id {other.id!r})")
        relative = relative_to(out, root)
        if relative is None:
            if not allow_outside_root:
                raise bad(f"is outside the output root {output_root!r} (set allow_outputs_outside_root "
                          f"to write there)")
        elif relative.split("/", 1)[0] in RESERVED_DIRS:
            raise bad(f"lies in the run's bookkeeping directory {relative.split('/', 1)[0]}/ of the output root")


# ---------------------------------------------------------------------------------------------
# URIs


def default_output(output_root: str, item_id: str) -> str:
    return storage.join(output_root, item_id + OUTPUT_SUFFIX)


def _has_scheme(uri: str) -> bool:
    return "://" in uri


def _parent(uri: str) -> str:
    if _has_scheme(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return posixpath.dirname(uri) or "."


def resolve_uri(uri: str, base: str) -> str:
    """`uri` as given when absolute or with a scheme; else relative to `base` (the catalog's dir)."""
    if _has_scheme(uri) or uri.startswith("/"):
        return uri
    if _has_scheme(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, uri))}"
    return posixpath.normpath(posixpath.join(base, uri))


_LOCAL_SCHEMES = ("", "file", "local")
_SCHEME_ALIASES = {"s3a": "s3"}


def normalise_uri(uri: str, realpath: Callable[[str], str] = os.path.realpath) -> str:
    """One spelling per location, for comparing URIs (never for opening them).

    Local paths and file:// URIs become `file://<absolute path>` with symlinks, `.`, `..` and
    repeated slashes resolved (os.path.realpath); other URIs keep their scheme (lower case, s3a
    = s3) and bucket, and their key is normalised the same way (`a//b`, `a/./b`, `a/x/../b` are
    `a/b`: object stores would keep them apart, but writing one while reading the other is
    never what a catalog means). A trailing slash is dropped.
    """
    text = str(uri).strip()
    scheme, rest = ("", text)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
    if scheme in _LOCAL_SCHEMES:
        return "file://" + realpath(rest or ".")
    bucket, _, key = rest.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/") if key else ""
    if key.startswith("/"):  # normpath keeps a leading "//"
        key = key.lstrip("/")
    scheme = _SCHEME_ALIASES.get(scheme, scheme)
    return f"{scheme}://{bucket}/{key}" if key and key != "." else f"{scheme}://{bucket}"


class CatalogUris:
    """`normalise_uri` for one catalog's checks: each distinct URI, and each local directory, resolved once.

    The checks normalise five URIs per row, and os.path.realpath lstat()s every component of every
    path: 4.5 s of `read_catalog` at 100,000 rows, all before the first shard could start. A catalog
    names few directories and repeats its inputs, so the realpath of a plain absolute path here is
    the cached realpath of its directory joined with its name, unless the name is itself a symlink
    (each directory is listed once for its symlinks). Paths with `.`/`..` components (whose meaning
    depends on the symlinks before them), repeated slashes or hidden names go through
    os.path.realpath whole. Either way the answer is os.path.realpath's. Scoped to one validation,
    so nothing stale outlives it.
    """

    def __init__(self) -> None:
        self._uris: dict[str, str] = {}
        self._dirs: dict[str, tuple[str, frozenset[str]]] = {}  # directory -> (its realpath, its symlinks' names)

    def __call__(self, uri: str) -> str:
        key = self._uris.get(uri)
        if key is None:
            key = self._uris[uri] = normalise_uri(uri, self.realpath)
        return key

    def realpath(self, path: str) -> str:
        if not path.startswith("/") or "//" in path or "/." in path or path.endswith("/"):
            return os.path.realpath(path)
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        known = self._dirs.get(parent)
        if known is None:
            known = self._dirs[parent] = (os.path.realpath(parent), _symlink_names(parent))
        real_parent, links = known
        if name in links:
            return os.path.realpath(path)
        return real_parent.rstrip("/") + "/" + name


def _symlink_names(directory: str) -> frozenset[str]:
    """Names of the symlinks in `directory` (none when it cannot be listed: it does not exist yet)."""
    try:
        with os.scandir(directory) as entries:
            return frozenset(e.name for e in entries if e.is_symlink())
    except OSError:
        return frozenset()


def relative_to(uri: str, root: str) -> str | None:
    """`uri`'s path below `root` ("a/b.mp4"), both normalised; None when it is not below root."""
    prefix = root if root.endswith("/") else root + "/"  # "file:///" is the one root ending in "/"
    return uri[len(prefix):] if uri.startswith(prefix) and len(uri) > len(prefix) else None


def is_within(uri: str, directory: str) -> bool:
    """`uri` (normalised) lies inside `directory` (normalised), not equal to it."""
    return relative_to(uri, directory) is not None
