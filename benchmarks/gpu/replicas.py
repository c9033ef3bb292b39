"""Two replicas against one device with XLA, on one GPU split in two: the --num_gpus=2 path.

    python benchmarks/gpu/replicas.py          # --cpu: the same on two logical CPU devices

A machine with one GPU cannot run the multi-GPU code path as such, but TensorFlow can
split one GPU into two logical GPUs, and MirroredStrategy then mirrors over them as over
two cards: each replica's forward and backward pass compiled by XLA as one cluster, the
gradient all-reduce between the clusters, the update compiled as another (training.py's
module docstring). This script trains the tests' tiny BERT (dropout 0) for a few steps
from the same initial weights on the same global batches, once on one logical GPU with
the whole batch and once on two with half each, in fp32 and bf16, and compares what the
tests compare on CPUs (tests/test_training.py):

- fp32 (TF32 turned off, so that both runs multiply in float32): per-step losses and
  gradient norms to float32 summation-order rounding (rtol 1e-5), and the weight updates
  of the two runs within the same rounding, norm-wise;
- bf16: the first step's loss to float32 summation (rtol 1e-5), gradient norms within
  2^-7, and the weight updates as the bf16 replica test bounds them.

Prints one line per check and exits 1 when one fails. The all-reduce is the one
--num_gpus=2 uses, MirroredStrategy's default (CollectiveAllReduce, NCCL between GPUs; it
accepted the two logical devices of one H100); where it fails on two logical devices of
one GPU, the script says so and uses HierarchicalCopyAllReduce.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks"), os.path.join(REPO, "tests")]

import cli  # noqa: E402

cli.prepare_tensorflow_environment()
import tensorflow as tf  # noqa: E402
from bench_training import synthetic_batch  # noqa: E402
from train_workspace import PRED, SEQ, tiny_config  # noqa: E402

import modeling  # noqa: E402
import training  # noqa: E402

GLOBAL_BATCH, STEPS = 8, 3  # with the tests' model, SEQ and PRED: their rounding bounds
BERT = modeling.BertConfig(**tiny_config())  # dropout 0


def split_device(kind: str) -> list[str]:
    """Two logical devices on the first physical device of `kind`; their names."""
    physical = tf.config.list_physical_devices(kind)
    if not physical:
        raise SystemExit(f"replicas: TensorFlow sees no {kind}")
    limit = {"GPU": 4096, "CPU": None}[kind]  # MiB per logical GPU; the model is tiny
    tf.config.set_logical_device_configuration(
        physical[0], [tf.config.LogicalDeviceConfiguration(memory_limit=limit)] * 2
    )
    return [d.name for d in tf.config.list_logical_devices(kind)][:2]


def train(
    devices: list[str],
    precision: str,
    start: list[np.ndarray] | None,
    cross_device_ops: tf.distribute.CrossDeviceOps | None = None,
) -> tuple[training.Trainer, list[dict], list[np.ndarray]]:
    """A Trainer over `devices` after STEPS steps from weights `start` (None: the seed's);
    its metrics per step, and the weights it started from."""
    config = training.TrainConfig(
        input_file="synthetic",
        output_dir="unused",
        bert_config_file="synthetic",
        do_train=True,
        batch_size=GLOBAL_BATCH // len(devices),
        max_seq_length=SEQ,
        max_predictions_per_seq=PRED,
        learning_rate=1e-3,
        num_train_steps=50,
        num_warmup_steps=2,
        seed=7,
        precision=precision,
        xla=True,
    )
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)
    trainer = training.Trainer(strategy, BERT, config)
    if start is not None:
        for variable, value in zip(trainer.variables, start):
            variable.assign(value)
    start = [v.numpy() for v in trainer.variables]
    batches = [
        synthetic_batch(GLOBAL_BATCH, SEQ, PRED, BERT.vocab_size, "realistic", seed)
        for seed in range(STEPS)
    ]
    dataset = tf.data.Dataset.from_tensor_slices(
        {name: np.stack([b[name] for b in batches]) for name in batches[0]}
    )
    iterator = iter(dataset)
    metrics = [{k: float(v) for k, v in trainer.train_step(iterator).items()} for _ in range(STEPS)]
    return trainer, metrics, start


def check(label: str, good: bool, detail: str) -> bool:
    print(f"{label}: {detail}{'' if good else '  WRONG'}", flush=True)
    return good


def compare_fp32(start, one, one_metrics, two, two_metrics) -> bool:
    ok = True
    for step, (a, b) in enumerate(zip(one_metrics, two_metrics), 1):
        for key in ("mlm_loss_sum", "mlm_count", "nsp_loss_sum", "grad_norm_sum"):
            error = abs(a[key] - b[key]) / max(abs(a[key]), 1e-30)
            ok &= check(
                f"fp32 step {step} {key}", error <= 1e-5, f"relative difference {error:.1e}"
            )
    # The weights moved alike: the norm of the difference of the two runs' updates, relative
    # to the norm of the updates, within the reordering bound n·u (n = 8 rows × 32
    # positions summed per weight gradient, u = 2^-24: 1.5e-5); Adam is scale-invariant,
    # so the gradient's relative rounding carries over to the update. A per-replica
    # normalisation or a lost half of the batch changes the updates by percents. (Single
    # elements whose gradient is near Adam's epsilon can differ more, relative to their
    # own step: the norm weighs them by their size.)
    updates_one = np.concatenate([(v.numpy() - s).ravel() for v, s in zip(one.variables, start)])
    updates_two = np.concatenate([(v.numpy() - s).ravel() for v, s in zip(two.variables, start)])
    relative = np.linalg.norm(updates_one - updates_two) / np.linalg.norm(updates_one)
    bound = SEQ * GLOBAL_BATCH * 2.0**-24
    ok &= check("fp32 update difference", relative <= bound, f"relative norm {relative:.1e}")
    return ok


def compare_bf16(start, one, one_metrics, two, two_metrics) -> bool:
    ok = True
    error = abs(one_metrics[0]["mlm_loss_sum"] - two_metrics[0]["mlm_loss_sum"])
    error /= abs(one_metrics[0]["mlm_loss_sum"])
    ok &= check("bf16 step 1 mlm_loss_sum", error <= 1e-5, f"relative difference {error:.1e}")
    for step, (a, b) in enumerate(zip(one_metrics, two_metrics), 1):
        error = abs(a["grad_norm_sum"] - b["grad_norm_sum"]) / abs(a["grad_norm_sum"])
        ok &= check(
            f"bf16 step {step} grad_norm_sum", error <= 2**-7, f"relative difference {error:.1e}"
        )
    updates_one = np.concatenate([(v.numpy() - s).ravel() for v, s in zip(one.variables, start)])
    updates_two = np.concatenate([(v.numpy() - s).ravel() for v, s in zip(two.variables, start)])
    share = float(np.mean(np.abs(updates_one - updates_two) > 0.01 * np.abs(updates_one).max()))
    ok &= check("bf16 updates differing by > 1% of a step", share < 0.02, f"{share:.2%}")
    relative = np.linalg.norm(updates_one - updates_two) / np.linalg.norm(updates_one)
    bound = 2 * np.sqrt(2 * 0.02)
    ok &= check("bf16 update difference", relative < bound, f"relative norm {relative:.1e}")
    return ok


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="two logical CPU devices instead")
    kind = "CPU" if parser.parse_args(argv).cpu else "GPU"
    devices = split_device(kind)
    tf.config.experimental.enable_tensor_float_32_execution(False)
    print(f"replicas: TensorFlow {tf.__version__}; one replica on {devices[0]}, two on {devices}")
    cross_device_ops = None
    ok = True
    for precision in ("fp32", "bf16"):
        *reference, start = train(devices[:1], precision, None)
        try:
            two = train(devices, precision, start, cross_device_ops)
        except (tf.errors.OpError, RuntimeError) as error:
            if cross_device_ops is not None or kind != "GPU":
                raise
            print(
                f"replicas: the default all-reduce failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}); using HierarchicalCopyAllReduce"
            )
            cross_device_ops = tf.distribute.HierarchicalCopyAllReduce()
            two = train(devices, precision, start, cross_device_ops)
        two = two[:2]
        reduce = getattr(two[0].strategy.extended, "_cross_device_ops", None)
        print(
            f"replicas {precision}: XLA {two[0].xla}, replicas {two[0].num_replicas}, "
            f"all-reduce {type(reduce).__name__ if reduce else 'the default'}",
            flush=True,
        )
        if precision == "fp32":
            ok &= compare_fp32(start, *reference, *two)
        else:
            ok &= compare_bf16(start, *reference, *two)
    print("replicas: all checks passed" if ok else "replicas: SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
