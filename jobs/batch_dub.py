"""Batch-dub a catalog on the Ray cluster this job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"LIPSYNC_S3_ENDPOINT": "...", ...}}' \
        -- python jobs/batch_dub.py --catalog s3://bucket/catalog.csv -o s3://bucket/dubbed

Exit codes: 0 every item ok or skipped; 2 the catalog or an option is invalid (nothing ran);
3 the run finished but some items failed (see the report under <output-root>/_reports/).
Only parses arguments: the pipeline is cluster.dub.run_dub (docs/CLUSTER.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir: cluster/, lipsync/

from rich.console import Console  # noqa: E402

from lipsync.config import DubConfig, load_config  # noqa: E402
from lipsync.dub import dub_flags  # noqa: E402
from lipsync.dub.report import summary  # noqa: E402
from lipsync.errors import InputError  # noqa: E402

EXIT_INPUT_ERROR = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--catalog", required=True, help="catalog URI (.csv or .jsonl)")
    p.add_argument("-o", "--out", dest="output_root", default=None,
                   help="output root: URI under which outputs, _work/, _reports/ go (also --output-root)")
    p.add_argument("--output-root", dest="output_root", default=None, help=argparse.SUPPRESS)  # older spelling
    p.add_argument("--address", default=None, help="Ray address (default: the job's cluster)")
    p.add_argument("--shard-frames", type=int, default=None, help="frames per render task")
    p.add_argument("--actors", default=None, help="render actors: N, or MIN:MAX to autoscale")
    p.add_argument("--crf", type=int, default=None, help="H.264 crf for rows without one")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--silence", choices=["rest", "keep"], default=None,
                   help="where the audio has no voice: the character's closed mouth (rest) or the generator's")
    p.add_argument("--overwrite", action="store_true", help="replace files at row outputs this job did not write")
    p.add_argument("--dry-run", action="store_true",
                   help="plan and validate every row, print items, frames, skips and an estimated render "
                        "time; render and write nothing")
    p.add_argument("--json", action="store_true", help="print the report (or the dry-run plan) as JSON on stdout")
    p.add_argument("--config", default=None, help="YAML config (default lipsync/configs/dub.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config key=value (repeatable)")
    args = p.parse_args(argv)
    if not args.output_root:
        p.error("the following arguments are required: -o/--out")  # exit 2
    return args


def log_progress(interval_s: float):
    """A progress callback that prints one line at most every `interval_s` (job logs are files)."""
    last = [float("-inf")]

    def show(progress) -> None:
        now = time.monotonic()
        if now - last[0] >= interval_s or progress.items_done == progress.items_total:
            last[0] = now
            print(f"[dub] {progress.line()}", flush=True)

    return show


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # --json: stdout holds the JSON only; the summary goes to stderr
    console = Console(highlight=False, stderr=args.json)
    try:
        cfg = load_config(DubConfig, args.config, args.overrides,
                          dub_flags(shard_frames=args.shard_frames, actors=args.actors, crf=args.crf,
                                    device=args.device, silence=args.silence))
    except InputError as e:  # bad option or config value
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if args.dry_run:
        return dry_run_main(args, cfg)
    # lazy: option errors above are reported without the seconds a Ray import takes
    from cluster.dub import run_dub

    try:
        run = run_dub(args.catalog, args.output_root, cfg, address=args.address, overwrite=args.overwrite,
                      progress=log_progress(cfg.progress_interval_s))
    except InputError as e:  # the catalog (nothing ran)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    console.print(summary(run.report, run.report_uri))
    if args.json:
        print(json.dumps({"output_root": args.output_root, "report_uri": run.report_uri, **run.report},
                         indent=2, default=str))
    return run.exit_code


def dry_run_main(args: argparse.Namespace, cfg) -> int:
    """--dry-run: no Ray, nothing written (lipsync.dub.dryrun); exit 3 when rows would fail."""
    from lipsync.dub.dryrun import dry_run

    try:
        result = dry_run(args.catalog, args.output_root, cfg, overwrite=args.overwrite)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    if args.json:
        from dataclasses import asdict

        print(json.dumps({"dry_run": True, "output_root": args.output_root, **asdict(result),
                          "estimated_render_s": result.estimated_render_s}, indent=2, default=str))
    else:
        for line in result.lines():
            print(f"[dry-run] {line}", flush=True)
    return 3 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
