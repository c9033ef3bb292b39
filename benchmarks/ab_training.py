"""Before and after: two checkouts of bert-gpu's training step, side by side in one run.

    git worktree add /tmp/before HEAD~1
    python benchmarks/ab_training.py --baseline_repo=/tmp/before --configs=small \
        --precisions=fp32 --windows=8 --window_seconds=20

The baseline checkout (--baseline_repo) and this one (or --ours_repo) each train in their
own worker process of benchmarks/bench_training.py, on the same synthetic batch, taking
turns in timed windows after their warm-up, so machine noise hits both alike. Every
other flag of bench_training.py that concerns ours (--xla, --device, --batch_size, ...)
is given to both, except that --baseline_xla sets the baseline's --xla apart (to time
XLA against no XLA in one checkout: --baseline_repo=. --baseline_xla=true --xla=false)
and --baseline_precision its precision (bf16 against fp32, each with its default --xla
unless --xla is given: --baseline_repo=. --baseline_precision=fp32 --precisions=bf16);
keras-hub's flags, the GEMM peak's and --output have no use here.
Prints, per config and precision, each side's median seq/s and the ratio of every pair
of windows (after / before): the figure to quote for a change meant to be faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_training  # noqa: E402  (this directory)

SIDES = ("before", "after")


def compare(args: argparse.Namespace, config: str, precision: str) -> str:
    """Times both checkouts at one config and precision; returns a markdown table row."""
    workers, ready = {}, {}
    repos = {"before": args.baseline_repo, "after": args.ours_repo}
    xla = {"before": args.baseline_xla, "after": args.xla}
    precisions = {"before": args.baseline_precision or precision, "after": precision}
    try:
        for side in SIDES:  # one after the other: neither's tracing slows the other's
            spec = bench_training._worker_spec(
                args,
                role="ours",
                config=config,
                precision=precisions[side],
                ours_repo=repos[side],
                xla=xla[side],
            )
            workers[side] = bench_training.Worker(spec)
            workers[side].name = side
            ready[side] = bench_training._receive_ready(workers[side], config, precisions[side])
        row = bench_training._time_row(args, config, precision, workers, ready)
    finally:
        for worker in workers.values():
            worker.close()
    windows = row["windows"]
    ratios = sorted(a / b for a, b in zip(windows["after"], windows["before"]))
    median = row["median"]
    if precisions["before"] != precision:
        precision = f"{precision} (before: {precisions['before']})"
    return (
        f"| {config} | {precision} | {median['before']:.2f} | {median['after']:.2f} "
        f"| {median['after'] / median['before']:.3f} | {statistics.median(ratios):.3f} "
        f"| {ratios[0]:.3f}-{ratios[-1]:.3f} |"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every other flag is benchmarks/bench_training.py's (see its --help).",
    )
    parser.add_argument("--baseline_repo", required=True, help="the checkout to compare with")
    parser.add_argument(
        "--baseline_xla",
        type=bench_training.boolean,
        help="the baseline's --xla, where it differs from the other side's (e.g. XLA against "
        "no XLA in one checkout: --baseline_repo=. --baseline_xla=true --xla=false)",
    )
    parser.add_argument(
        "--baseline_precision",
        choices=("fp32", "bf16", "fp16"),
        help="the baseline's precision, where it differs from --precisions (e.g. our bf16 "
        "step against our fp32 one, side by side: --baseline_repo=. --baseline_precision=fp32 "
        "--precisions=bf16)",
    )
    own, rest = parser.parse_known_args(argv)
    args = bench_training.parse_args(rest)
    args.baseline_repo = os.path.abspath(own.baseline_repo)
    args.baseline_xla = args.xla if own.baseline_xla is None else own.baseline_xla
    args.baseline_precision = own.baseline_precision
    if not os.path.isfile(os.path.join(args.baseline_repo, "modeling.py")):
        parser.error(f"--baseline_repo={own.baseline_repo}: no bert-gpu checkout there")
    for flag in ("--warm_up_together", "--ours_only", "--theirs_only", "--output"):
        if any(arg == flag or arg.startswith(flag + "=") for arg in rest):
            parser.error(f"{flag}: not used here (both sides are bert-gpu, warmed up in turn)")
    xla = {
        side: "" if x is None else f" (--xla={str(x).lower()})"
        for side, x in (("before", args.baseline_xla), ("after", args.xla))
    }
    precision = f" (--precision={args.baseline_precision})" if args.baseline_precision else ""
    print(
        f"before: {args.baseline_repo}{xla['before']}{precision}\n"
        f"after: {args.ours_repo}{xla['after']}\n"
    )
    print(
        "| config | precision | before seq/s | after seq/s | after / before (medians) "
        "| after / before (median of window pairs) | window pairs |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | --- |"
    )
    for config in args.configs:
        for precision in args.precisions:
            print(compare(args, config, precision), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
