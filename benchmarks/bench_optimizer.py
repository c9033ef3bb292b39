"""Time of one AdamW update of a BERT model's variables: plain ops against the fused kernel.

    python benchmarks/bench_optimizer.py --config=small --repeats=3

Builds the model of --config (as bench_training.py sizes it: tiny, mini, small, base,
large; vocabulary 30,522), an AdamWeightDecay over its trainable variables with the
original names (so the decay flags are the trainer's), and random gradients, then times
`apply_gradients` in a `tf.function`, with `fused=False` (about fifteen elementwise
operations per variable) and `fused=True` (TensorFlow's Adam kernel), each without XLA
and under XLA. The variants take turns, `--repeats` rounds of 5 calls each; every figure
is the mean of 5 calls. CPU only (like the scripts, on the BFC allocator).
"""

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]

import cli  # noqa: E402

cli.prepare_tensorflow_environment()
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
import tensorflow as tf  # noqa: E402
from bench_training import CONFIGS, bert_config_of  # noqa: E402

import modeling  # noqa: E402
import optimization  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the four variants")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TensorFlow's intra- and inter-op threads (0: default)",
    )
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads={args.threads}: expected 0 (TensorFlow's default) or more")
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    size = CONFIGS[args.config]
    model = modeling.BertPretrainingModel(bert_config_of(size, 30522))
    model.build_weights()
    by_id = {id(v): name for name, v in modeling.original_name_map(model).items()}
    variables = list(model.trainable_variables)
    names = [by_id[id(v)] for v in variables]
    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.standard_normal(v.shape).astype(np.float32) * 1e-3) for v in variables]
    learning_rate = tf.constant(1e-4)
    variants = {}
    for fused in (False, True):
        optimizer = optimization.AdamWeightDecay(variables, names, fused=fused)
        for xla in (False, True):

            def update(grads, optimizer=optimizer):
                optimizer.apply_gradients(grads, learning_rate)

            label = f"{'fused kernel' if fused else 'plain ops'}, {'XLA' if xla else 'no XLA'}"
            variants[label] = tf.function(update, jit_compile=xla, autograph=False)
    parameters = sum(int(np.prod(v.shape)) for v in variables)
    print(
        f"{args.config}: {len(variables)} variables, {parameters:,} parameters, "
        f"threads {args.threads or 'default'}"
    )
    times = {label: [] for label in variants}
    for function in variants.values():
        function(grads)  # trace and compile
    for _ in range(args.repeats):
        for label, function in variants.items():
            start = time.perf_counter()
            for _ in range(5):
                function(grads)
            times[label].append((time.perf_counter() - start) / 5 * 1e3)
    for label, values in times.items():
        print(f"  {label:24s} " + ", ".join(f"{t:.1f}" for t in values) + " ms per update")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
