"""Pretrain BERT on all the GPUs of one machine with tf.distribute.MirroredStrategy.

    python run_pretraining_gpu.py --input_file='data/train*.tfrecord' --output_dir=out \
        --bert_config_file=bert_config.json --num_gpus=4 --batch_size=64 \
        --num_train_steps=100000 --num_warmup_steps=10000 --learning_rate=1e-4

One BERT replica per device; each step every replica takes --batch_size examples of
the global batch, computes the gradient of its share of the GLOBAL loss (sums divided
by the global counts of masked tokens and examples), the gradients are summed across
replicas, clipped to global norm 1.0 and one AdamW update is applied to every copy of
the weights. N replicas with --batch_size=B therefore train exactly like one device
with batch N·B.

Running the same command again resumes from the newest checkpoint in --output_dir:
weights, optimizer slots, step (hence learning rate), the input position, and the
dropout randomness (a pure function of --seed, the step and the replica). Ctrl-C or
SIGTERM writes a checkpoint after the current step and exits with 130 / 143 (128 + the
signal), skipping the eval.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence

# TensorFlow's C++ INFO lines (oneDNN notices, CPU features) drown the training log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import input_pipeline  # noqa: E402
import modeling  # noqa: E402
import optimization  # noqa: E402
from create_pretraining_data import format_duration  # noqa: E402

# ----------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; built once from the flags (or directly by tests)."""

    input_file: str
    output_dir: str
    bert_config_file: str
    init_checkpoint: str | None = None
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
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

    def __post_init__(self):
        problems = []
        positive = ("max_seq_length", "max_predictions_per_seq", "batch_size", "eval_batch_size")
        positive += ("num_train_steps", "save_checkpoints_steps", "log_every_n_steps")
        positive += ("keep_checkpoint_max",)
        for name in positive:
            if getattr(self, name) < 1:
                problems.append(f"--{name}={getattr(self, name)}: expected a positive integer")
        if self.num_warmup_steps < 0:
            problems.append(f"--num_warmup_steps={self.num_warmup_steps}: expected >= 0")
        if self.max_eval_steps < 0:
            problems.append(f"--max_eval_steps={self.max_eval_steps}: expected >= 0 (0: all)")
        if not self.learning_rate > 0:
            problems.append(f"--learning_rate={self.learning_rate}: expected > 0")
        if self.cpu_replicas < 0:
            problems.append(f"--cpu_replicas={self.cpu_replicas}: expected >= 0")
        if self.num_gpus is not None and self.num_gpus < 1:
            problems.append(f"--num_gpus={self.num_gpus}: expected at least 1")
        if self.num_gpus and self.cpu_replicas:
            problems.append("--num_gpus and --cpu_replicas exclude each other: choose one")
        if not (self.do_train or self.do_eval):
            problems.append("nothing to do: pass --do_train and/or --do_eval")
        if problems:
            raise ValueError("invalid flags:\n  " + "\n  ".join(problems))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Devices


def make_strategy(num_gpus: int | None = None, cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """One replica per GPU, or per logical CPU device when `cpu_replicas` is set.

    Args:
        num_gpus: Replicas, one per GPU; None means every visible GPU.
        cpu_replicas: Split the CPU into this many logical devices and mirror over them
            (machines without a GPU; how the tests exercise multi-replica training).

    Raises:
        ValueError: if more GPUs are asked for than are visible.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if cpu_replicas:
        (cpu,) = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
            )
        except RuntimeError:
            pass  # devices already initialized (e.g. by a test harness): use what exists
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < cpu_replicas:
            raise ValueError(
                f"--cpu_replicas={cpu_replicas}, but TensorFlow was already initialized with "
                f"{len(cpus)} logical CPU device(s) in this process"
            )
        devices = [d.name for d in cpus[:cpu_replicas]]
    elif gpus:
        wanted = num_gpus or len(gpus)
        if wanted > len(gpus):
            raise ValueError(
                f"--num_gpus={wanted}, but only {len(gpus)} GPU(s) are visible "
                f"({', '.join(g.name for g in gpus)}); use --num_gpus={len(gpus)} or fewer, "
                "or --cpu_replicas=K to train on the CPU"
            )
        devices = [f"/gpu:{i}" for i in range(wanted)]
    else:
        if num_gpus:
            raise ValueError(
                f"--num_gpus={num_gpus}, but no GPU is visible to TensorFlow; to train on the "
                "CPU instead, drop --num_gpus and pass --cpu_replicas=K (K replicas on K "
                "logical CPU devices; 1 for plain CPU training)"
            )
        devices = ["/cpu:0"]
    return tf.distribute.MirroredStrategy(devices=devices)


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


def global_loss(sums: dict, mlm_count, nsp_count):
    """This replica's share of the global loss: its sums over the GLOBAL counts.

    Summing these shares (and their gradients) over replicas gives exactly the loss of
    the whole global batch: mean masked-LM loss over all masked tokens plus mean
    next-sentence loss over all examples, as one device with the global batch computes.
    """
    return sums["mlm_loss_sum"] / tf.maximum(mlm_count, 1.0) + sums["nsp_loss_sum"] / tf.maximum(
        nsp_count, 1.0
    )


class Trainer:
    """The model, optimizer, step counter and compiled steps of one run."""

    def __init__(self, strategy, bert_config: modeling.BertConfig, config: TrainConfig):
        self.strategy = strategy
        self.config = config
        self.num_replicas = strategy.num_replicas_in_sync
        # The initial weights are a function of --seed.
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            self.model = modeling.BertPretrainingModel(bert_config)
            self.model.build_weights()
            names = modeling.original_name_map(self.model)
            by_id = {id(v): name for name, v in names.items()}
            self.variables = list(self.model.trainable_variables)
            self.variable_names = [by_id[id(v)] for v in self.variables]
            self.optimizer = optimization.AdamWeightDecay(self.variables, self.variable_names)
            self.step = tf.Variable(
                0,
                dtype=tf.int64,
                trainable=False,
                name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        self.schedule = optimization.LinearWarmupLinearDecay(
            peak_learning_rate=config.learning_rate,
            num_warmup_steps=config.num_warmup_steps,
            num_train_steps=config.num_train_steps,
        )

    # -- training ------------------------------------------------------------------

    def _replica_train_step(self, batch: dict):
        context = tf.distribute.get_replica_context()
        replica_id = tf.cast(context.replica_id_in_sync_group, tf.int64)
        # Dropout masks are a pure function of (seed, step, replica): resumable.
        dropout_seed = tf.stack(
            [tf.constant(self.config.seed, tf.int64), self.step * self.num_replicas + replica_id]
        )
        mlm_count = context.all_reduce("sum", tf.reduce_sum(batch["masked_lm_weights"]))
        nsp_count = context.all_reduce("sum", tf.reduce_sum(batch[input_pipeline.EXAMPLE_WEIGHT]))
        with tf.GradientTape() as tape:
            sums = pretraining_sums(self.model, batch, training=True, dropout_seed=dropout_seed)
            loss = global_loss(sums, mlm_count, nsp_count)
        grads = tape.gradient(loss, self.variables)
        # Embedding lookups give sparse (IndexedSlices) gradients whose row counts differ
        # between replicas; all-reduce them densely, as one tensor per variable.
        grads = [tf.convert_to_tensor(g) for g in grads]
        # The gradient of the global loss: the sum of every replica's share.
        grads = context.all_reduce("sum", grads)
        grads, grad_norm = optimization.clip_by_global_norm(grads, 1.0)
        sums["grad_norm"] = grad_norm
        return grads, sums

    def _distribute(self, global_batch: dict):
        """Hands replica i its rows [i·B, (i+1)·B) of a global batch."""
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: input_pipeline.split_for_replica(
                global_batch, ctx.replica_id_in_sync_group, self.num_replicas
            )
        )

    @tf.function
    def train_step(self, iterator) -> dict:
        """One optimizer step on the next global batch; returns global metric sums."""
        batch = self._distribute(next(iterator))
        grads, sums = self.strategy.run(self._replica_train_step, args=(batch,))
        learning_rate = self.schedule(self.step)
        # Each device applies the same update to its own copy of every variable.
        for index, variable in enumerate(self.optimizer.model_variables):
            self.strategy.extended.update(
                variable,
                functools.partial(self.optimizer.update, index),
                args=(grads[index], learning_rate),
                group=False,
            )
        self.step.assign_add(1)
        metrics = {
            name: self.strategy.reduce("sum", value, axis=None)
            for name, value in sums.items()
            if name != "grad_norm"
        }
        # Every replica holds the same (global) norm; report the first replica's.
        metrics["grad_norm"] = self.strategy.experimental_local_results(sums["grad_norm"])[0]
        metrics["learning_rate"] = learning_rate
        return metrics

    # -- evaluation ----------------------------------------------------------------

    @tf.function
    def eval_step(self, global_batch: dict) -> dict:
        batch = self._distribute(global_batch)
        sums = self.strategy.run(
            lambda b: pretraining_sums(self.model, b, training=False), args=(batch,)
        )
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
        dataset = input_pipeline.eval_dataset(
            files,
            self.config.eval_batch_size * self.num_replicas,
            self.config.max_seq_length,
            self.config.max_predictions_per_seq,
        )
        totals: dict[str, float] = {}
        # Masked-token frequencies, for the accuracy of always predicting the most
        # frequent one: the floor a model must clear to have learnt anything.
        target_counts = np.zeros(self.model.config.vocab_size)
        steps = 0
        for global_batch in dataset:
            if max_eval_steps and steps >= max_eval_steps:
                break
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
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _copy_file(source: str, destination: str) -> None:
    """Copies `source` to `destination`; nothing to do when they are the same file."""
    # tf.io.gfile.copy(a, a, overwrite=True) truncates `a` to 0 bytes.
    if _same_file(source, destination):
        return
    with tf.io.gfile.GFile(source) as f:
        _write_atomically(destination, f.read())


# ----------------------------------------------------------------------------------------
# Checkpoints


def resolve_checkpoint(path: str, flag: str = "--init_checkpoint") -> str:
    """The checkpoint prefix `path` names: itself, or the newest one in a directory.

    Raises:
        ValueError: naming the flag and the path, if there is no checkpoint there.
    """
    expected = (
        "expected a checkpoint prefix such as out/model.ckpt-1000 (the files "
        "model.ckpt-1000.index and model.ckpt-1000.data-*), or a directory holding "
        "checkpoints and their 'checkpoint' file (the newest is used)"
    )
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise ValueError(f"{flag}={path}: the directory holds no checkpoint; {expected}")
        return latest
    if path.endswith(".index") and tf.io.gfile.exists(path):
        return path[: -len(".index")]
    if not tf.io.gfile.exists(path + ".index"):
        raise ValueError(f"{flag}={path}: no checkpoint there (no {path}.index); {expected}")
    return path


def _short_error(error: BaseException) -> str:
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
        raise ValueError(f"{what} {path} cannot be read: {_short_error(e)}") from e
    except ValueError as e:  # a variable of another shape
        raise ValueError(f"{what} {path} does not fit this model: {e}; {hint}") from e
    try:
        if partial:
            status.expect_partial().assert_existing_objects_matched()
        else:
            status.assert_consumed()
    except AssertionError as e:  # variables missing on one side
        raise ValueError(f"{what} {path} does not fit this model: {_short_error(e)}; {hint}") from e


# ----------------------------------------------------------------------------------------
# The run


class _StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

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
        _log(f"received signal {signum}: writing a checkpoint after this step, then stopping")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Settings that must not change when a run is resumed from its checkpoints: the data
# position and the learning-rate schedule would silently stop meaning what they did.
# The input yields GLOBAL batches, so the replica count may change if the global batch
# does not.
RESUME_KEYS = (
    "train_files", "max_seq_length", "max_predictions_per_seq", "global_batch_size", "seed",
    "learning_rate", "num_warmup_steps", "num_train_steps",
)  # fmt: skip


def _describe_change(key: str, saved: dict, now: dict) -> str:
    old, new = saved[key], now[key]
    if key == "global_batch_size":
        return (
            f"global batch (--batch_size × replicas): {old} ({saved.get('batch_size')} × "
            f"{saved.get('num_replicas')}) then, {new} ({now['batch_size']} × "
            f"{now['num_replicas']}) now"
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
    return f"--{key}: {old!r} then, {new!r} now"


def _check_resume(config: TrainConfig, run_facts: dict, saved_path: str) -> None:
    """Refuses to resume a run whose checkpoints were made with other settings."""
    with tf.io.gfile.GFile(saved_path) as f:
        saved = json.load(f)
    now = dict(dataclasses.asdict(config), **run_facts)
    changed = []
    for key in RESUME_KEYS:
        if key in saved and saved[key] != now[key]:
            changed.append(_describe_change(key, saved, now))
    if changed:
        raise ValueError(
            f"{config.output_dir} holds checkpoints of a run with other settings:\n  "
            + "\n  ".join(changed)
            + "\nresuming would not continue that run. Use the same flags, or a new "
            f"--output_dir with --init_checkpoint={config.output_dir} to start from its weights"
        )


def train_and_evaluate(config: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Trains (if config.do_train) and evaluates (if config.do_eval).

    Returns:
        dict with "train" (the last logged training metrics; empty if the checkpoint
        was already at --num_train_steps), "eval" (the eval results) and, if SIGINT or
        SIGTERM stopped training, "stopped_by_signal" (the signal number; eval is then
        skipped, its numbers would be those of a half-trained model).
    """
    bert_config = modeling.BertConfig.from_json_file(config.bert_config_file)
    if config.max_seq_length > bert_config.max_position_embeddings:
        raise ValueError(
            f"--max_seq_length={config.max_seq_length} exceeds max_position_embeddings="
            f"{bert_config.max_position_embeddings} of {config.bert_config_file}"
        )
    strategy = strategy or make_strategy(config.num_gpus, config.cpu_replicas)
    num_replicas = strategy.num_replicas_in_sync
    global_batch_size = config.batch_size * num_replicas

    def checked(patterns: str, flag: str) -> list[input_pipeline.DataFile]:
        files = input_pipeline.expand_record_files(patterns, flag)
        return input_pipeline.check_data_files(
            files,
            config.max_seq_length,
            config.max_predictions_per_seq,
            bert_config.vocab_size,
            flag=flag,
            log=sys.stderr,
        )

    train_files = checked(config.input_file, "--input_file") if config.do_train else []
    if not config.do_eval:
        eval_files = []
    elif config.eval_input_file:
        eval_files = checked(config.eval_input_file, "--eval_input_file")
    else:  # the training files, named by --input_file
        eval_files = train_files or checked(config.input_file, "--input_file")

    latest = tf.train.latest_checkpoint(config.output_dir)
    init_checkpoint = None
    if config.init_checkpoint and latest:
        _log(f"--init_checkpoint ignored: {config.output_dir} holds checkpoints to resume from")
    elif config.init_checkpoint:
        init_checkpoint = resolve_checkpoint(config.init_checkpoint)
    if config.do_eval and not config.do_train and not (latest or init_checkpoint):
        raise ValueError(
            f"--do_eval without --do_train needs a checkpoint: none in {config.output_dir} "
            "and no --init_checkpoint"
        )
    run_facts = {
        "num_replicas": num_replicas,
        "global_batch_size": global_batch_size,
        "train_files": [_absolute(f.path) for f in train_files],
    }
    saved_config = os.path.join(config.output_dir, "train_config.json")
    if latest and config.do_train and tf.io.gfile.exists(saved_config):
        _check_resume(config, run_facts, saved_config)

    tf.io.gfile.makedirs(config.output_dir)
    trainer = Trainer(strategy, bert_config, config)
    devices = ", ".join(strategy.extended.worker_devices)
    _log(f"TensorFlow {tf.__version__}; {num_replicas} replica(s) on {devices}")
    if config.do_train:
        _log(
            f"batch: {config.batch_size} per replica × {num_replicas} replica(s) = "
            f"{global_batch_size} global; {config.num_train_steps:,} steps "
            f"({config.num_warmup_steps:,} warm-up), peak learning rate {config.learning_rate:g}"
        )
    if config.do_eval:
        _log(
            f"eval batch: {config.eval_batch_size} per replica × {num_replicas} replica(s) = "
            f"{config.eval_batch_size * num_replicas} global"
        )
    _log(
        f"model: {bert_config.num_hidden_layers} layers, hidden {bert_config.hidden_size}, "
        f"{bert_config.num_attention_heads} heads, vocab {bert_config.vocab_size}"
    )
    for kind, files in (("train", train_files), ("eval", eval_files)):
        if files:
            counts = [f.num_instances for f in files]
            known = sum(c for c in counts if c is not None)
            unknown = sum(c is None for c in counts)
            _log(
                f"{kind} data: {len(files)} file(s), {known:,} instances"
                + (f" (+{unknown} file(s) without metadata)" if unknown else "")
                + "".join(f"\n  {f.path}" for f in files[:10])
                + (f"\n  ... and {len(files) - 10} more" if len(files) > 10 else "")
            )

    results = {}
    if config.do_train:
        logged, stopped_by = _train(
            trainer, config, train_files, init_checkpoint, run_facts, saved_config
        )
        results["train"] = logged
        if stopped_by is not None:
            results["stopped_by_signal"] = stopped_by
    else:
        source = latest or init_checkpoint
        _restore(
            tf.train.Checkpoint(model=trainer.model, step=trainer.step),
            source,
            "the checkpoint",
            partial=True,
            hint=f"was it made with another config than {config.bert_config_file}?",
        )
        _log(f"evaluating {source}")

    if config.do_eval and "stopped_by_signal" in results:
        _log("eval skipped: training was stopped (the same command resumes it, then evaluates)")
    elif config.do_eval:
        results["eval"] = _evaluate(trainer, config, eval_files)
    return results


def _train(trainer: Trainer, config: TrainConfig, files, init_checkpoint, run_facts, saved_config):
    """Restores or initializes, then trains. Returns (last logged metrics, signal or None)."""
    dataset = input_pipeline.train_dataset(
        [f.path for f in files],
        run_facts["global_batch_size"],
        config.max_seq_length,
        config.max_predictions_per_seq,
        seed=config.seed,
    )
    iterator = iter(dataset)
    checkpoint = tf.train.Checkpoint(
        model=trainer.model, optimizer=trainer.optimizer, step=trainer.step, data=iterator
    )
    manager = tf.train.CheckpointManager(
        checkpoint,
        config.output_dir,
        max_to_keep=config.keep_checkpoint_max,
        checkpoint_name="model.ckpt",
        step_counter=trainer.step,
    )
    run_config = os.path.join(config.output_dir, "bert_config.json")
    if manager.latest_checkpoint:
        _restore(
            checkpoint,
            manager.latest_checkpoint,
            "the checkpoint",
            partial=False,
            hint=f"resume with --bert_config_file={run_config}, the config it was made with",
        )
        _log(f"resumed from {manager.latest_checkpoint} at step {int(trainer.step.numpy())}")
    elif init_checkpoint:
        _restore(
            tf.train.Checkpoint(model=trainer.model),
            init_checkpoint,
            "--init_checkpoint",
            partial=True,
            hint=f"was it made with another config than {config.bert_config_file}?",
        )
        _log(f"initialized the weights from {init_checkpoint}")
    step, total = int(trainer.step.numpy()), config.num_train_steps
    if step > total:
        _log(
            f"the checkpoint is at step {step}, past --num_train_steps={total}: nothing to "
            "train (a larger --num_train_steps would change the learning-rate schedule)"
        )
        return {}, None
    if step == total:
        _log(f"already at step {step} of {total}: nothing to train")
        return {}, None
    facts = dict(dataclasses.asdict(config), **run_facts)
    _write_atomically(saved_config, json.dumps(facts, indent=2, sort_keys=True) + "\n")
    _copy_file(config.bert_config_file, run_config)
    return _train_loop(trainer, iterator, manager, config, run_facts["global_batch_size"])


def _evaluate(trainer: Trainer, config: TrainConfig, files) -> dict:
    """Evaluates; writes eval_results.txt and the eval summaries."""
    eval_results = trainer.evaluate([f.path for f in files], config.max_eval_steps)
    path = os.path.join(config.output_dir, "eval_results.txt")
    text = "".join(f"{key} = {eval_results[key]}\n" for key in sorted(eval_results))
    _write_atomically(path, text)
    writer = tf.summary.create_file_writer(os.path.join(config.output_dir, "eval"))
    with writer.as_default(step=eval_results["global_step"]):
        for key in ("loss", "masked_lm_loss", "masked_lm_accuracy"):
            tf.summary.scalar(key, eval_results[key])
        for key in ("next_sentence_loss", "next_sentence_accuracy"):
            tf.summary.scalar(key, eval_results[key])
    writer.close()
    _log("eval results (" + path + "):")
    for key in sorted(eval_results):
        _log(f"  {key} = {eval_results[key]}")
    return eval_results


def _train_loop(
    trainer: Trainer, iterator, manager, config: TrainConfig, global_batch_size: int
) -> tuple[dict, int | None]:
    """The plain loop: step → (log) → (checkpoint), until num_train_steps or a signal.

    Returns:
        (the last logged metrics, the number of the signal that stopped training or None).
    """
    writer = tf.summary.create_file_writer(config.output_dir)
    step = first = int(trainer.step.numpy())
    total = config.num_train_steps
    _log(f"training steps {step} → {total}; checkpoints every {config.save_checkpoints_steps}")
    pending: list[dict] = []
    last_time, last_step = time.time(), step
    last_logged: dict = {}
    with _StopRequested() as stop, writer.as_default():
        while step < total and stop.signal is None:
            pending.append(trainer.train_step(iterator))
            step += 1
            if step == first + 1:
                # The first call traces and compiles the step: seconds to minutes that
                # would make the first rate and ETA meaningless. Time it on its own.
                float(pending[-1]["grad_norm"])  # waits for the step to finish
                now = time.time()
                _log(f"first step took {now - last_time:.1f} s (tracing and compiling included)")
                last_time, last_step = now, step
            if step % config.log_every_n_steps == 0 or step == total or stop.signal:
                now = time.time()
                steps_per_sec = (
                    (step - last_step) / max(now - last_time, 1e-9) if step > last_step else None
                )
                last_logged = _log_metrics(pending, step, total, steps_per_sec, global_batch_size)
                pending, last_time, last_step = [], now, step
            if step % config.save_checkpoints_steps == 0 or step == total or stop.signal:
                path = manager.save(checkpoint_number=step)
                _log(f"saved checkpoint {path}")
        writer.flush()
    if stop.signal is not None:
        _log(f"stopped by signal {stop.signal} at step {step}; run the same command to resume")
    return last_logged, stop.signal


def _log_metrics(pending, step, total, steps_per_sec, global_batch_size) -> dict:
    """Averages the metrics of the steps since the last log; logs and writes summaries.

    `steps_per_sec` is None when the window holds only the first step (no rate yet).
    """
    totals: dict[str, float] = {}
    for metrics in pending:
        for name, value in metrics.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    logged = summarize(totals)
    logged["learning_rate"] = float(pending[-1]["learning_rate"])
    logged["grad_norm"] = totals["grad_norm"] / len(pending)
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
    _log(
        f"step {step}/{total}  loss {logged['loss']:.4f}  "
        f"mlm {logged['masked_lm_loss']:.4f} acc {logged['masked_lm_accuracy']:.4f}  "
        f"nsp {logged['next_sentence_loss']:.4f} acc {logged['next_sentence_accuracy']:.4f}  "
        f"lr {logged['learning_rate']:.3g}  {speed}"
    )
    for name, value in logged.items():
        tf.summary.scalar(name, value, step=step)
    return logged


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
        "max_seq_length", d["max_seq_length"].default, "Tokens per example; must match the data."
    )
    flags.DEFINE_integer(
        "max_predictions_per_seq",
        d["max_predictions_per_seq"].default,
        "Masked-LM predictions per example; must match the data.",
    )
    flags.DEFINE_bool("do_train", False, "Train.")
    flags.DEFINE_bool("do_eval", False, "Evaluate (after training, if --do_train).")
    flags.DEFINE_string("eval_input_file", None, "Eval TFRecords (default: --input_file).")
    flags.DEFINE_integer("num_gpus", None, "Replicas, one per GPU (default: all visible GPUs).")
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


def flags_were_given(*names: str) -> bool:
    from absl import flags

    return any(flags.FLAGS[name].present for name in names if name in flags.FLAGS)


def config_from_flags() -> TrainConfig:
    from absl import flags

    FLAGS = flags.FLAGS
    missing = [
        f"--{n}" for n in ("input_file", "output_dir", "bert_config_file") if not FLAGS[n].value
    ]
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
        _log(f"error: {_short_error(e)}")
        return 1
    except KeyboardInterrupt:  # outside training (start-up, eval) or a second Ctrl-C
        _log("interrupted (training progress is in the newest checkpoint, if any)")
        return 128 + signal.SIGINT
    # As a shell reports a process killed by the signal: 130 for SIGINT, 143 for SIGTERM.
    signum = results.get("stopped_by_signal")
    return 128 + signum if signum else 0


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
