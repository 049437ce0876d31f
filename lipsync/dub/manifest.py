"""The manifest as one small record per finished item: written once, atomically, merged on read.

    <output_root>/_manifest/<item id>.json   the entry of one published output (report.manifest_entry):
                                              input key, output URI, frames, size, sha256, finished_at
    <output_root>/_manifest.json             legacy: one file holding every entry (read, never written)

Why one object per item: the old single `_manifest.json` was rewritten whole after every stitch
(O(n^2) bytes, a full PUT per item on S3), and two runs on one output root overwrote each
other's entries. A record per item is a single atomic PUT (storage.write_json: temp + rename
locally, one PUT on S3) that no other item's write can touch, so two concurrent runs over
different items never lose an entry; two runs writing the same item both describe a verified
publish of that item and the later one wins, as it does for the output file itself.

A record takes precedence over a legacy entry of the same item. A plan task reads only its own
item's record (`read_entry`); `read_all` merges everything (tests, tools) in O(n) reads, issued
concurrently through fsspec's batched `cat`.
"""

from __future__ import annotations

import json
from typing import Any

from lipsync.dub.report import read_manifest as read_legacy_manifest
from lipsync.io import storage

MANIFEST_DIR = "_manifest"
RECORD_SUFFIX = ".json"


def record_uri(output_root: str, item_id: str) -> str:
    return storage.join(output_root, MANIFEST_DIR, item_id + RECORD_SUFFIX)


def write_record(output_root: str, item_id: str, entry: dict[str, Any]) -> int:
    """Write the item's record (atomic, replaces an older one); returns the bytes written."""
    text = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    storage.write_text(record_uri(output_root, item_id), text)
    return len(text.encode())


def read_entry(output_root: str, item_id: str, legacy: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The item's record, else its legacy `_manifest.json` entry (`legacy`), else None.

    A corrupt record counts as absent: the plan then verifies the output against the item's
    output.json or refuses it as foreign, so nothing is skipped or replaced on a bad record.
    """
    uri = record_uri(output_root, item_id)
    if not storage.exists(uri):
        return legacy
    try:
        entry = storage.read_json(uri)
    except ValueError:
        return legacy
    return entry if isinstance(entry, dict) else legacy


def read_all(output_root: str) -> dict[str, dict[str, Any]]:
    """id -> entry: the legacy manifest overlaid with every per-item record (O(n), batched reads)."""
    entries = dict(read_legacy_manifest(output_root))
    fs, path = storage.filesystem(storage.join(output_root, MANIFEST_DIR))
    try:
        names = [p for p in fs.ls(path, detail=False) if p.endswith(RECORD_SUFFIX)]
    except FileNotFoundError:
        return entries
    for p, raw in sorted(fs.cat(names, on_error="omit").items()):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries[storage.name(p)[: -len(RECORD_SUFFIX)]] = entry
    return entries
