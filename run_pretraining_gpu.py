r"""Pretrain BERT on all the GPUs of one machine with tf.distribute.MirroredStrategy.

    python run_pretraining_gpu.py --input_file='data/train*.tfrecord' --output_dir=out \
        --bert_config_file=bert_config.json --num_gpus=4 --batch_size=64 \
        --num_train_steps=100000 --num_warmup_steps=10000 --learning_rate=1e-4

One BERT replica per device; each step every replica takes --batch_size examples of
the global batch (per micro-batch, with --gradient_accumulation_steps), computes the
gradient of its share of the GLOBAL loss (sums divided by the global counts of masked
tokens and examples), the gradients are summed across replicas, clipped to global norm
1.0 and one AdamW (or LAMB) update is applied to every copy of the weights. N replicas
with --batch_size=B therefore train exactly like one device with batch N·B.

Running the same command again resumes from the newest checkpoint in --output_dir:
weights, optimizer slots, step (hence learning rate), the input position, and the
dropout randomness (a pure function of --seed, the step and the replica). Ctrl-C or
SIGTERM writes a checkpoint after the current loop of steps and exits with 130 / 143
(128 + the signal), skipping the eval.

This file is the command line only: flags → `training.TrainConfig` →
`training.train_and_evaluate`.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Sequence

import cli

# TensorFlow's start-up notices (oneDNN, CPU features) would drown the training log.
tf = cli.import_tensorflow()

import optimization  # noqa: E402
import training  # noqa: E402
from training import TrainConfig, Trainer, train_and_evaluate  # noqa: E402, F401

# ----------------------------------------------------------------------------------------
# Command line


def define_flags() -> None:
    from absl import flags

    d = TrainConfig.__dataclass_fields__
    flags.DEFINE_string("input_file", None, "Training TFRecords: comma-separated globs.")
    flags.DEFINE_string("output_dir", None, "Checkpoints, TensorBoard logs, eval results.")
    flags.DEFINE_string("bert_config_file", None, "The model's bert_config.json.")
    flags.DEFINE_string(
        "init_checkpoint",
        None,
        "Start from these weights: a checkpoint of this tool (out/model.ckpt-N) or a "
        "directory of them (its newest); ignored when --output_dir already has checkpoints.",
    )
    flags.DEFINE_integer(
        "max_seq_length",
        None,
        "Tokens per example (default: the data's; given, it must match the data).",
    )
    flags.DEFINE_integer(
        "max_predictions_per_seq",
        None,
        "Masked-LM predictions per example (default: the data's; given, it must match).",
    )
    flags.DEFINE_bool("do_train", False, "Train.")
    flags.DEFINE_bool("do_eval", False, "Evaluate (after training, if --do_train).")
    flags.DEFINE_string(
        "eval_input_file",
        None,
        "Held-out eval TFRecords (default: the training files, with a warning).",
    )
    flags.DEFINE_integer(
        "eval_every_n_steps",
        d["eval_every_n_steps"].default,
        "Also evaluate during training every N steps (a checkpoint is saved there); 0: only "
        "the final eval of --do_eval.",
    )
    flags.DEFINE_string(
        "eval_checkpoint",
        None,
        "Evaluate this checkpoint (a prefix such as out/model.ckpt-300), or 'all' (every "
        "checkpoint in --output_dir), without training or touching the training state.",
    )
    flags.DEFINE_bool(
        "allow_eval_on_train_files",
        False,
        "Allow --eval_input_file to share files with --input_file (not held out).",
    )
    flags.DEFINE_integer(
        "num_gpus",
        None,
        "Replicas, one per GPU (default: all visible GPUs); 0: one replica on the CPU.",
    )
    flags.DEFINE_string(
        "worker_hosts",
        None,
        "Several machines: every worker's host:port, comma-separated, the same list on "
        "every host (or set TF_CONFIG instead); worker 0 is the chief.",
    )
    flags.DEFINE_integer(
        "task_index", None, "Several machines: this host's index in --worker_hosts."
    )
    flags.DEFINE_integer(
        "input_shards",
        None,
        "Input shards, each read by one worker from its own files (default: one per "
        "worker); a single machine with --input_shards=N reproduces the batches of N workers.",
    )
    flags.DEFINE_integer(
        "cpu_replicas",
        0,
        "Without a GPU: split the CPU into this many logical devices, one replica each.",
    )
    flags.DEFINE_integer(
        "batch_size",
        d["batch_size"].default,
        "Examples per replica per step; global batch = this × replicas.",
    )
    flags.DEFINE_integer(
        "eval_batch_size", d["eval_batch_size"].default, "Eval examples per replica per step."
    )
    flags.DEFINE_float("learning_rate", d["learning_rate"].default, "Peak learning rate.")
    flags.DEFINE_integer("num_train_steps", d["num_train_steps"].default, "Training steps.")
    flags.DEFINE_integer("num_warmup_steps", d["num_warmup_steps"].default, "Linear warm-up steps.")
    flags.DEFINE_integer(
        "save_checkpoints_steps", d["save_checkpoints_steps"].default, "Steps between checkpoints."
    )
    flags.DEFINE_integer(
        "keep_checkpoint_max", d["keep_checkpoint_max"].default, "Checkpoints kept."
    )
    flags.DEFINE_integer(
        "max_eval_steps",
        d["max_eval_steps"].default,
        "Eval batches at most (0: the whole eval set).",
    )
    flags.DEFINE_integer(
        "log_every_n_steps",
        d["log_every_n_steps"].default,
        "Steps between log lines and summaries.",
    )
    flags.DEFINE_integer("seed", d["seed"].default, "Seed of data order, init and dropout.")
    # Speed
    flags.DEFINE_enum(
        "precision",
        d["precision"].default,
        list(training.PRECISION_POLICIES),
        "fp32; bf16 or fp16 mixed precision (float32 weights, optimizer state, LayerNorm, "
        "softmax and losses; fp16 with dynamic loss scaling).",
    )
    flags.DEFINE_bool(
        "xla",
        d["xla"].default,
        "Compile each replica's forward, backward and update with XLA (--noxla: off). "
        "Default: on, except bf16 on CPUs with AMX or AVX512-BF16, fp32 on CPUs with AMX, "
        "and fp32 at hidden size 768 and up on CPUs with AVX512-BF16 (the uncompiled step "
        "was faster there); a resumed run keeps the mode it started with. Without XLA, on "
        "CPUs, the encoder computes on the real tokens only (padding skipped).",
    )
    flags.DEFINE_integer(
        "gradient_accumulation_steps",
        d["gradient_accumulation_steps"].default,
        "Micro-batches per optimizer step; effective batch = batch_size × replicas × this.",
    )
    flags.DEFINE_integer(
        "steps_per_loop",
        d["steps_per_loop"].default,
        "Most optimizer steps per call into TensorFlow; logs, checkpoints and signal "
        "checks happen between calls (never across a log or checkpoint step).",
    )
    # Optimizer
    flags.DEFINE_enum(
        "optimizer",
        d["optimizer"].default,
        list(optimization.OPTIMIZERS),
        "adamw: the original release's AdamW; lamb: LAMB (large batches, NVIDIA's recipe).",
    )
    flags.DEFINE_float(
        "poly_power",
        d["poly_power"].default,
        "Power of the learning-rate decay after warm-up: 1 linear (original), 0.5 NVIDIA LAMB.",
    )
    flags.DEFINE_float(
        "weight_decay_rate",
        d["weight_decay_rate"].default,
        "Decoupled weight decay (not applied to LayerNorm and bias variables).",
    )
    # Safety
    flags.DEFINE_integer(
        "max_nonfinite_steps",
        d["max_nonfinite_steps"].default,
        "Consecutive steps with a non-finite loss or gradient (never applied) before "
        "training stops with an error; fp16 loss-scale overflows do not count.",
    )
    # Input
    flags.DEFINE_integer(
        "shuffle_buffer",
        d["shuffle_buffer"].default,
        "Records in the trainer's shuffle buffer (the data is also shuffled when made).",
    )
    flags.DEFINE_integer(
        "cycle_length",
        d["cycle_length"].default,
        "Training files read at once, interleaved record by record.",
    )


def flags_were_given(*names: str) -> bool:
    from absl import flags

    return any(flags.FLAGS[name].present for name in names if name in flags.FLAGS)


def config_from_flags() -> TrainConfig:
    from absl import flags

    FLAGS = flags.FLAGS
    required = ["output_dir", "bert_config_file"]
    if FLAGS.do_train or not FLAGS.eval_input_file:
        required.insert(0, "input_file")
    missing = [f"--{n}" for n in required if not FLAGS[n].value]
    if missing:
        raise ValueError(f"missing required flag(s): {', '.join(missing)}")
    names = [field.name for field in dataclasses.fields(TrainConfig)]
    return TrainConfig(**{name: FLAGS[name].value for name in names})


def main(argv: Sequence[str]) -> int:
    from absl import logging

    del argv
    # absl would print TensorFlow's Python INFO records (checkpoint sharding, reduce
    # placement) between our log lines; -v / --verbosity still turns them back on.
    if not flags_were_given("verbosity", "v"):
        logging.set_verbosity(logging.WARNING)
    try:
        config = config_from_flags()
        results = train_and_evaluate(config)
    except (ValueError, OSError, tf.errors.OpError, AssertionError) as e:
        # Errors that speak to the user; tf.errors.OpError and AssertionError come from
        # reading checkpoints and data (corrupt files, restore mismatches).
        training.log(f"error: {training.short_error(e)}")
        return 1
    except (training.NonFiniteLossError, training.WorkerLostError) as e:
        training.log(f"error: {e}")
        return 1
    except KeyboardInterrupt:  # outside training (start-up, eval) or a second Ctrl-C
        training.log("interrupted (training progress is in the newest checkpoint, if any)")
        return 128 + signal.SIGINT
    # As a shell reports a process killed by the signal: 130 for SIGINT, 143 for SIGTERM.
    signum = results.get("stopped_by_signal")
    return 128 + signum if signum else 0


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
