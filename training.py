"""The Trainer: compiled training steps (precision, XLA, accumulation), the loop, eval.

One optimizer step, as every replica runs it:

    for each of K micro-batches:           (--gradient_accumulation_steps=K)
        loss = (masked-LM loss sum / masked tokens of the WHOLE effective batch)
             + (next-sentence loss sum / examples of the WHOLE effective batch)
        grads += d(loss · loss_scale)/dw    (loss_scale = 1 except in fp16)
    grads = all-reduce SUM over replicas    (the gradient of the global loss)
    grads /= loss_scale; norm = ||grads||
    if norm and loss are finite: clip to norm 1.0, AdamW or LAMB update of the local copy
    else: skip the step (counted; fp16 halves its loss scale)

so K micro-batches on R replicas of B examples train exactly like one device with a
batch of K·R·B. With XLA the per-replica work is compiled: with one replica the whole
step (forward, backward, clipping, update) is one XLA cluster; with several, the
gradient computation and the update are two clusters and the all-reduce runs between
them (MirroredStrategy can only put collectives inside XLA when every device is a GPU;
this split works on GPUs and on logical CPU devices alike).

N steps run per `tf.function` call (`--steps_per_loop`); logging, checkpoints and
signal checks happen between calls.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

import checkpoints
import cli
import distribute
import input_pipeline
import modeling
import optimization
from create_pretraining_data import format_duration

# Keras dtype policies of --precision. Variables, optimizer state and checkpoints stay
# float32 in every case.
PRECISION_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}

CLIP_NORM = 1.0  # global gradient norm, as in the original release

# Dynamic loss scaling for fp16 (Micikevicius et al., 2018, "Mixed precision training"):
# start high, halve on a non-finite gradient (the step is skipped), double after this
# many finite steps in a row. The scale never goes below 1.
INITIAL_LOSS_SCALE = 2.0**15
LOSS_SCALE_GROWTH_INTERVAL = 2000


# ----------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; built once from the flags (or directly by tests)."""

    input_file: str | None
    output_dir: str
    bert_config_file: str
    init_checkpoint: str | None = None
    max_seq_length: int | None = None  # None: the data's
    max_predictions_per_seq: int | None = None  # None: the data's
    do_train: bool = False
    do_eval: bool = False
    eval_input_file: str | None = None
    num_gpus: int | None = None
    cpu_replicas: int = 0
    batch_size: int = 32
    eval_batch_size: int = 8
    learning_rate: float = 5e-5
    num_train_steps: int = 100_000
    num_warmup_steps: int = 10_000
    save_checkpoints_steps: int = 1000
    keep_checkpoint_max: int = 5
    max_eval_steps: int = 100
    log_every_n_steps: int = 100
    seed: int = 12345
    # Speed
    precision: str = "fp32"
    xla: bool | None = None  # None: the fastest for the hardware (default_xla), or the run's
    gradient_accumulation_steps: int = 1
    steps_per_loop: int = 100
    # Optimizer
    optimizer: str = "adamw"
    poly_power: float = 1.0
    weight_decay_rate: float = 0.01
    # Safety
    max_nonfinite_steps: int = 5
    # Input
    shuffle_buffer: int = 10_000
    cycle_length: int = 4
    # Several machines
    worker_hosts: str | None = None
    task_index: int | None = None
    input_shards: int | None = None  # None: one per worker
    # Evaluation
    eval_every_n_steps: int = 0  # 0: only the final eval (--do_eval)
    eval_checkpoint: str | None = None  # a checkpoint to evaluate, or "all"
    allow_eval_on_train_files: bool = False

    def __post_init__(self):
        problems = []
        for name in ("max_seq_length", "max_predictions_per_seq"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"--{name}={getattr(self, name)}: expected a positive integer")
        positive = ("batch_size", "eval_batch_size")
        positive += ("num_train_steps", "save_checkpoints_steps", "log_every_n_steps")
        positive += ("keep_checkpoint_max", "gradient_accumulation_steps", "steps_per_loop")
        positive += ("max_nonfinite_steps", "shuffle_buffer", "cycle_length")
        for name in positive:
            if getattr(self, name) < 1:
                problems.append(f"--{name}={getattr(self, name)}: expected a positive integer")
        if self.num_warmup_steps < 0:
            problems.append(f"--num_warmup_steps={self.num_warmup_steps}: expected >= 0")
        elif self.do_train and self.num_warmup_steps > self.num_train_steps:
            problems.append(
                f"--num_warmup_steps={self.num_warmup_steps} is more than --num_train_steps="
                f"{self.num_train_steps}: the learning rate would never reach its peak"
            )
        if self.max_eval_steps < 0:
            problems.append(f"--max_eval_steps={self.max_eval_steps}: expected >= 0 (0: all)")
        if not self.learning_rate > 0:
            problems.append(f"--learning_rate={self.learning_rate}: expected > 0")
        if self.cpu_replicas < 0:
            problems.append(f"--cpu_replicas={self.cpu_replicas}: expected >= 0")
        if self.num_gpus is not None and self.num_gpus < 0:
            problems.append(f"--num_gpus={self.num_gpus}: expected >= 0 (0: one CPU replica)")
        if self.num_gpus and self.cpu_replicas:
            problems.append("--num_gpus and --cpu_replicas exclude each other: choose one")
        if self.precision not in PRECISION_POLICIES:
            problems.append(
                f"--precision={self.precision}: expected one of {', '.join(PRECISION_POLICIES)}"
            )
        if self.optimizer not in optimization.OPTIMIZERS:
            problems.append(
                f"--optimizer={self.optimizer}: expected one of "
                + ", ".join(optimization.OPTIMIZERS)
            )
        if not self.poly_power > 0:
            problems.append(f"--poly_power={self.poly_power}: expected > 0")
        if not self.weight_decay_rate >= 0:
            problems.append(f"--weight_decay_rate={self.weight_decay_rate}: expected >= 0")
        if self.eval_every_n_steps < 0:
            problems.append(f"--eval_every_n_steps={self.eval_every_n_steps}: expected >= 0")
        if self.eval_checkpoint and self.do_train:
            problems.append(
                "--eval_checkpoint evaluates existing checkpoints: drop --do_train (or the "
                "--eval_checkpoint flag)"
            )
        if not (self.do_train or self.do_eval or self.eval_checkpoint):
            problems.append("nothing to do: pass --do_train and/or --do_eval")
        if problems:
            raise ValueError("invalid flags:\n  " + "\n  ".join(problems))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_bf16_matmul(cpuinfo: str = "/proc/cpuinfo") -> str:
    """Which bfloat16 matrix instructions this machine's CPU has, from the flags line of
    `cpuinfo`: "amx" (AMX-BF16), else "avx512_bf16", else "" (none, or unreadable)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    if "amx_bf16" in flags:
                        return "amx"
                    return "avx512_bf16" if "avx512_bf16" in flags else ""
    except OSError:
        pass
    return ""


def all_cpus(replica_devices: Sequence[str]) -> bool:
    """Whether every one of `replica_devices` (device names) is a CPU."""
    return all(tf.DeviceSpec.from_string(d).device_type == "CPU" for d in replica_devices)


# From this hidden size on (BERT-base's), the uncompiled fp32 step, which packs the real
# tokens, was the faster on a CPU with AVX512-BF16 (see default_xla).
PACKED_BEATS_XLA_HIDDEN_SIZE = 768


def default_xla(
    precision: str,
    replica_devices: Sequence[str],
    cpu_bf16: str | None = None,
    hidden_size: int | None = None,
) -> tuple[bool, str]:
    """What --xla is when not given: on, except bf16 on CPUs with bf16 matrix instructions
    (AMX or AVX512-BF16), fp32 on CPUs with AMX, and fp32 at BERT-base size and larger
    (`hidden_size` ≥ 768) on CPUs with AVX512-BF16.

    XLA's CPU compiler does not use the bf16 instructions, TensorFlow's own (oneDNN)
    kernels do: uncompiled, the bf16 step was 2.0× as fast on a 16-core AMX Xeon and 1.56×
    on 2 cores of an AVX512-BF16 AMD EPYC (Zen 4; BERT-small 25.2 against 16.1 seq/s). In
    fp32 on the AMX Xeon ours without XLA was 1.04-1.13× keras-hub in two runs, with XLA
    0.95-0.96× in two others; on the Zen 4 (no AMX) XLA was the faster in fp32 at tiny
    (1.18×), as on a 2-core AVX2 EPYC (tiny 1.4×, BERT-small even). Since the uncompiled
    step packs the real tokens, BERT-small is even on the Zen 4 and BERT-base 1.09× as
    fast without XLA. (Not measured at BERT-base on AVX2-only CPUs: XLA stays on there.)
    BENCHMARKS.md has the runs. fp16 on any CPU was not measured: XLA stays on.

    Args:
        precision: --precision.
        replica_devices: the device names of this worker's replicas.
        cpu_bf16: the CPU's bf16 matrix instructions as `cpu_bf16_matmul` gives them ("amx",
            "avx512_bf16" or ""); None: read from this machine.
        hidden_size: the model's; None: not known (the size rule does not apply).

    Returns:
        (on, why it is off, or "" when on).
    """
    if precision in ("fp32", "bf16") and all_cpus(replica_devices):
        if cpu_bf16 is None:
            cpu_bf16 = cpu_bf16_matmul()
        if precision == "bf16" and cpu_bf16:
            return False, (
                "bf16 on a CPU with bf16 matrix instructions (AMX or AVX512-BF16): "
                "TensorFlow's own oneDNN kernels use them, XLA's do not"
            )
        if precision == "fp32" and cpu_bf16 == "amx":
            return False, (
                "fp32 on a CPU with AMX: TensorFlow's own oneDNN kernels were faster there"
            )
        if (
            precision == "fp32"
            and cpu_bf16 == "avx512_bf16"
            and hidden_size is not None
            and hidden_size >= PACKED_BEATS_XLA_HIDDEN_SIZE
        ):
            return False, (
                f"fp32 at hidden size {hidden_size} on a CPU with AVX512-BF16: the uncompiled "
                "step, which skips the padding, was the faster there from BERT-base's size on"
            )
    return True, ""


# ----------------------------------------------------------------------------------------
# Model, loss and the distributed steps


def pretraining_sums(model, batch: dict, training: bool, dropout_seed=None) -> dict:
    """Loss and accuracy SUMS and COUNTS of one replica's batch (no normalisation)."""
    outputs = model(batch, training=training, dropout_seed=dropout_seed)
    mlm = modeling.masked_lm_sums(
        outputs["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]
    )
    nsp = modeling.next_sentence_sums(
        outputs["nsp_logits"], batch["next_sentence_labels"], batch[input_pipeline.EXAMPLE_WEIGHT]
    )
    return {
        "mlm_loss_sum": mlm["loss_sum"],
        "mlm_count": mlm["weight_sum"],
        "mlm_correct": mlm["correct_sum"],
        "nsp_loss_sum": nsp["loss_sum"],
        "nsp_count": nsp["count"],
        "nsp_correct": nsp["correct_sum"],
    }


SUM_KEYS = ("mlm_loss_sum", "mlm_count", "mlm_correct", "nsp_loss_sum", "nsp_count", "nsp_correct")


def global_loss(sums: dict, mlm_count, nsp_count):
    """This replica's share of the global loss: its sums over the GLOBAL counts.

    Summing these shares (and their gradients) over replicas and micro-batches gives
    exactly the loss of the whole effective batch: mean masked-LM loss over all masked
    tokens plus mean next-sentence loss over all examples, as one device with the
    effective batch computes.
    """
    return sums["mlm_loss_sum"] / tf.maximum(mlm_count, 1.0) + sums["nsp_loss_sum"] / tf.maximum(
        nsp_count, 1.0
    )


def _replica_id(context) -> int:
    """The replica's index among all replicas, as a Python int (known when tracing): a
    compiled function given it traces once per replica, capturing that replica's variables."""
    return int(tf.get_static_value(context.replica_id_in_sync_group))


def _local_component(variable, local_index: int):
    """This device's copy of a (possibly mirrored) variable."""
    strategy = tf.distribute.get_strategy()
    components = strategy.experimental_local_results(variable)
    return components[local_index] if len(components) > 1 else components[0]


class Trainer:
    """The model, optimizer, step counters and compiled steps of one run.

    Attributes:
        model: the BertPretrainingModel (float32 variables; compute dtype per precision).
        optimizer: AdamWeightDecay or Lamb.
        step: optimizer steps taken (applied or skipped): the position in the schedule
            and in the data.
        updates: optimizer updates applied (steps whose gradients were finite).
        skipped_steps: steps not applied because the loss or gradient was not finite.
        nonfinite_streak: consecutive skipped steps that loss scaling does not explain
            (the NaN guard stops training when it reaches --max_nonfinite_steps).
        loss_scale: the fp16 loss scale (1 otherwise).
    """

    def __init__(
        self,
        strategy,
        bert_config: modeling.BertConfig,
        config: TrainConfig,
        devices: distribute.Devices | None = None,
    ):
        self.strategy = strategy
        self.config = config
        self.devices = devices or distribute.Devices(strategy, "")
        self.num_workers = self.devices.num_workers
        self.worker_index = self.devices.worker_index
        self.num_replicas = strategy.num_replicas_in_sync
        self.local_replicas = len(strategy.extended.worker_devices)
        # Input shards: one per worker (each reads its own files); one process may read
        # several to reproduce the batches of a run on several workers.
        self.num_shards = config.input_shards or self.num_workers
        if self.num_shards % self.num_workers or (
            self.num_replicas * config.batch_size % self.num_shards
        ):
            raise ValueError(
                f"--input_shards={self.num_shards}: expected a multiple of the "
                f"{self.num_workers} worker(s) that divides the {self.num_replicas} "
                f"replica(s) × {config.batch_size} examples of a micro-batch"
            )
        shards_per_worker = self.num_shards // self.num_workers
        self.local_shards = list(
            range(
                self.worker_index * shards_per_worker, (self.worker_index + 1) * shards_per_worker
            )
        )
        self.accumulation = config.gradient_accumulation_steps
        self.use_loss_scale = config.precision == "fp16"
        self.xla = config.xla
        if self.xla is None:  # (train_and_evaluate resolves it before; tests may not)
            self.xla, _ = default_xla(
                config.precision,
                strategy.extended.worker_devices,
                hidden_size=bert_config.hidden_size,
            )
        # The initial weights are a function of --seed.
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            # Hash masks cost a fused integer hash per element, Philox masks a whole
            # Philox block (inline under XLA; without XLA TensorFlow's kernel, and
            # separate passes to compare, cast and multiply): hash masks with XLA and
            # without (modeling.hash_dropout compiles them there).
            # XLA's CPU compiler sums rows slowly where it fuses the sum with the input's
            # producer: there the gradients' column sums are products with ones (see
            # modeling.COLUMN_SUMS). Elsewhere they are sums over the rows (the "matmul"
            # choice was not measured on GPUs); either way half types sum in float32.
            # Without XLA, whose shapes are static, the encoder computes on the real
            # tokens only (modeling.BertEncoder, pack_tokens): on CPUs, where it was
            # measured. (On a GPU, finding the real tokens waits for the device once a
            # step, and the GELU's compiled cluster compiles once per packed shape.)
            on_cpus = all_cpus(strategy.extended.worker_devices)
            self.model = modeling.BertPretrainingModel(
                bert_config,
                dtype=PRECISION_POLICIES[config.precision],
                dropout_masks="hash",
                column_sums="matmul" if self.xla and on_cpus else "reduce",
                pack_tokens=not self.xla and on_cpus,
            )
            self.model.build_weights()
            names = modeling.original_name_map(self.model)
            by_id = {id(v): name for name, v in names.items()}
            self.variables = list(self.model.trainable_variables)
            self.variable_names = [by_id[id(v)] for v in self.variables]
            # Without XLA, AdamW updates through TensorFlow's fused Adam kernel (see
            # AdamWeightDecay._apply); XLA fuses the plain form just as well.
            fused = {"fused": not self.xla} if config.optimizer == "adamw" else {}
            self.optimizer = optimization.OPTIMIZERS[config.optimizer](
                self.variables,
                self.variable_names,
                weight_decay_rate=config.weight_decay_rate,
                **fused,
            )

            def counter(name, dtype=tf.int64, initial=0):
                return tf.Variable(
                    initial,
                    dtype=dtype,
                    trainable=False,
                    name=name,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )

            self.step = counter("global_step")
            self.updates = counter("updates")
            self.skipped_steps = counter("skipped_steps")
            self.nonfinite_streak = counter("nonfinite_streak")
            initial_scale = INITIAL_LOSS_SCALE if self.use_loss_scale else 1.0
            self.loss_scale = counter("loss_scale", tf.float32, initial_scale)
            self.good_steps = counter("good_steps")  # finite steps since the scale changed
        # The input positions of every shard, gathered before each save so that the
        # chief's checkpoint holds them all (a plain local variable on every worker).
        self.data_states = tf.Variable(
            [b""] * self.num_shards, dtype=tf.string, trainable=False, name="data_states"
        )
        self.schedule = optimization.WarmupPolynomialDecay(
            peak_learning_rate=config.learning_rate,
            num_warmup_steps=config.num_warmup_steps,
            num_train_steps=config.num_train_steps,
            power=config.poly_power,
        )
        self._model_variables = self.optimizer.model_variables
        compile_ = functools.partial(
            tf.function, jit_compile=True, reduce_retracing=True, autograph=False
        )
        if self.xla and self.num_replicas > 1:
            self._gradients = compile_(self._gradients_fn)
            self._apply = compile_(self._apply_fn)
            self._whole_replica_step = None
        elif self.xla:
            self._gradients, self._apply = self._gradients_fn, self._apply_fn
            self._whole_replica_step = compile_(self._replica_work)
        else:
            self._gradients, self._apply = self._gradients_fn, self._apply_fn
            self._whole_replica_step = None
        self._eval_replica = compile_(self._eval_fn) if self.xla else self._eval_fn

    def checkpoint_objects(self) -> dict:
        """What a training checkpoint holds besides the input position."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "step": self.step,
            "updates": self.updates,
            "skipped_steps": self.skipped_steps,
            "loss_scale": self.loss_scale,
            "good_steps": self.good_steps,
            "data_states": self.data_states,
        }

    # -- the replica's work ----------------------------------------------------------

    def _gradients_fn(self, batch, mlm_count, nsp_count, loss_scale, step, replica_id: int):
        """Accumulated gradients of this replica's K micro-batches, and their sums.

        Args:
            batch: this replica's rows, each feature [K, B, ...].
            mlm_count, nsp_count: masked tokens and examples of the whole effective batch.
            loss_scale: float32 scalar; the loss is multiplied by it before the gradient.
            step: int64 scalar, the optimizer step (dropout masks depend on it).
            replica_id: this replica's index among all replicas (a Python int).

        Returns:
            (gradients, one float32 tensor per variable, of loss · loss_scale; the metric
            sums plus "loss", this replica's share of the unscaled global loss).
        """
        num_micro = self.accumulation
        seed = tf.constant(self.config.seed, tf.int64)

        def micro_batch(k):
            features = {name: value[k] for name, value in batch.items()}
            # Dropout masks are a pure function of (seed, step, micro-batch, replica):
            # resumable without saved random state.
            slot = (step * num_micro + tf.cast(k, tf.int64)) * self.num_replicas + replica_id
            with tf.GradientTape() as tape:
                sums = pretraining_sums(
                    self.model, features, training=True, dropout_seed=tf.stack([seed, slot])
                )
                loss = global_loss(sums, mlm_count, nsp_count)
                scaled = loss * loss_scale if self.use_loss_scale else loss
            grads = tape.gradient(scaled, self.variables)
            # Embedding lookups give sparse (IndexedSlices) gradients whose row counts
            # differ between replicas and micro-batches: sum them densely.
            grads = [tf.convert_to_tensor(g) for g in grads]
            sums["loss"] = loss
            return grads, sums

        grads, sums = micro_batch(0)
        if num_micro == 1:
            return grads, sums

        def accumulate(k, grads, sums):
            more_grads, more_sums = micro_batch(k)
            grads = [a + b for a, b in zip(grads, more_grads)]
            sums = {name: sums[name] + more_sums[name] for name in sums}
            return k + 1, grads, sums

        # A graph loop (one traced body), not K unrolled copies of the model.
        _, grads, sums = tf.while_loop(
            lambda k, *_: k < num_micro, accumulate, (tf.constant(1), grads, sums)
        )
        return grads, sums

    def _apply_fn(self, grads, loss, learning_rate, count, loss_scale, local_index: int):
        """Unscales, checks, clips and applies the reduced gradients to the local copy.

        Returns:
            (global gradient norm before clipping, whether the update was applied).
        """
        if self.use_loss_scale:
            grads = [g * (1.0 / loss_scale) for g in grads]
        grad_norm = tf.linalg.global_norm(grads)
        # A finite norm means every gradient is finite (a NaN or Inf anywhere propagates
        # into the sum of squares): one scalar test instead of one per tensor.
        finite = tf.math.is_finite(grad_norm) & tf.math.is_finite(loss)

        def update(apply=None):
            clipped, _ = tf.clip_by_global_norm(grads, CLIP_NORM, use_norm=grad_norm)
            ops = []
            for index, (variable, grad) in enumerate(zip(self._model_variables, clipped)):
                slots = tuple(_local_component(s, local_index) for s in self.optimizer.slots(index))
                variable = _local_component(variable, local_index)
                ops.append(
                    self.optimizer.update(
                        index, variable, grad, learning_rate, count, slots=slots, apply=apply
                    )
                )
            with tf.control_dependencies(ops):
                return tf.constant(True) if apply is None else tf.identity(apply)

        if self.xla:
            # Compiled, a branch around the update became per-variable selects that
            # doubled its time; the optimizer folds the skip into its coefficients.
            return grad_norm, update(apply=finite)
        return grad_norm, tf.cond(finite, update, lambda: tf.constant(False))

    def _replica_work(self, batch, mlm_count, nsp_count, learning_rate, count, loss_scale, step):
        """Everything one replica does in a step; runs under `strategy.run`."""
        context = tf.distribute.get_replica_context()
        replica_id = _replica_id(context)
        local_index = replica_id % self.local_replicas
        if self.num_workers > 1:
            # Each worker holds only its share of the global batch: count globally.
            mlm_count, nsp_count = context.all_reduce(
                "sum",
                [
                    tf.reduce_sum(batch["masked_lm_weights"]),
                    tf.reduce_sum(batch[input_pipeline.EXAMPLE_WEIGHT]),
                ],
            )
        grads, sums = self._gradients(batch, mlm_count, nsp_count, loss_scale, step, replica_id)
        if self.num_replicas > 1:
            # The gradient of the global loss is the sum of every replica's share; the
            # loss rides along so that every replica sees the same finiteness.
            reduced = context.all_reduce("sum", [*grads, sums["loss"]])
            grads, loss = reduced[:-1], reduced[-1]
        else:
            loss = sums["loss"]
        grad_norm, applied = self._apply(grads, loss, learning_rate, count, loss_scale, local_index)
        result = {name: sums[name] for name in SUM_KEYS}
        result.update(grad_norm=grad_norm, applied=applied, loss=loss)
        return result

    def _replica_step(self, *args):
        if self._whole_replica_step is not None:
            return self._whole_replica_step(*args)
        return self._replica_work(*args)

    # -- the cross-replica step -------------------------------------------------------

    def _distribute(self, local_batch: dict, micro_batches: int):
        """Hands every local replica its rows of this worker's batch, as [K, B, ...]."""
        first = self.worker_index * self.local_replicas
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: input_pipeline.replica_micro_batches(
                local_batch,
                ctx.replica_id_in_sync_group - first,
                self.local_replicas,
                micro_batches,
            )
        )

    def _first(self, value):
        """The first local replica's copy of a value every replica holds identically."""
        return self.strategy.experimental_local_results(value)[0]

    def _train_step(self, iterators) -> dict:
        global_batch = input_pipeline.merge_shards(
            [next(iterator) for iterator in iterators], self.accumulation
        )  # this worker's rows of the global batch (all of it on one machine)
        mlm_count = tf.reduce_sum(global_batch["masked_lm_weights"])
        nsp_count = tf.reduce_sum(global_batch[input_pipeline.EXAMPLE_WEIGHT])
        batch = self._distribute(global_batch, self.accumulation)
        step = self.step.read_value()
        learning_rate = self.schedule(step)
        count = tf.cast(self.updates.read_value() + 1, tf.float32)
        loss_scale = self.loss_scale.read_value()
        results = self.strategy.run(
            self._replica_step,
            args=(batch, mlm_count, nsp_count, learning_rate, count, loss_scale, step),
        )
        applied = self._first(results["applied"])
        loss = self._first(results["loss"])
        # A skipped fp16 step with a finite loss and room to lower the scale is loss
        # scaling at work; anything else non-finite counts towards the NaN guard.
        if self.use_loss_scale:
            explained = tf.math.is_finite(loss) & (loss_scale > 1.0)
            alarming = tf.logical_not(applied) & tf.logical_not(explained)
            grown = self.good_steps + 1 >= LOSS_SCALE_GROWTH_INTERVAL
            self.loss_scale.assign(
                tf.where(
                    applied,
                    tf.where(grown, loss_scale * 2.0, loss_scale),
                    tf.maximum(loss_scale * 0.5, 1.0),
                )
            )
            self.good_steps.assign(
                tf.where(applied & tf.logical_not(grown), self.good_steps + 1, 0)
            )
        else:
            alarming = tf.logical_not(applied)
        skipped = tf.cast(tf.logical_not(applied), tf.int64)
        self.nonfinite_streak.assign(tf.where(alarming, self.nonfinite_streak + 1, 0))
        self.skipped_steps.assign_add(skipped)
        self.updates.assign_add(1 - skipped)
        self.step.assign_add(1)
        sums = {name: self.strategy.reduce("sum", results[name], axis=None) for name in SUM_KEYS}
        loss_finite = tf.math.is_finite(sums["mlm_loss_sum"] + sums["nsp_loss_sum"])
        # Metrics of non-finite steps would turn the logged averages into NaN.
        metrics = {name: tf.where(loss_finite, value, 0.0) for name, value in sums.items()}
        applied_float = tf.cast(applied, tf.float32)
        metrics["grad_norm_sum"] = tf.where(applied, self._first(results["grad_norm"]), 0.0)
        metrics["applied_steps"] = applied_float
        metrics["skipped_steps"] = 1.0 - applied_float
        metrics["nonfinite_steps"] = tf.cast(alarming, tf.float32)
        metrics["learning_rate"] = learning_rate
        metrics["loss_scale"] = loss_scale
        return metrics

    # Autograph off (here and in every compiled function): the loops are written as
    # graph loops, and converting the model, loss and optimizer code took half of the
    # first step's tracing time.
    @tf.function(autograph=False)
    def train_steps(self, iterators, num_steps) -> dict:
        """Runs `num_steps` optimizer steps on the next global batches of `iterators`.

        Args:
            iterators: plain iterators of this worker's input shards (one on one machine,
                yielding global batches of K·R·B rows; see `input_pipeline.merge_shards`).
            num_steps: int32/int64 scalar tensor (a tensor, so that every loop length
                shares one trace).

        Returns:
            float32 scalars summed over the steps: the metric sums (of the steps whose
            loss was finite), grad_norm_sum (of applied steps), applied_steps,
            skipped_steps, nonfinite_steps; and of the last step: learning_rate,
            loss_scale.
        """
        names = (*SUM_KEYS, "grad_norm_sum", "applied_steps", "skipped_steps", "nonfinite_steps")
        totals = {name: tf.constant(0.0) for name in names}
        last = {"learning_rate": tf.constant(0.0), "loss_scale": tf.constant(0.0)}

        def one_step(i, totals, last):
            metrics = self._train_step(iterators)
            totals = {name: totals[name] + metrics[name] for name in totals}
            return i + 1, totals, {name: metrics[name] for name in last}

        num_steps = tf.cast(num_steps, tf.int64)
        _, totals, last = tf.while_loop(
            lambda i, *_: i < num_steps, one_step, (tf.constant(0, tf.int64), totals, last)
        )
        return dict(totals, **last)

    def train_step(self, iterators) -> dict:
        """One optimizer step; see `train_steps` (one iterator may be passed bare)."""
        if not isinstance(iterators, (list, tuple)):
            iterators = [iterators]
        return self.train_steps(list(iterators), tf.constant(1, tf.int64))

    def datasets(self, files: Sequence[str]) -> list[tf.data.Dataset]:
        """The training input of this worker's shards."""
        rows = self.config.batch_size * self.num_replicas // self.num_shards
        return [
            input_pipeline.train_dataset(
                files,
                rows * self.accumulation,
                self.config.max_seq_length,
                self.config.max_predictions_per_seq,
                seed=self.config.seed,
                shuffle_buffer=self.config.shuffle_buffer,
                cycle_length=self.config.cycle_length,
                shard=shard,
                num_shards=self.num_shards,
            )
            for shard in self.local_shards
        ]

    def record_data_states(self, iterators) -> None:
        """Gathers every shard's input position into `data_states` (before a save)."""
        local = [distribute.iterator_state(iterator) for iterator in iterators]
        if self.num_workers == 1:
            states = local
        else:
            packed = distribute.gather_bytes(self.devices, _pack(local))
            states = [state for worker in packed for state in _unpack(worker)]
        self.data_states.assign(states)

    def restore_data_states(self, iterators) -> None:
        """Moves this worker's iterators to the positions in `data_states` (after a restore)."""
        states = self.data_states.numpy()
        for iterator, shard in zip(iterators, self.local_shards):
            distribute.restore_iterator_state(iterator, bytes(states[shard]))

    # -- evaluation ----------------------------------------------------------------

    def _eval_fn(self, batch, replica_id: int):
        """Eval sums of one replica's batch. `replica_id` (a Python int) gives each
        replica its own trace: a compiled trace captures the variable copies of the
        replica that traced it, and another replica must not reuse it."""
        del replica_id
        features = {name: value[0] for name, value in batch.items()}  # K = 1
        return pretraining_sums(self.model, features, training=False)

    def _eval_work(self, batch):
        return self._eval_replica(batch, _replica_id(tf.distribute.get_replica_context()))

    @tf.function(autograph=False)
    def eval_step(self, global_batch: dict) -> dict:
        if self.num_workers > 1:
            # Only the chief evaluates, on its first device: no collective to wait for.
            return self._eval_replica({name: v[tf.newaxis] for name, v in global_batch.items()}, 0)
        batch = self._distribute(global_batch, 1)
        sums = self.strategy.run(self._eval_work, args=(batch,))
        return {name: self.strategy.reduce("sum", v, axis=None) for name, v in sums.items()}

    def evaluate(self, files: Sequence[str], max_eval_steps: int) -> dict:
        """Masked-LM and next-sentence loss and accuracy over the eval files.

        Returns:
            The original release's eval keys: global_step, loss (masked_lm_loss +
            next_sentence_loss), masked_lm_accuracy, masked_lm_loss,
            next_sentence_accuracy, next_sentence_loss; plus eval_examples, eval_steps
            and masked_lm_most_frequent_accuracy (the accuracy of always predicting
            the most frequent masked token: the floor to beat).
        """
        replicas = self.num_replicas if self.num_workers == 1 else 1
        dataset = input_pipeline.eval_dataset(
            files,
            self.config.eval_batch_size * replicas,
            self.config.max_seq_length,
            self.config.max_predictions_per_seq,
        )
        totals: dict[str, float] = {}
        # Masked-token frequencies, for the accuracy of always predicting the most
        # frequent one: the floor a model must clear to have learnt anything.
        target_counts = np.zeros(self.model.config.vocab_size)
        steps = 0
        batches = iter(dataset)
        while not (max_eval_steps and steps >= max_eval_steps):
            try:
                global_batch = next(batches)
            except StopIteration:
                break
            except tf.errors.DataLossError as e:
                raise _read_error(e, files, "eval") from e
            for name, value in self.eval_step(global_batch).items():
                totals[name] = totals.get(name, 0.0) + float(value)
            np.add.at(
                target_counts,
                global_batch["masked_lm_ids"].numpy().ravel(),
                global_batch["masked_lm_weights"].numpy().ravel(),
            )
            steps += 1
        if not steps:
            raise ValueError(f"the eval data ({', '.join(files)}) holds no examples")
        results = summarize(totals)
        results["global_step"] = int(self.step.numpy())
        results["eval_examples"] = int(totals["nsp_count"])
        results["masked_lm_most_frequent_accuracy"] = target_counts.max() / totals["mlm_count"]
        results["eval_steps"] = steps
        return results


def _pack(parts: Sequence[bytes]) -> bytes:
    """Several byte strings as one (length-prefixed)."""
    return b"".join(len(p).to_bytes(8, "little") + p for p in parts)


def _unpack(packed: bytes) -> list[bytes]:
    parts, offset = [], 0
    while offset < len(packed):
        length = int.from_bytes(packed[offset : offset + 8], "little")
        parts.append(packed[offset + 8 : offset + 8 + length])
        offset += 8 + length
    return parts


def summarize(totals: dict) -> dict:
    """Global sums → losses and accuracies (normalised by the global counts).

    "loss" is masked_lm_loss + next_sentence_loss, the quantity training minimises.
    """
    mlm_count = max(totals["mlm_count"], 1e-9)
    nsp_count = max(totals["nsp_count"], 1e-9)
    return {
        "masked_lm_loss": totals["mlm_loss_sum"] / mlm_count,
        "masked_lm_accuracy": totals["mlm_correct"] / mlm_count,
        "next_sentence_loss": totals["nsp_loss_sum"] / nsp_count,
        "next_sentence_accuracy": totals["nsp_correct"] / nsp_count,
        "loss": totals["mlm_loss_sum"] / mlm_count + totals["nsp_loss_sum"] / nsp_count,
    }


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


# ----------------------------------------------------------------------------------------
# Files of the output directory (local or gs://: everything goes through tf.io.gfile)


def _is_url(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> str:
    return path if _is_url(path) else os.path.abspath(path)


def _same_file(a: str, b: str) -> bool:
    if _is_url(a) or _is_url(b):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def _write_atomically(path: str, text: str) -> None:
    """Writes under a hidden temporary name, then renames: never a half-written file."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(text)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException as e:
        try:
            if tf.io.gfile.exists(temporary):
                tf.io.gfile.remove(temporary)
        except tf.errors.OpError:
            pass
        if isinstance(e, tf.errors.OpError):
            raise OSError(f"cannot write {path}: {_last_line(e.message)}") from e
        raise


def _copy_file(source: str, destination: str) -> None:
    """Copies `source` to `destination`; nothing to do when they are the same file."""
    # tf.io.gfile.copy(a, a, overwrite=True) truncates `a` to 0 bytes.
    if _same_file(source, destination):
        return
    with tf.io.gfile.GFile(source) as f:
        _write_atomically(destination, f.read())


# ----------------------------------------------------------------------------------------
# Checkpoints


def short_error(error: BaseException) -> str:
    """One readable line of an error; TensorFlow's can hold whole weight matrices."""
    if isinstance(error, tf.errors.OpError):
        return error.message
    text = str(error)
    if not isinstance(error, AssertionError):
        return text
    # "Found 16 Python objects that were not bound to checkpointed values, ...
    # Showing 10 of 16 unmatched objects: [<Variable path=..., value=[[...]]>, ...]"
    head = text.split("\n", 1)[0].split(" Showing ", 1)[0].split(": [", 1)[0][:300].rstrip(".")
    names = re.findall(r"path=([^\s,>]+)", text)
    return head + (f" (e.g. {', '.join(names[:3])})" if names else "")


def _restore(checkpoint: tf.train.Checkpoint, path: str, what: str, partial: bool, hint: str):
    """Restores `checkpoint` from `path`; a mismatch is a ValueError saying what and why.

    Args:
        partial: Only the objects of `checkpoint` must be found in `path` (e.g. the
            weights of a full training checkpoint); else everything must match both ways.
    """
    try:
        status = checkpoint.restore(path)
    except tf.errors.OpError as e:  # e.g. a truncated or overwritten .index file
        raise ValueError(f"{what} {path} cannot be read: {short_error(e)}") from e
    except ValueError as e:  # a variable of another shape
        raise ValueError(f"{what} {path} does not fit this model: {e}; {hint}") from e
    try:
        if partial:
            status.expect_partial().assert_existing_objects_matched()
        else:
            status.assert_consumed()
    except AssertionError as e:  # variables missing on one side
        raise ValueError(f"{what} {path} does not fit this model: {short_error(e)}; {hint}") from e


# ----------------------------------------------------------------------------------------
# The run


class _StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks between loops of steps."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum
        log(f"received signal {signum}: writing a checkpoint after these steps, then stopping")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Settings that must not change when a run is resumed from its checkpoints: the data
# position, the learning-rate schedule or the dropout masks would silently stop meaning
# what they did. The input yields GLOBAL batches, so the replica count and the
# accumulation may change if the effective batch does not.
RESUME_KEYS = (
    "train_files", "max_seq_length", "max_predictions_per_seq", "global_batch_size", "seed",
    "learning_rate", "num_warmup_steps", "num_train_steps", "xla", "optimizer", "poly_power",
    "weight_decay_rate", "shuffle_buffer", "cycle_length",
)  # fmt: skip


def _describe_change(key: str, saved: dict, now: dict) -> str:
    old, new = saved[key], now[key]
    if key == "global_batch_size":

        def product(facts):
            return (
                f"{facts.get('batch_size')} × {facts.get('num_replicas')} × "
                f"{facts.get('gradient_accumulation_steps')}"
            )

        return (
            "effective batch (--batch_size × replicas × --gradient_accumulation_steps): "
            f"{old} ({product(saved)}) then, {new} ({product(now)}) now"
        )
    if key == "train_files":
        added = [f for f in new if f not in old]
        removed = [f for f in old if f not in new]
        parts = [f"{len(old)} file(s) then, {len(new)} now"]
        for label, files in (("added", added), ("removed", removed)):
            if files:
                more = f" and {len(files) - 3} more" if len(files) > 3 else ""
                parts.append(f"{label}: {', '.join(files[:3])}{more}")
        return "training files (--input_file): " + "; ".join(parts)
    if key == "xla":
        return (
            f"--xla: {old!r} then, {new!r} now (the two modes round differently and, on "
            "CPUs, draw other dropout masks: the run would not continue as it started)"
        )
    return f"--{key}: {old!r} then, {new!r} now"


def _check_resume(config: TrainConfig, run_facts: dict, saved: dict) -> None:
    """Refuses to resume a run whose checkpoints were made with other settings or data."""
    now = dict(dataclasses.asdict(config), **run_facts)
    changed = []
    for key in RESUME_KEYS:
        if key in saved and saved[key] != now[key]:
            changed.append(_describe_change(key, saved, now))
    if not changed and "train_file_identity" in saved:
        before = {path: tuple(identity) for path, *identity in saved["train_file_identity"]}
        for path, *identity in now["train_file_identity"]:
            if path in before and before[path] != tuple(identity):
                old_size, new_size = before[path][0], identity[0]
                sizes = f"{old_size:,} bytes then, {new_size:,} now" if old_size != new_size else (
                    "same size, other contents"
                )  # fmt: skip
                changed.append(
                    f"{path} changed since the run started ({sizes}): the saved input "
                    "position would point into other data"
                )
    if changed:
        raise ValueError(
            f"{config.output_dir} holds checkpoints of a run with other settings or data:\n  "
            + "\n  ".join(changed)
            + "\nresuming would not continue that run. Use the same flags and data, or a new "
            f"--output_dir with --init_checkpoint={config.output_dir} to start from its weights"
        )


def _data_files(config: TrainConfig, bert_config: modeling.BertConfig):
    """Expands and checks the train and eval files; resolves the sequence settings.

    Returns:
        (train files, eval files, whether eval is held out, config with max_seq_length
        and max_predictions_per_seq taken from the data where the flags were not given).
    """

    def checked(patterns: str, flag: str, seq, pred) -> list[input_pipeline.DataFile]:
        files = input_pipeline.expand_record_files(patterns, flag)
        return input_pipeline.check_data_files(
            files, seq, pred, bert_config.vocab_size, flag=flag, log=sys.stderr
        )

    seq, pred = config.max_seq_length, config.max_predictions_per_seq
    train_files = []
    if config.do_train:
        train_files = checked(config.input_file, "--input_file", seq, pred)
        seq, pred = train_files[0].max_seq_length, train_files[0].max_predictions_per_seq
    wants_eval = config.do_eval or config.eval_every_n_steps or config.eval_checkpoint
    eval_files, held_out = [], True
    if wants_eval and config.eval_input_file:
        eval_files = checked(config.eval_input_file, "--eval_input_file", seq, pred)
        overlap = sorted({f.path for f in train_files} & {f.path for f in eval_files})
        if overlap and not config.allow_eval_on_train_files:
            raise input_pipeline.DataMismatchError(
                f"--input_file and --eval_input_file share {len(overlap)} file(s) "
                f"({', '.join(overlap[:3])}{' ...' if len(overlap) > 3 else ''}): the eval "
                "numbers would not be held out. Give disjoint globs, or pass "
                "--allow_eval_on_train_files to evaluate on them anyway"
            )
        held_out = not overlap
    elif wants_eval:  # the training files, named by --input_file
        eval_files = train_files or checked(config.input_file, "--input_file", seq, pred)
        held_out = False
    if wants_eval and not held_out:
        log(
            "warning: evaluating on training data (no --eval_input_file, or it overlaps "
            "--input_file): the eval numbers are not held out"
        )
    files = train_files or eval_files
    if files:
        seq, pred = files[0].max_seq_length, files[0].max_predictions_per_seq
    input_pipeline.check_same_vocabulary(train_files + eval_files)
    if seq is not None and seq > bert_config.max_position_embeddings:
        raise ValueError(
            f"max_seq_length={seq} (the data's or --max_seq_length) exceeds "
            f"max_position_embeddings={bert_config.max_position_embeddings} of "
            f"{config.bert_config_file}"
        )
    config = dataclasses.replace(config, max_seq_length=seq, max_predictions_per_seq=pred)
    return train_files, eval_files, held_out, config


def _log_files(kind: str, files) -> None:
    counts = [f.num_instances for f in files]
    known = sum(c for c in counts if c is not None)
    unknown = sum(c is None for c in counts)
    log(
        f"{kind} data: {len(files)} file(s), {known:,} instances"
        + (f" (+{unknown} file(s) without metadata)" if unknown else "")
        + "".join(f"\n  {f.path}" for f in files[:10])
        + (f"\n  ... and {len(files) - 10} more" if len(files) > 10 else "")
    )


def train_and_evaluate(
    config: TrainConfig,
    strategy: tf.distribute.Strategy | None = None,
    devices: distribute.Devices | None = None,
) -> dict:
    """Trains (if config.do_train) and evaluates (if config.do_eval).

    Args:
        config: the run's settings.
        strategy: a one-machine distribution strategy to use (tests); default: from the
            device and cluster flags via `distribute.make_strategy`.
        devices: the strategy with its cluster facts (takes precedence over `strategy`).

    Returns:
        dict with "train" (the last logged training metrics; empty if the checkpoint
        was already at --num_train_steps), "eval" (the newest eval results),
        "evals" (every eval of this call, in order) and, if SIGINT or SIGTERM stopped
        training, "stopped_by_signal" (the signal number; the final eval is then
        skipped, its numbers would be those of a half-trained model).

    Raises:
        NonFiniteLossError: after --max_nonfinite_steps consecutive non-finite steps.
        WorkerLostError: when another worker of the cluster stopped answering.
    """
    bert_config = checkpoints.load_bert_config(config.bert_config_file)
    train_files, eval_files, held_out, config = _data_files(config, bert_config)
    if devices is None and strategy is None:
        devices = distribute.make_strategy(
            config.num_gpus, config.cpu_replicas, config.worker_hosts, config.task_index
        )
    elif devices is None:
        devices = distribute.Devices(
            strategy,
            f"{strategy.num_replicas_in_sync} replica(s): "
            + ", ".join(strategy.extended.worker_devices),
        )
    strategy = devices.strategy
    num_replicas = strategy.num_replicas_in_sync
    global_batch_size = config.batch_size * num_replicas * config.gradient_accumulation_steps
    if train_files and devices.num_workers > 1:
        input_pipeline.shard_files([f.path for f in train_files], 0, devices.num_workers)

    latest = tf.train.latest_checkpoint(config.output_dir)
    if devices.num_workers > 1:
        _check_workers_see_one_run(devices, latest, config.output_dir)
    init_source = None
    if config.init_checkpoint and latest and config.do_train:
        log(f"--init_checkpoint ignored: {config.output_dir} holds checkpoints to resume from")
    elif config.init_checkpoint:
        init_source = checkpoints.resolve_init_checkpoint(config.init_checkpoint)
    eval_sources = _eval_sources(config, latest, init_source)
    run_facts = {
        "num_replicas": num_replicas,
        "num_workers": devices.num_workers,
        "input_shards": config.input_shards or devices.num_workers,
        "global_batch_size": global_batch_size,
        "train_files": [_absolute(f.path) for f in train_files],
        "train_file_identity": [[_absolute(f.path), f.size, f.fingerprint] for f in train_files],
    }
    saved_config = os.path.join(config.output_dir, "train_config.json")
    saved = None
    if latest and config.do_train and tf.io.gfile.exists(saved_config):
        with tf.io.gfile.GFile(saved_config) as f:
            saved = json.load(f)
    config, xla_reason = _resolve_xla(config, devices, saved, bert_config.hidden_size)
    if saved is not None:
        _check_resume(config, run_facts, saved)

    if devices.is_chief:
        tf.io.gfile.makedirs(config.output_dir)
    trainer = Trainer(strategy, bert_config, config, devices)
    num_parameters = sum(int(np.prod(v.shape)) for v in trainer.variables)
    log(f"TensorFlow {tf.__version__}; {devices.description}")
    if saved and saved.get("num_replicas") != num_replicas:
        log(
            f"resuming with {num_replicas} replica(s); the run used {saved['num_replicas']} "
            "so far (same effective batch; dropout masks depend on the replica)"
        )
    compiled = ("XLA" if config.xla else "no XLA") + (f" ({xla_reason})" if xla_reason else "")
    log(
        f"precision {config.precision} ({PRECISION_POLICIES[config.precision]}), {compiled}, "
        f"optimizer {config.optimizer}, up to {config.steps_per_loop} step(s) per loop"
    )
    if config.do_train:
        accumulation = (
            f" × {config.gradient_accumulation_steps} accumulated micro-batches"
            if config.gradient_accumulation_steps > 1
            else ""
        )
        workers = (
            f" ({devices.num_workers} workers × {num_replicas // devices.num_workers})"
            if devices.num_workers > 1
            else ""
        )
        decay = "linear" if config.poly_power == 1 else f"polynomial (power {config.poly_power:g})"
        log(
            f"batch: {config.batch_size} per replica × {num_replicas} replica(s){workers}"
            f"{accumulation} = {global_batch_size} global per optimizer step; "
            f"{config.num_train_steps:,} steps ({config.num_warmup_steps:,} warm-up, then "
            f"{decay} decay), peak learning rate {config.learning_rate:g}"
        )
    if eval_files and devices.is_chief:
        eval_replicas = num_replicas if devices.num_workers == 1 else 1
        log(
            f"eval batch: {config.eval_batch_size} per replica × {eval_replicas} replica(s) = "
            f"{config.eval_batch_size * eval_replicas} global"
            + (" (the chief evaluates alone)" if devices.num_workers > 1 else "")
            + (f"; every {config.eval_every_n_steps} steps" if config.eval_every_n_steps else "")
        )
    log(
        f"model: {bert_config.num_hidden_layers} layers, hidden {bert_config.hidden_size}, "
        f"{bert_config.num_attention_heads} heads, vocab {bert_config.vocab_size}, "
        f"{num_parameters:,} parameters; sequences of {config.max_seq_length} with "
        f"{config.max_predictions_per_seq} predictions"
    )
    log(f"output directory: {config.output_dir}")
    for kind, files in (("train", train_files), ("eval", eval_files)):
        if files:
            _log_files(kind, files)

    evaluator = None
    if eval_files and devices.is_chief:
        evaluator = Evaluator(trainer, config, eval_files, held_out)
    results: dict = {"evals": []}
    if eval_sources is not None:  # evaluation only
        if evaluator is None:
            log("evaluation is the chief's (worker 0's) work: nothing to do here")
            return results
        for source in eval_sources:
            _restore_for_eval(trainer, source, bert_config)
            results["evals"].append(evaluator.run(source.path))
    else:
        logged, stopped_by = _train(
            trainer, config, train_files, init_source, run_facts, saved_config, evaluator,
            bert_config,
        )  # fmt: skip
        results["train"] = logged
        results["evals"] += evaluator.done if evaluator else []
        if stopped_by is not None:
            results["stopped_by_signal"] = stopped_by
        if config.do_eval and stopped_by is not None:
            log("final eval skipped: training was stopped (the same command resumes it)")
        elif (
            config.do_eval
            and evaluator is not None
            and not (
                evaluator.done and evaluator.done[-1]["global_step"] == int(trainer.step.numpy())
            )
        ):
            results["evals"].append(evaluator.run(tf.train.latest_checkpoint(config.output_dir)))
    if results["evals"]:
        results["eval"] = results["evals"][-1]
    if evaluator is not None:
        evaluator.log_best()
    return results


class WorkerLostError(RuntimeError):
    """Another worker of the cluster stopped answering."""


def _resolve_xla(
    config: TrainConfig,
    devices: distribute.Devices,
    saved: dict | None,
    hidden_size: int | None = None,
) -> tuple[TrainConfig, str]:
    """`config` with --xla decided, and why when the flag was not given ("" when it was).

    A resumed run keeps the mode its checkpoints were made with (its rounding and, on
    CPUs, where the uncompiled step packs the tokens, its dropout masks depend on it); a
    new one takes `default_xla` for this worker's replicas. The workers of a cluster
    compare their modes (every worker, whatever its flags, so that none waits alone in a
    collective): XLA is on only where it is on for all of them, and if it is
    off somewhere while a worker was given --xla, every worker refuses to start.
    """
    if config.xla is not None:
        xla, reason = config.xla, ""
    elif saved is not None and isinstance(saved.get("xla"), bool):
        xla, reason = saved["xla"], "as the resumed run"
    else:
        xla, why = default_xla(
            config.precision, devices.strategy.extended.worker_devices, hidden_size=hidden_size
        )
        reason = "auto" + (f": {why}" if why else "")
    if devices.num_workers > 1:
        everywhere = bool(distribute.agree_on_min(devices, int(xla)))
        asked_somewhere = bool(distribute.agree_on_max(devices, int(config.xla is True)))
        if asked_somewhere and not everywhere:
            raise ValueError(
                "a worker was given --xla, but XLA is off on another (given --noxla there, "
                "or the mode of the run being resumed, or the default for its hardware): "
                "give every worker the same --xla or --noxla"
            )
        if everywhere != xla:
            xla, reason = everywhere, "auto: off on another worker of the cluster"
    return dataclasses.replace(config, xla=xla), reason


def _check_workers_see_one_run(devices: distribute.Devices, latest: str | None, output_dir: str):
    """Every worker must resume from the same checkpoint: the output dir must be shared."""
    step = int(re.search(r"(\d+)$", latest).group(1)) if latest else -1
    low, high = distribute.agree_on_min(devices, step), distribute.agree_on_max(devices, step)
    if low != high:
        raise ValueError(
            f"the workers do not see the same checkpoints in --output_dir={output_dir} (newest "
            f"step {low} on one, {high} on another; -1: none): every worker restores from the "
            "chief's checkpoints, so --output_dir must be one directory every worker reads "
            "(a shared filesystem or a bucket path)"
        )


def _eval_sources(config: TrainConfig, latest: str | None, init_source):
    """The checkpoints to evaluate when not training (None when training).

    --eval_checkpoint=all: every checkpoint of --output_dir; --eval_checkpoint=PATH: that
    one; else --init_checkpoint when given, else the newest checkpoint of --output_dir.
    """
    if config.do_train:
        return None
    if config.eval_checkpoint == "all":
        paths = _all_checkpoints(config.output_dir)
        if not paths:
            raise ValueError(f"--eval_checkpoint=all: {config.output_dir} holds no checkpoint")
        return [checkpoints.resolve_init_checkpoint(p, "--eval_checkpoint") for p in paths]
    if config.eval_checkpoint:
        return [checkpoints.resolve_init_checkpoint(config.eval_checkpoint, "--eval_checkpoint")]
    if init_source is not None:
        return [init_source]
    if latest:
        return [checkpoints.resolve_init_checkpoint(latest)]
    raise ValueError(
        f"--do_eval without --do_train needs a checkpoint: none in {config.output_dir}, no "
        "--init_checkpoint and no --eval_checkpoint"
    )


def _all_checkpoints(directory: str) -> list[str]:
    """Every complete checkpoint prefix in `directory`, oldest first (by step)."""
    prefixes = []
    for index in tf.io.gfile.glob(os.path.join(directory, "model.ckpt-*.index")):
        match = re.search(r"model\.ckpt-(\d+)\.index$", index)
        if match:
            prefixes.append((int(match.group(1)), index[: -len(".index")]))
    return [prefix for _, prefix in sorted(prefixes)]


def _restore_for_eval(trainer: Trainer, source, bert_config) -> None:
    """Loads the weights (and, for this tool's checkpoints, the step) to evaluate."""
    with trainer.strategy.scope():
        report = checkpoints.restore_initial_weights(trainer.model, source, bert_config)
    step = 0
    if source.kind == "bert-gpu":
        reader = tf.train.load_checkpoint(source.path)
        for key in reader.get_variable_to_shape_map():
            if key.startswith("step/"):
                step = int(reader.get_tensor(key))
    trainer.step.assign(step)
    for line in report.log_lines():
        log(line)
    log(f"evaluating {source.path} (step {step})")


class Evaluator:
    """Evaluates on the eval files and keeps every result.

    Each result is appended to output_dir/eval_results.jsonl (with its step, checkpoint,
    eval files and whether they are held out), written to output_dir/eval_results.txt
    in the original release's format (the newest only), logged, and written to
    TensorBoard under output_dir/eval at its step.
    """

    def __init__(self, trainer: Trainer, config: TrainConfig, files, held_out: bool):
        self.trainer = trainer
        self.config = config
        self.files = [f.path for f in files]
        self.held_out = held_out
        self.done: list[dict] = []

    @property
    def jsonl_path(self) -> str:
        return os.path.join(self.config.output_dir, "eval_results.jsonl")

    def run(self, checkpoint: str | None) -> dict:
        results = self.trainer.evaluate(self.files, self.config.max_eval_steps)
        step = results["global_step"]
        text = "".join(f"{key} = {results[key]}\n" for key in sorted(results))
        _write_atomically(os.path.join(self.config.output_dir, "eval_results.txt"), text)
        record = dict(
            results,
            checkpoint=checkpoint,
            eval_files=[_absolute(f) for f in self.files],
            held_out=self.held_out,
            time=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        previous = ""
        if tf.io.gfile.exists(self.jsonl_path):
            with tf.io.gfile.GFile(self.jsonl_path) as f:
                previous = f.read()
        _write_atomically(self.jsonl_path, previous + json.dumps(record, sort_keys=True) + "\n")
        writer = tf.summary.create_file_writer(os.path.join(self.config.output_dir, "eval"))
        with writer.as_default(step=step):
            for key in ("loss", "masked_lm_loss", "masked_lm_accuracy"):
                tf.summary.scalar(key, results[key])
            for key in ("next_sentence_loss", "next_sentence_accuracy"):
                tf.summary.scalar(key, results[key])
        writer.close()
        held = "held-out" if self.held_out else "NOT held-out (training data)"
        log(
            f"eval at step {step} ({held}, {results['eval_examples']:,} examples): "
            f"loss {results['loss']:.4f}  mlm {results['masked_lm_loss']:.4f} acc "
            f"{results['masked_lm_accuracy']:.4f} (most frequent "
            f"{results['masked_lm_most_frequent_accuracy']:.4f})  "
            f"nsp {results['next_sentence_loss']:.4f} acc "
            f"{results['next_sentence_accuracy']:.4f}; appended to {self.jsonl_path}"
        )
        self.done.append(record)
        return record

    def best(self) -> dict | None:
        """The result with the lowest masked-LM loss among the run's evals on these files."""
        if not tf.io.gfile.exists(self.jsonl_path):
            return None
        with tf.io.gfile.GFile(self.jsonl_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        files = [_absolute(f) for f in self.files]
        same_data = [r for r in records if r.get("eval_files") == files]
        return min(same_data, key=lambda r: r["masked_lm_loss"], default=None)

    def log_best(self) -> None:
        best = self.best()
        if best is not None:
            log(
                f"best eval so far on this eval data: step {best['global_step']} "
                f"(masked_lm_loss {best['masked_lm_loss']:.4f}, masked_lm_accuracy "
                f"{best['masked_lm_accuracy']:.4f}; checkpoint {best['checkpoint']})"
            )


def _train(
    trainer: Trainer, config: TrainConfig, files, init_source, run_facts, saved_config,
    evaluator, bert_config,
):  # fmt: skip
    """Restores or initializes, then trains. Returns (last logged metrics, signal or None)."""
    iterators = [iter(dataset) for dataset in trainer.datasets([f.path for f in files])]
    checkpoint = tf.train.Checkpoint(**trainer.checkpoint_objects())
    # Every worker saves (the strategy's variables take part in it); only the chief's
    # checkpoints land in --output_dir, the others' go to a temporary directory.
    directory = config.output_dir
    if not trainer.devices.is_chief:
        _remove_stale_worker_directories()
        directory = tempfile.mkdtemp(prefix=f"{WORKER_DIRECTORY_PREFIX}{os.getpid()}-")
    try:
        manager = tf.train.CheckpointManager(
            checkpoint,
            directory,
            max_to_keep=config.keep_checkpoint_max if trainer.devices.is_chief else 1,
            checkpoint_name="model.ckpt",
            step_counter=trainer.step,
        )
        return _restore_and_train(
            trainer, config, files, init_source, run_facts, saved_config, evaluator,
            bert_config, checkpoint, manager, iterators,
        )  # fmt: skip
    finally:
        if directory != config.output_dir:
            shutil.rmtree(directory, ignore_errors=True)


# A non-chief worker's own checkpoints: tempdir/bert-gpu-worker-<pid>-<random>.
WORKER_DIRECTORY_PREFIX = "bert-gpu-worker-"


def _remove_stale_worker_directories() -> None:
    """Removes the temporary directories of workers that were killed (their pid is gone)."""
    pattern = os.path.join(tempfile.gettempdir(), f"{WORKER_DIRECTORY_PREFIX}*")
    for path in tf.io.gfile.glob(pattern):
        pid = os.path.basename(path)[len(WORKER_DIRECTORY_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not cli.pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _restore_and_train(
    trainer: Trainer, config: TrainConfig, files, init_source, run_facts, saved_config,
    evaluator, bert_config, checkpoint, manager, iterators,
):  # fmt: skip
    run_config = os.path.join(config.output_dir, "bert_config.json")
    latest = tf.train.latest_checkpoint(config.output_dir)
    if latest:
        _restore(
            checkpoint,
            latest,
            "the checkpoint",
            partial=False,
            hint=f"resume with --bert_config_file={run_config}, the config it was made with",
        )
        trainer.restore_data_states(iterators)
        log(f"resumed from {latest} at step {int(trainer.step.numpy())}")
    elif init_source is not None:
        with trainer.strategy.scope():
            report = checkpoints.restore_initial_weights(trainer.model, init_source, bert_config)
        for line in report.log_lines():
            log(line)
    step, total = int(trainer.step.numpy()), config.num_train_steps
    if step > total:
        log(
            f"the checkpoint is at step {step}, past --num_train_steps={total}: nothing to "
            "train (a larger --num_train_steps would change the learning-rate schedule)"
        )
        return {}, None
    if step == total:
        log(f"already at step {step} of {total}: nothing to train")
        return {}, None
    if trainer.devices.is_chief:
        facts = dict(dataclasses.asdict(config), **run_facts)
        _write_atomically(saved_config, json.dumps(facts, indent=2, sort_keys=True) + "\n")
        _copy_bert_config(config.bert_config_file, run_config, trainer.model.config)
        vocab_file = _data_vocab_file(files)
        if vocab_file:
            _copy_file(vocab_file, os.path.join(config.output_dir, "vocab.txt"))
    return _train_loop(
        trainer, iterators, manager, config, run_facts["global_batch_size"], evaluator
    )


def _copy_bert_config(source: str, destination: str, bert_config: modeling.BertConfig) -> None:
    """The run's bert_config.json, in the original format whatever --bert_config_file was."""
    if _same_file(source, destination):
        return
    _write_atomically(destination, bert_config.to_json_string())


def _data_vocab_file(files) -> str | None:
    """The vocabulary file the training data was made with, if its metadata names one."""
    for data in files:
        path = (data.metadata or {}).get("vocab_file")
        if path and tf.io.gfile.exists(path):
            return path
    return None


def next_boundary(step: int, config: TrainConfig) -> int:
    """The first step after `step` at which the loop must return to the host: a log line,
    a checkpoint, an eval, the end, or the --steps_per_loop cap."""
    candidates = [config.num_train_steps, step + config.steps_per_loop]
    everies = [config.log_every_n_steps, config.save_checkpoints_steps]
    if config.eval_every_n_steps:
        everies.append(config.eval_every_n_steps)
    for every in everies:
        candidates.append((step // every + 1) * every)
    return min(candidates)


def _save(trainer: Trainer, manager, iterators, step: int, config: TrainConfig) -> str:
    """Records the input positions and saves a checkpoint (every worker takes part)."""
    try:
        trainer.record_data_states(iterators)
        path = manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
        if isinstance(e, tf.errors.OpError) and _is_lost_worker(e):
            raise
        message = e.message if isinstance(e, tf.errors.OpError) else str(e)
        raise OSError(
            f"cannot write the checkpoint of step {step} to {config.output_dir}: "
            f"{_last_line(message)}; the newest complete checkpoint is "
            f"{tf.train.latest_checkpoint(config.output_dir)} (free space or permissions, "
            "then run the same command to resume)"
        ) from e
    if trainer.devices.is_chief:
        log(f"saved checkpoint {path}")
    return path


def _is_lost_worker(error: tf.errors.OpError) -> bool:
    return isinstance(
        error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError)
    )


def _lost_worker_error(error: tf.errors.OpError, trainer: Trainer) -> WorkerLostError:
    who = distribute.worker_of_error(error.message, trainer.devices) or "another worker"
    return WorkerLostError(
        f"{who} stopped answering ({_last_line(error.message)[:300]}); this worker "
        f"({trainer.devices.worker_name(trainer.worker_index)}) stops too. The newest "
        "complete checkpoint is in --output_dir: start every worker again with the same "
        "command to resume"
    )


def _last_line(message: str) -> str:
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", message).strip()
    return message.splitlines()[-1].strip() if message else message


def _read_error(error: tf.errors.OpError, files, kind: str = "training") -> ValueError:
    """A data-reading error that names the file and the fault."""
    fault = input_pipeline.find_corrupt_record(files)
    if fault is None:
        return ValueError(f"reading the {kind} data failed: {_last_line(error.message)}")
    return ValueError(
        f"damaged {kind} data: {fault}; make the file again with create_pretraining_data.py "
        "(the checkpoints in the output directory are intact)"
    )


def _train_loop(
    trainer: Trainer, iterators, manager, config: TrainConfig, global_batch_size: int, evaluator
) -> tuple[dict, int | None]:
    """The plain loop: steps → (log) → (checkpoint) → (eval), until the end or a signal.

    On several workers, a signal received by any of them stops all of them after the
    same step, each taking part in one last checkpoint.

    Returns:
        (the last logged metrics, the number of the signal that stopped training or None).

    Raises:
        NonFiniteLossError: after --max_nonfinite_steps consecutive non-finite steps;
            nothing is saved (the newest checkpoint is the last good state).
        WorkerLostError: when another worker stops answering.
    """
    chief = trainer.devices.is_chief
    if chief:
        writer = tf.summary.create_file_writer(config.output_dir)
    else:
        writer = tf.summary.create_noop_writer()
    step = first = int(trainer.step.numpy())
    total = config.num_train_steps
    log(f"training steps {step} → {total}; checkpoints every {config.save_checkpoints_steps}")
    pending: list[dict] = []
    start_time = last_time = time.time()
    last_step = step
    last_logged: dict = {}
    files = input_pipeline.expand_record_files(config.input_file)
    stopped_by = None
    with _StopRequested() as stop, writer.as_default():
        while step < total and stopped_by is None:
            # The first call traces and compiles: one step only, timed on its own.
            end = step + 1 if step == first else next_boundary(step, config)
            try:
                metrics = trainer.train_steps(iterators, tf.constant(end - step, tf.int64))
                metrics = {name: float(value) for name, value in metrics.items()}  # waits
                # Every worker stops after the same step if any of them was signalled.
                stopped_by = distribute.agree_on_max(trainer.devices, stop.signal or 0) or None
            except tf.errors.DataLossError as e:
                raise _read_error(e, files) from e
            except tf.errors.OpError as e:
                if trainer.num_workers > 1 and _is_lost_worker(e):
                    raise _lost_worker_error(e, trainer) from e
                raise
            pending.append(metrics)
            step = end
            if metrics["skipped_steps"]:
                _log_skipped(trainer, metrics, step)
            streak = int(trainer.nonfinite_streak.numpy())
            if streak >= config.max_nonfinite_steps:
                writer.flush()
                raise NonFiniteLossError(
                    f"{streak} consecutive steps up to step {step} had a non-finite loss or "
                    f"gradient (--max_nonfinite_steps={config.max_nonfinite_steps}); none "
                    "was applied and nothing was saved: the newest checkpoint in "
                    f"{config.output_dir} is the last good state. Lower --learning_rate, "
                    "use --precision=fp32, or check the data"
                )
            if step == first + 1:
                now = time.time()
                log(f"first step took {now - last_time:.1f} s (tracing and compiling included)")
                last_time, last_step = now, step
            if step % config.log_every_n_steps == 0 or step == total or stopped_by:
                now = time.time()
                steps_per_sec = (
                    (step - last_step) / max(now - last_time, 1e-9) if step > last_step else None
                )
                last_logged = _log_metrics(
                    pending, step, total, steps_per_sec, global_batch_size, trainer
                )
                pending, last_time, last_step = [], now, step
            evaluate_now = (
                config.eval_every_n_steps
                and step % config.eval_every_n_steps == 0
                and not (step == total and config.do_eval)  # the final eval comes next
                and not stopped_by
            )
            if step % config.save_checkpoints_steps == 0 or step == total or stopped_by:
                path = _save(trainer, manager, iterators, step, config)
            elif evaluate_now:  # evaluations are of saved checkpoints
                path = _save(trainer, manager, iterators, step, config)
            if evaluate_now and evaluator is not None:
                evaluator.run(os.path.join(config.output_dir, os.path.basename(path)))
                last_time = time.time()  # the rate is of training, not of eval
        writer.flush()
    if stopped_by is not None:
        by = "" if stop.signal else " (received by another worker)"
        log(f"stopped by signal {stopped_by}{by} at step {step}; run the same command to resume")
    elapsed = time.time() - start_time
    trained = step - first
    final_loss = f"{last_logged['loss']:.4f}" if last_logged else "-"
    log(
        f"trained steps {first} → {step} ({trained:,} steps, {trained * global_batch_size:,} "
        f"examples) in {format_duration(elapsed)}; final train loss {final_loss}"
    )
    if chief:
        log(
            f"checkpoints: {config.output_dir}/model.ckpt-* (newest "
            f"{tf.train.latest_checkpoint(config.output_dir)}); TensorBoard: tensorboard "
            f"--logdir={config.output_dir}"
        )
    return last_logged, stopped_by


def _log_skipped(trainer: Trainer, metrics: dict, step: int) -> None:
    skipped = int(metrics["skipped_steps"])
    reason = (
        f"loss scale now {float(trainer.loss_scale.numpy()):g}"
        if trainer.use_loss_scale and not metrics["nonfinite_steps"]
        else "non-finite loss or gradient"
    )
    log(
        f"step {step}: {skipped} step(s) of the last loop not applied ({reason}); "
        f"{int(trainer.nonfinite_streak.numpy())} consecutive non-finite"
    )


def _log_metrics(pending, step, total, steps_per_sec, global_batch_size, trainer) -> dict:
    """Averages the metrics of the steps since the last log; logs and writes summaries.

    `steps_per_sec` is None when the window holds only the first step (no rate yet).
    """
    totals: dict[str, float] = {}
    for metrics in pending:
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + value
    logged = summarize(totals)
    logged["learning_rate"] = pending[-1]["learning_rate"]
    logged["grad_norm"] = totals["grad_norm_sum"] / max(totals["applied_steps"], 1.0)
    logged["skipped_steps"] = int(trainer.skipped_steps.numpy())
    if trainer.use_loss_scale:
        logged["loss_scale"] = float(trainer.loss_scale.numpy())
    if steps_per_sec is None:
        speed = "rate and ETA from the next log line"
    else:
        logged["examples_per_sec"] = steps_per_sec * global_batch_size
        logged["steps_per_sec"] = steps_per_sec
        eta = (total - step) / steps_per_sec if steps_per_sec > 0 else float("inf")
        speed = (
            f"{logged['examples_per_sec']:.1f} examples/s {steps_per_sec:.2f} steps/s  "
            f"ETA {format_duration(eta)}"
        )
    skipped = f"  skipped {logged['skipped_steps']}" if logged["skipped_steps"] else ""
    log(
        f"step {step}/{total}  loss {logged['loss']:.4f}  "
        f"mlm {logged['masked_lm_loss']:.4f} acc {logged['masked_lm_accuracy']:.4f}  "
        f"nsp {logged['next_sentence_loss']:.4f} acc {logged['next_sentence_accuracy']:.4f}  "
        f"lr {logged['learning_rate']:.3g}{skipped}  {speed}"
    )
    for name, value in logged.items():
        tf.summary.scalar(name, value, step=step)
    return logged
