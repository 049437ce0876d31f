"""`lipsync info PATH`: what a character bundle, a prepared dataset or a dub report holds.

`describe(uri)` reads only the small JSON files (bundle.json, meta.json, the report itself, or
the newest report under a dub output root: no weights, no frames) and returns a plain dict with a "kind" ("bundle" | "dataset" | "dub_report");
`lines(info)` is its human form. InputError (one line, exit 2) for a path that is none of them.
"""

from __future__ import annotations

import json
from typing import Any

from lipsync.data import layout
from lipsync.dub.report import REPORTS_DIR, STATUSES
from lipsync.errors import InputError
from lipsync.io import storage

KINDS = ("bundle", "dataset", "dub_report")
BUNDLE_FILE = "bundle.json"  # lipsync.bundle.BUNDLE_FILE, not imported: that module imports torch (seconds)
SYNC_CHANCE_ACCURACY = 0.5  # balanced accuracy of a SyncNet that cannot tell in-sync from shifted audio


def describe(uri: str) -> dict[str, Any]:
    """The facts `lipsync info` shows for `uri` (a bundle or dataset directory, or a dub report JSON)."""
    with storage.as_input_error(uri):
        if not storage.exists(uri):
            raise InputError(uri, "not found")
        if storage.exists(storage.join(uri, BUNDLE_FILE)):
            return bundle_info(uri, _read_json(storage.join(uri, BUNDLE_FILE)))
        if storage.exists(storage.join(uri, layout.META_FILE)):
            return dataset_info(uri, _read_json(storage.join(uri, layout.META_FILE)))
        newest = newest_report(uri)
        if newest is not None:  # a dub output root: its latest run
            uri = newest
        if str(uri).endswith(".json"):
            report = _read_json(uri)
            if isinstance(report, dict) and isinstance(report.get("counts"), dict) and "items" in report:
                return report_info(uri, report)
    raise InputError(uri, f"not a character bundle (no {BUNDLE_FILE}), a prepared dataset (no {layout.META_FILE}), "
                          f"a dub report or a dub output root (no {REPORTS_DIR}/*.json)")


def newest_report(output_root: str) -> str | None:
    """The latest run's report under a dub output root (`_reports/<UTC timestamp>.json`), or None."""
    reports_dir = storage.join(output_root, REPORTS_DIR)
    if not storage.exists(reports_dir):
        return None
    reports = [n for n in storage.ls(reports_dir) if n.endswith(".json") and not n.endswith("-progress.json")]
    return storage.join(reports_dir, reports[-1]) if reports else None


def _read_json(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(uri, f"corrupt JSON ({' '.join(str(exc).split())[:80]})") from None


def bundle_info(uri: str, info: dict[str, Any]) -> dict[str, Any]:
    train = info.get("train") or {}
    features = info.get("audio_features") or {"backend": "ave", "weights": None}
    meta = info.get("dataset_meta") or {}
    faceless = info.get("frames_without_face")
    return {
        "kind": "bundle",
        "path": str(uri),
        "name": info.get("name"),
        "version": info.get("version"),
        "bundle_format": info.get("bundle_format"),
        "preset": info.get("preset"),
        "audio_features": features,
        "train_steps": {"syncnet": train.get("syncnet_steps"), "generator": train.get("generator_steps")},
        "device": train.get("device"),
        "world_size": train.get("world_size"),
        "held_out": {
            "syncnet_accuracy": train.get("syncnet_val_acc"),
            "syncnet_accuracy_chance": SYNC_CHANCE_ACCURACY,
            "l1": train.get("val_l1"),
            "l1_reference_copy": train.get("val_l1_reference_copy"),
        },
        "frames": info.get("n_templates"),
        "frames_without_face": len(faceless) if isinstance(faceless, list) else meta.get("frames_without_face"),
        "frame_size": info.get("frame_size"),
        "crop_margin": info.get("crop_margin"),
        "dataset": meta.get("name"),
        "tool_version": (meta.get("tool") or {}).get("version"),
    }


def dataset_info(uri: str, meta: dict[str, Any]) -> dict[str, Any]:
    faceless = meta.get("frames_without_face") or []
    source = meta.get("source") or {}
    return {
        "kind": "dataset",
        "path": str(uri),
        "name": meta.get("name"),
        "dataset_format": meta.get("dataset_format"),
        "frames": meta.get("n_frames"),
        "fps": meta.get("fps"),
        "frames_without_face": len(faceless),
        "frame_size": meta.get("frame_size"),
        "audio_seconds": (meta.get("audio") or {}).get("duration"),
        "source": source.get("file"),
        "created": meta.get("created"),
        "tool_version": (meta.get("tool") or {}).get("version"),
    }


def report_info(uri: str, report: dict[str, Any]) -> dict[str, Any]:
    items = report.get("items") or []
    counts = {s: int(report["counts"].get(s, 0)) for s in STATUSES}
    return {
        "kind": "dub_report",
        "path": str(uri),
        "counts": counts,
        "items": sum(counts.values()),
        "frames_rendered": report.get("frames_rendered"),
        "frames_per_second": report.get("frames_per_second"),
        "seconds": (report.get("timings") or {}).get("total_s"),
        "failures": [{"row": r.get("row"), "id": r.get("id"), "error": r.get("error")}
                     for r in items if r.get("status") == "failed"],
    }


def lines(info: dict[str, Any]) -> list[str]:
    """`describe`'s dict for people, one fact a line."""
    return {"bundle": _bundle_lines, "dataset": _dataset_lines, "dub_report": _report_lines}[info["kind"]](info)


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "not recorded"


def _bundle_lines(info: dict[str, Any]) -> list[str]:
    steps, held = info["train_steps"], info["held_out"]
    features = info["audio_features"]
    total = sum(v for v in steps.values() if isinstance(v, int))
    l1, ref = held["l1"], held["l1_reference_copy"]
    verdict = ""
    if isinstance(l1, (int, float)) and isinstance(ref, (int, float)):
        verdict = " (below the baseline)" if l1 < ref else " (NOT below the baseline: undertrained)"
    return [
        f"character bundle {info['path']}: {info['name']}",
        f"  preset          {info['preset']}",
        f"  audio front-end {features.get('backend')}" + (f" ({features['weights']})" if features.get("weights") else ""),
        f"  train steps     syncnet {steps['syncnet']} + generator {steps['generator']} = {total}"
        + (f" on {info['device']}" if info.get("device") else ""),
        f"  held-out SyncNet accuracy {_num(held['syncnet_accuracy'], '.3f')} "
        f"(chance {held['syncnet_accuracy_chance']:.1f})",
        f"  held-out L1     {_num(l1, '.4f')} vs reference-copy baseline {_num(ref, '.4f')}{verdict}",
        f"  frames          {info['frames']} ({info['frames_without_face']} without a face), "
        f"size {_size(info['frame_size'])}",
        f"  crop_margin     {info['crop_margin']}",
        f"  version         {info['version']}",
    ]


def _size(size: Any) -> str:
    return f"{size[0]}x{size[1]}" if isinstance(size, list) and len(size) == 2 else "not recorded"


def _dataset_lines(info: dict[str, Any]) -> list[str]:
    return [
        f"prepared dataset {info['path']}: {info['name']}",
        f"  frames          {info['frames']} at {info['fps']} fps ({info['frames_without_face']} without a face, "
        "interpolated)",
        f"  audio           {_num(info['audio_seconds'], '.2f')} s",
        f"  frame size      {_size(info['frame_size'])}",
        f"  source          {info['source']}",
        f"  created         {info['created']} by lipsync {info['tool_version']}",
    ]


def _report_lines(info: dict[str, Any]) -> list[str]:
    c = info["counts"]
    out = [
        f"dub report {info['path']}",
        f"  items           {info['items']}: {c['ok']} done, {c['failed']} failed, {c['skipped']} skipped",
        f"  frames          {info['frames_rendered']} ({_num(info['frames_per_second'], '.1f')} frames/s, "
        f"{_num(info['seconds'], '.1f')} s)",
    ]
    out += [f"  failed row {f['row']} {f['id']}: {f['error']}" for f in info["failures"]]
    return out
