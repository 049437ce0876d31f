"""Shared by the benchmarks: the real clips they run on, the machine line, recording results."""

from __future__ import annotations

import datetime
import os
import platform
import re
import resource
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
BENCHMARKS_MD = REPO / "docs" / "BENCHMARKS.md"
CACHE = Path(os.environ.get("LIPSYNC_BENCH_CACHE", "/tmp/lipsync-bench"))


def media_file(name: str) -> Path:
    path = MEDIA / name
    if not path.exists():
        raise SystemExit(f"{path}: not found (benchmarks run on the real clips in ../shared/media)")
    return path


def speech_path() -> Path:
    return media_file("sadtalker_RD_Radio34_002.wav")


def bench_dataset(video: str = "edtalk_uncrop_Obama.mp4") -> Path:
    """The prepared dataset of a real clip, prepared once into the bench cache."""
    from lipsync.data.prepare import prepare

    out = CACHE / Path(video).stem
    if not (out / "meta.json").exists():
        prepare(str(media_file(video)), Path(video).stem, str(out), overwrite=True)
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM, which starts afresh at exec. ru_maxrss carries the
    parent's peak across fork + exec (Linux keeps the larger): a benchmark's child process read its
    parent's RSS whenever the parent was the bigger (measured: 613 MB read for a 14 MB child)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_line() -> str:
    import torch  # here: a benchmark's driver-side child must not pay for torch by importing this module

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"Machine: {os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}; date {datetime.date.today().isoformat()}")


def record_section(name: str, body: str) -> None:
    """Replace (or add) the section `## <name>` of docs/BENCHMARKS.md with `body`."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS_MD.write_text(text)
