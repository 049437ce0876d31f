"""Train a character with Ray Train on the cluster this job was submitted to (or a local Ray).

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env-json '{"env_vars": {"LIPSYNC_S3_ENDPOINT": "..."}}' \
        -- python jobs/train_character.py --dataset s3://bucket/datasets/obama \
           -o s3://bucket/characters/obama --preset st2d-328 --workers 4 --device cuda \
           --storage-path s3://bucket/ray-train --run-name obama-st2d-328

`--video URI --name NAME` instead of `--dataset` prepares the video first (one Ray task) into
`--dataset-out` (default <storage-path>/<run-name>/dataset). Exit code 2: an input or option is
invalid (nothing was trained). Only parses arguments: the work is cluster.train (docs/TRAINING.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir: cluster/, lipsync/

from lipsync.config import PrepareConfig, TrainConfig, load_config  # noqa: E402
from lipsync.errors import InputError  # noqa: E402
from lipsync.io import storage  # noqa: E402

EXIT_INPUT_ERROR = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="prepared dataset URI")
    src.add_argument("--video", help="raw talking-head video URI (prepared first)")
    p.add_argument("--name", default=None, help="character name (with --video)")
    p.add_argument("--dataset-out", default=None, help="where --video's dataset goes")
    p.add_argument("-o", "--out", required=True, help="character bundle URI to create")
    p.add_argument("--preset", default=None, help="tiny | st2d-160 | st2d-328 (default: the config's)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (one GPU each with --gpu)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="cuda: one GPU per worker (DDP over NCCL); default cpu")
    p.add_argument("--gpu", action="store_true", help="the same as --device cuda (older spelling)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--storage-path", required=True, help="RunConfig storage path for checkpoints (path or s3://)")
    p.add_argument("--run-name", default=None, help="run name under the storage path (default: bundle name)")
    p.add_argument("--max-failures", type=int, default=2, help="worker failures to recover from")
    p.add_argument("--steps", type=int, default=None, help="generator steps")
    p.add_argument("--syncnet-steps", type=int, default=None, help="SyncNet steps")
    p.add_argument("--audio-features", default=None, help="audio front-end: ave | hubert | wenet (docs/AUDIO.md)")
    p.add_argument("--audio-weights", default=None,
                   help="hubert: HubertModel directory; wenet: encoder .onnx (local path on every worker, or s3://)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle (and dataset)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (last line)")
    p.add_argument("--address", default=None, help="Ray address (default: the job's cluster, else local)")
    p.add_argument("--config", default=None, help="YAML config (default lipsync/configs/train.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config key=value (repeatable)")
    p.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: fail once
    args = p.parse_args(argv)
    if args.gpu and args.device == "cpu":
        p.error("--gpu and --device cpu disagree")
    args.gpu = args.gpu or args.device == "cuda"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides, {
            "preset": args.preset, "generator_steps": args.steps, "syncnet_steps": args.syncnet_steps,
            "device": "cuda" if args.gpu else "cpu",
            "audio_features": {"backend": args.audio_features, "weights": args.audio_weights}})
        prepare_cfg = load_config(PrepareConfig)
        if args.video and not args.name:
            raise InputError(None, "--video needs --name")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR

    import ray  # lazy: option errors above are reported without the seconds a Ray import takes

    from cluster.train import prepare_on_ray, train_on_ray

    run_name = args.run_name or storage.name(args.out)
    # No runtime_env here: a job submitted with env_vars would have Ray reject a second one, and
    # the Ray Train workers and the prepare task get worker_env() on their own (cluster/train.py).
    ray.init(address=args.address)
    try:
        dataset = args.dataset
        if args.video:
            dataset = args.dataset_out or storage.join(args.storage_path, run_name, "dataset")
            print(f"[train] preparing {args.video} -> {dataset}", flush=True)
            prepare_on_ray(args.video, args.name, dataset, prepare_cfg, overwrite=args.overwrite)
        result = train_on_ray(dataset, args.out, cfg, storage_path=args.storage_path, name=run_name,
                              num_workers=args.workers, use_gpu=args.gpu, cpus_per_worker=args.cpus_per_worker,
                              max_failures=args.max_failures, overwrite=args.overwrite,
                              fail_at_step=args.fail_at_step,
                              on_plan=lambda plan: print(f"[train] {plan.line()}", flush=True))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    s = result.summary
    print(f"[train] bundle {result.out} version {result.version[:12]}: {s['syncnet_steps']} SyncNet + "
          f"{s['generator_steps']} generator steps on {args.workers} worker(s) in {result.seconds:.0f} s; "
          f"SyncNet held-out accuracy {s.get('syncnet_val_acc')}, held-out L1 {s.get('val_l1')}; "
          f"final checkpoint {result.checkpoint_uri}", flush=True)
    if args.json:
        print(json.dumps({"out": result.out, "version": result.version, "workers": args.workers,
                          "seconds": result.seconds, "checkpoint_uri": result.checkpoint_uri, "summary": s},
                         default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
