"""Where the time of our training step goes on the CPU, operation by operation.

    python benchmarks/profile_training.py --config=base --steps=1 --top=30

Builds the trainer the training benchmark builds (synthetic batch, one CPU replica, XLA),
runs one step to compile, then records `--steps` steps with TensorFlow's profiler while XLA
traces each of its CPU thunks (`--xla_cpu_enable_xprof_traceme`). Every thunk is named
after an instruction of the compiled module; the module's HLO, dumped to a temporary
directory, says which TensorFlow operation each instruction came from. The report sums
the thunks' seconds per step by operation, with the layer number folded out
("encoder/layer_N/..."), matrix products marked MATMUL; TensorFlow's "_1" suffixes are
folded out too, so a matmul's two gradient products (MatMul, MatMul_1) count as one
operation. Thunks of one step can overlap,
so the shares are of the thunks' total, which is close to the step's wall time on a
2-core CPU. This found the inline Philox of the dropout masks (8% of a BERT-base step).

With --xla=false it profiles the uncompiled step instead and sums the seconds of
TensorFlow's operations (by name, folded the same way, with the op type); with --threads=1
and then 2, which parts of the step do not scale with cores. --side=theirs profiles
keras-hub's BertMaskedLM step as bench_training.py builds it, uncompiled (as Keras runs it
on a CPU), in the same environment as ours (the BFC allocator, oneDNN's kernels): run it
with the benchmark environment's Python (.venv-bench), and compare with --xla=false.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the trainer

import bench_training  # noqa: E402  (this directory; TensorFlow is imported later)


def _events(logdir: str, thread: str):
    """(name, seconds) of every event the profiler recorded on threads named `thread`..."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        for line in plane.lines:
            if thread in line.name:
                for event in line.events:
                    yield plane.event_metadata[event.metadata_id].name, event.duration_ps * 1e-12


def thunk_seconds(logdir: str) -> collections.Counter:
    """Seconds per thunk name, summed over the XLA CPU thunks the profiler recorded."""
    seconds = collections.Counter()
    for name, duration in _events(logdir, "Eigen"):  # thunks run on the intra-op threads
        # The executor's own span contains the thunks it runs.
        if name != "ThunkExecutor::Execute" and not name.startswith("end:"):
            seconds[name] += duration
    return seconds


def op_seconds(logdir: str) -> collections.Counter:
    """Seconds per TensorFlow operation ("name:Type") of an uncompiled step."""
    seconds = collections.Counter()
    for name, duration in _events(logdir, "tf_Compute"):  # the executor's threads
        if ":" in name and not name.startswith("ExecutorState"):  # (its own spans)
            seconds[name] += duration
    return seconds


def operation_names(dump_dir: str) -> dict[str, str]:
    """Instruction name → TensorFlow op_name, from the compiled training module's HLO."""
    paths = glob.glob(os.path.join(dump_dir, "*replica_work*cpu_after_optimizations.txt"))
    names = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*op_name=\"([^\"]+)\"", line)
                if match:
                    names.setdefault(match.group(1), match.group(2))
    return names


def category(thunk: str, op_name: str | None) -> str:
    """The op name with layer numbers and Keras's name suffixes folded out."""
    if op_name is None:
        return re.sub(r"\.\d+$", "", thunk)  # e.g. a fused optimizer update without a name
    op_name = re.sub(r"layer_\d+", "layer_N", op_name)
    op_name = re.sub(r"_1(/|$)", r"\1", op_name)  # Keras's call-scope suffix
    return ("MATMUL " if thunk.startswith("MatMul") else "") + op_name


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(bench_training.CONFIGS), default="small")
    parser.add_argument("--precision", choices=bench_training.PRECISIONS, default="fp32")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps")
    parser.add_argument("--top", type=int, default=25, help="rows of the report")
    parser.add_argument(
        "--side",
        choices=("ours", "theirs"),
        default="ours",
        help="theirs: keras-hub's BertMaskedLM step, uncompiled (needs --xla=false)",
    )

    parser.add_argument(
        "--xla",
        type=bench_training.boolean,
        default=True,
        help="false: profile the uncompiled step, by TensorFlow operation",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow's intra- and inter-op threads (0: its default, one per core); "
        "compare 1 with 2 to see which operations do not scale with cores",
    )
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads={args.threads}: expected 0 (TensorFlow's default) or more")
    if args.side == "theirs" and args.xla:
        parser.error("--side=theirs profiles keras-hub's uncompiled step: add --xla=false")

    dump_dir = tempfile.mkdtemp(prefix="bert-gpu-hlo-")
    logdir = tempfile.mkdtemp(prefix="bert-gpu-profile-")
    # XLA reads its flags when TensorFlow loads.
    os.environ["XLA_FLAGS"] = " ".join(
        [
            os.environ.get("XLA_FLAGS", ""),
            "--xla_cpu_enable_xprof_traceme=true",
            f"--xla_dump_to={dump_dir}",
            "--xla_dump_hlo_as_text",
            "--xla_dump_hlo_module_re=.*replica_work.*",
        ]
    )
    import cli  # the environment bert-gpu's scripts give TensorFlow

    cli.prepare_tensorflow_environment()
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    shape = dict(
        batch_size=args.batch_size, seq_length=128, predictions=20, vocab_size=30522,
        padding="realistic", seed=12345,
    )  # fmt: skip
    batch = bench_training.synthetic_batch(**shape)
    spec = dict(shape, precision=args.precision, xla=args.xla, steps_per_loop=None, device="cpu")
    make_runner = bench_training.make_our_runner
    if args.side == "theirs":
        make_runner, spec["theirs_jit_compile"] = bench_training.make_keras_hub_runner, "false"
    run, _ = make_runner(bench_training.CONFIGS[args.config], batch, spec)
    start = time.perf_counter()
    run(1)
    print(f"first step (tracing and compiling): {time.perf_counter() - start:.1f} s")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    run(args.steps)
    wall = (time.perf_counter() - start) / args.steps
    tf.profiler.experimental.stop()

    by_category, count = collections.Counter(), collections.Counter()
    if args.xla:
        names = operation_names(dump_dir)
        for thunk, seconds in thunk_seconds(logdir).items():
            key = category(thunk, names.get(thunk))
            by_category[key] += seconds / args.steps
            count[key] += 1
    else:
        for op, seconds in op_seconds(logdir).items():
            name, op_type = op.rsplit(":", 1)
            name = name.replace("while/body/_1/", "")  # (the steps' graph loop)
            key = f"{category('', name.replace('while/', ''))} ({op_type})"
            by_category[key] += seconds / args.steps
            count[key] += 1
    total = sum(by_category.values())
    print(
        f"{args.side}: {args.config} {args.precision}, batch {args.batch_size}, threads "
        f"{args.threads or 'default'}: {wall:.3f} s/step wall, {total:.3f} s/step in "
        f"{'XLA thunks' if args.xla else 'TensorFlow operations'} ({len(count)} operations)\n"
    )
    unit = "instructions" if args.xla else "ops"
    print(f"| s/step | share | {unit} | operation |\n| ---: | ---: | ---: | --- |")
    for key, seconds in by_category.most_common(args.top):
        print(f"| {seconds:.3f} | {100 * seconds / total:.1f}% | {count[key]} | {key} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
