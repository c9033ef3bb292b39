"""Training speed: bert-gpu's training step against keras-hub's BertMaskedLM, CPU or GPU.

    make bench-training        # builds .venv-bench (requirements-bench.txt) and runs this
    .venv-bench/bin/python benchmarks/bench_training.py --configs=tiny,mini,small,base \
        --precisions=fp32,bf16 --output=build/bench_training.md
    # one GPU (benchmarks/gpu/run.sh sets up a GPU machine and runs this):
    python benchmarks/bench_training.py --device=gpu --configs=base,large \
        --precisions=bf16,fp16 --batch_size=128 --warm_up_together --gemm_sizes=8192

Both sides train on the same synthetic global batch (random token ids, realistic padding,
masked positions with weights; same batch, sequence length, predictions and precision),
as one replica on the CPU (or, with --device=gpu, on the first GPU), in this script's
environment (.venv-bench: keras-hub is not a dependency of the project). Each side runs
in its own subprocess, so neither sees the other's Keras policy or TensorFlow settings;
both stay alive and take turns: after a warm-up (tracing included) the script alternates
timed windows of ours and theirs, so machine noise hits both, and reports the median of
the windows. In the same run it measures the machine's GEMM peak with TensorFlow matmuls
(same thread settings, the environment of ours' worker: oneDNN's kernels as ours runs
them) and reports each side's model FLOP/s (benchmarks/flops_bert.py:
matmul FLOPs, training = 3 × forward) as a percentage of the peak of the matching
precision.

Ours: bert-gpu's `Trainer` (training.py's, through `train_steps`; before training.py,
run_pretraining_gpu.py's `train_step`) under MirroredStrategy(["/cpu:0"]): masked-LM and
next-sentence heads, AdamW with clipping to global norm 1.0; `make_our_runner` is the one
function that knows that API. keras-hub: `BertBackbone` + `BertMaskedLM(preprocessor=None)`
(masked LM only: it has no next-sentence head), compiled with AdamW (weight decay 0.01,
epsilon 1e-6, global_clipnorm 1.0) and jit_compile="auto" (on a CPU-only machine Keras
resolves it to False; the report says what it resolved to) unless --theirs_jit_compile
says otherwise, trained through its compiled train function on a tf.data iterator, as
`fit` does. With --device=cpu (the default) GPUs are hidden from the workers
(CUDA_VISIBLE_DEVICES=-1); with --device=gpu both sides run on GPU 0 (ours:
MirroredStrategy(["/gpu:0"]); keras-hub: Keras's default placement, where jit_compile="auto"
resolves to XLA) and each worker's TensorFlow allocates GPU memory as it grows, so that the
workers of --warm_up_together fit side by side. fp16 is mixed precision with dynamic loss
scaling on both sides (ours: --precision=fp16; keras-hub: mixed_float16 and Keras's
LossScaleOptimizer). Ours' worker loads TensorFlow with the environment bert-gpu's scripts
set (cli.tensorflow_environment: the BFC CPU allocator, oneDNN's kernels on every x86 CPU);
keras-hub's with TensorFlow's defaults, as a keras-hub user runs it, or with the same
allocator under --theirs_cpu_bfc and the same oneDNN setting under --theirs_onednn (both:
the code alone).

--warm_up_together starts every worker of one model (all precisions, both sides) at once,
so their tracing and XLA compilation overlap (minutes on a GPU machine), then times the
rows one after the other as above: no two workers run steps at the same time. The
warm-up step times are then not alone on the machine, so each worker first runs a few
steps alone to size its windows.

Prints a markdown report (and writes it to --output): the command, the machine, the GEMM
peaks, then one row per model and precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NoReturn

import flops_bert
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """The sizes that matter for speed: L layers, H hidden, A heads, I intermediate."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int


# The small BERTs of Turc et al. (2019), "Well-read students learn better", and BERT-base.
CONFIGS = {
    "tiny": ModelSize(2, 128, 2, 512),
    "mini": ModelSize(4, 256, 4, 1024),
    "small": ModelSize(4, 512, 8, 2048),
    "base": ModelSize(12, 768, 12, 3072),
    "large": ModelSize(24, 1024, 16, 4096),
}


def bert_config_of(size: ModelSize, vocab_size: int, **overrides):
    """The modeling.BertConfig of a model size (imports modeling, hence TensorFlow)."""
    import modeling

    return modeling.BertConfig(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        intermediate_size=size.intermediate_size,
        type_vocab_size=2,
        **overrides,
    )


PRECISIONS = ("fp32", "bf16", "fp16")
# Keras dtype policy and TensorFlow matmul dtype of each precision.
KERAS_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
MATMUL_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICES = ("cpu", "gpu")

# Lines a worker writes for the driver start with this; anything else on its stdout is noise.
MESSAGE_PREFIX = "@@bench "


# ----------------------------------------------------------------------------------------
# Inputs and facts shared by the driver and the workers (no TensorFlow here)


def synthetic_batch(
    batch_size: int,
    seq_length: int,
    predictions: int,
    vocab_size: int,
    padding: str,
    seed: int,
) -> dict[str, np.ndarray]:
    """One global batch in bert-gpu's feature layout (see input_pipeline._parse_batch).

    Token ids are uniform in [0, vocab_size). With padding="realistic", 10% of the
    sequences are shorter than seq_length (uniform length in [8, S]), as data created with
    the original release's short_seq_prob=0.1; with "full" none are. Each sequence has
    round(15% of its length) masked positions (at most `predictions`, at least 1), distinct
    and inside the real tokens; the rest of the P slots are padding (position 0, id 0,
    weight 0).

    Returns:
        input_ids, input_mask, segment_ids [B, S] int32; masked_lm_positions,
        masked_lm_ids [B, P] int32; masked_lm_weights [B, P] float32;
        next_sentence_labels [B] int32; example_weight [B] float32.
    """
    rng = np.random.default_rng(seed)
    b, s, p = batch_size, seq_length, predictions
    lengths = np.full(b, s)
    if padding == "realistic":
        short = rng.random(b) < 0.1
        lengths[short] = rng.integers(min(8, s), s + 1, size=int(short.sum()))
    elif padding != "full":
        raise ValueError(f"--padding={padding!r}: expected 'full' or 'realistic'")
    positions = np.arange(s)[np.newaxis, :]  # [1, S]
    input_mask = (positions < lengths[:, np.newaxis]).astype(np.int32)  # [B, S]
    segment_ids = (positions >= lengths[:, np.newaxis] // 2).astype(np.int32) * input_mask
    input_ids = rng.integers(0, vocab_size, size=(b, s), dtype=np.int32) * input_mask
    masked_positions = np.zeros((b, p), np.int32)
    masked_ids = np.zeros((b, p), np.int32)
    masked_weights = np.zeros((b, p), np.float32)
    for row, length in enumerate(lengths):
        # Never [CLS] (position 0) nor the final [SEP].
        count = min(p, max(1, round(0.15 * length)), max(1, length - 2))
        chosen = np.sort(rng.choice(np.arange(1, max(2, length - 1)), size=count, replace=False))
        masked_positions[row, :count] = chosen
        masked_ids[row, :count] = rng.integers(0, vocab_size, size=count)
        masked_weights[row, :count] = 1.0
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "masked_lm_positions": masked_positions,
        "masked_lm_ids": masked_ids,
        "masked_lm_weights": masked_weights,
        "next_sentence_labels": rng.integers(0, 2, size=b, dtype=np.int32),
        "example_weight": np.ones(b, np.float32),
    }


def cpu_facts() -> dict:
    """The CPU's model name, the cores this process may use and the flags bf16 depends on."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:  # the first processor's block: its model name, then its flags
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name":
                    name = value
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    return {
        "model": name,
        "cores": len(os.sched_getaffinity(0)),
        "flags": {flag: flag in flags for flag in wanted},
    }


def model_flops(
    size: ModelSize,
    args: argparse.Namespace,
    next_sentence_head: bool,
    last_layer_rows: int | None = None,
    packed_tokens: int | None = None,
) -> int:
    """Matmul FLOPs of one training step of the global batch (flops_bert.py)."""
    forward = flops_bert.forward_flops(
        num_layers=size.num_layers,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        vocab_size=args.vocab_size,
        batch_size=args.batch_size,
        seq_length=args.seq_length,
        predictions=args.predictions,
        next_sentence_head=next_sentence_head,
        last_layer_rows=last_layer_rows,
        packed_tokens=packed_tokens,
    )
    return flops_bert.training_flops(forward)


# ----------------------------------------------------------------------------------------
# Worker side: each runs in its own process, imports TensorFlow, talks over stdin/stdout


def _prepare_environment(spec: dict) -> str:
    """Sets the variables TensorFlow reads at load for this worker's side; describes them.

    Ours gets what bert-gpu's scripts set (`cli.prepare_tensorflow_environment` of the
    checkout being measured, where it has one); keras-hub runs on TensorFlow's defaults,
    except for the parts of this checkout's scripts' environment that --theirs_cpu_bfc
    (the allocator) and --theirs_onednn (oneDNN's kernels) give it. Variables already in
    the environment stay.
    """
    if spec["role"] in ("ours", "gemm"):  # (the GEMM peak: with the kernels ours runs)
        try:
            import cli  # the measured checkout's: it is first on sys.path
        except ModuleNotFoundError:
            cli = None
        if hasattr(cli, "prepare_tensorflow_environment"):
            cli.prepare_tensorflow_environment()
    elif spec["role"] == "theirs":
        path = os.path.join(REPO, "cli.py")
        cli = importlib.util.module_from_spec(importlib.util.spec_from_file_location("cli", path))
        cli.__spec__.loader.exec_module(cli)
        for name, value in cli.tensorflow_environment().items():
            allocator = name.startswith("TF_CPU_") and spec["theirs_cpu_bfc"]
            onednn = name == "TF_ENABLE_ONEDNN_OPTS" and spec["theirs_onednn"]
            if allocator or onednn:
                os.environ.setdefault(name, value)
    bfc = os.environ.get("TF_CPU_ALLOCATOR_USE_BFC", "").lower() in ("1", "true")
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return (
        "CPU allocator "
        + ("BFC (TF_CPU_ALLOCATOR_USE_BFC=true)" if bfc else "default")
        + ", oneDNN "
        + (f"TF_ENABLE_ONEDNN_OPTS={onednn}" if onednn else "TensorFlow's default for this CPU")
    )


def _configure_tensorflow(spec: dict):
    import tensorflow as tf

    if spec["intra_op_threads"]:
        tf.config.threading.set_intra_op_parallelism_threads(spec["intra_op_threads"])
    if spec["inter_op_threads"]:
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op_threads"])
    if spec["device"] == "gpu":
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            raise SystemExit(
                "--device=gpu: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
                f"is empty; TensorFlow {tf.__version__}, CUDA build "
                f"{tf.test.is_built_with_cuda()}): see TensorFlow's log above for why"
            )
        for gpu in gpus:  # several workers share the GPU: each takes what it uses
            tf.config.experimental.set_memory_growth(gpu, True)
    return tf


def _device_facts(tf, device: str) -> dict:
    """The GPU's name and compute capability, and whether fp32 matmuls may use TF32."""
    if device != "gpu":
        return {}
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    capability = details.get("compute_capability")
    build = tf.sysconfig.get_build_info()
    return {
        "gpu": details.get("device_name", "?")
        + (f" (compute capability {capability[0]}.{capability[1]})" if capability else ""),
        "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
    }


def make_our_runner(size: ModelSize, batch: dict, spec: dict) -> tuple[Callable[[int], int], dict]:
    """Builds bert-gpu's trainer on one replica (the CPU, or GPU 0); returns (run, facts).

    `run(n)` trains n steps on `batch` (the global batch, repeated) and returns the number
    of steps taken, read from the trainer's step counter.

    This is the one place that knows bert-gpu's training API, old and new: the Trainer
    of training.py (TrainConfig with precision, xla, steps_per_loop; `train_steps`, which
    runs several steps per call) or of run_pretraining_gpu.py before it (`train_step`
    only). --xla and --steps_per_loop are passed when TrainConfig has those fields and
    the flag is given, else TrainConfig's default holds; without a `precision` field, bf16
    falls back to the global Keras policy mixed_bfloat16.
    """
    import keras
    import tensorflow as tf

    try:
        import training
    except ModuleNotFoundError as error:
        if error.name != "training":
            raise
        import run_pretraining_gpu as training

    fields = {field.name for field in dataclasses.fields(training.TrainConfig)}
    options, notes = {}, []
    if "precision" in fields:
        options["precision"] = spec["precision"]
    elif spec["precision"] != "fp32":
        keras.mixed_precision.set_global_policy(KERAS_POLICY[spec["precision"]])
        notes.append("no TrainConfig.precision: bf16 through the global Keras policy")
    for name in ("xla", "steps_per_loop"):
        if spec[name] is None:
            continue
        if name in fields:
            options[name] = spec[name]
        else:
            notes.append(f"--{name} ignored: TrainConfig has no {name} field")
    config = training.TrainConfig(
        input_file="synthetic",
        output_dir="unused",
        bert_config_file="synthetic",
        do_train=True,
        batch_size=spec["batch_size"],
        max_seq_length=spec["seq_length"],
        max_predictions_per_seq=spec["predictions"],
        seed=spec["seed"],
        **options,
    )
    bert_config = bert_config_of(size, spec["vocab_size"])
    device = "/gpu:0" if spec["device"] == "gpu" else "/cpu:0"
    trainer = training.Trainer(tf.distribute.MirroredStrategy([device]), bert_config, config)
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    chunk = getattr(config, "steps_per_loop", 1)

    def run(steps: int) -> int:
        start = int(trainer.step.numpy())
        while (done := int(trainer.step.numpy()) - start) < steps:
            if hasattr(trainer, "train_steps"):
                count = min(chunk, steps - done)
                trainer.train_steps([iterator], tf.constant(count, tf.int64))
            else:
                trainer.train_step(iterator)
        return int(trainer.step.numpy()) - start

    speed_fields = ("precision", "xla", "steps_per_loop", "gradient_accumulation_steps")
    used = {name: getattr(config, name) for name in speed_fields if name in fields}
    if used.get("xla", False) is None:  # not given: what the Trainer chose for the hardware
        used["xla"] = trainer.xla
    # Checkouts whose encoder takes output_positions compute the last layer at the P
    # masked positions and the first token only (the FLOP count follows).
    import modeling

    call = inspect.signature(modeling.BertEncoder.call).parameters
    last_layer_rows = spec["predictions"] + 1 if "output_positions" in call else None
    # Checkouts whose encoder packs the real tokens (without XLA) do the dense products
    # on that many rows (one replica: the batch's).
    packed_tokens = None
    if getattr(trainer.model.encoder, "pack_tokens", False):
        packing = modeling.token_packing(tf.constant(batch["input_mask"]))
        packed_tokens = int(tf.size(packing.positions))
    facts = {
        "module": training.__name__,
        "config": used,
        "notes": notes,
        "last_layer_rows": last_layer_rows,
        "packed_tokens": packed_tokens,
    }
    return run, facts


def make_keras_hub_runner(
    size: ModelSize, batch: dict, spec: dict
) -> tuple[Callable[[int], int], dict]:
    """Builds keras-hub's BertMaskedLM on the same sizes; returns (run, facts) as above."""
    import keras
    import keras_hub
    import tensorflow as tf

    keras.utils.set_random_seed(spec["seed"])
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=spec["vocab_size"],
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        hidden_dim=size.hidden_size,
        intermediate_dim=size.intermediate_size,
        dropout=0.1,
        max_sequence_length=512,
        num_segments=2,
        dtype=KERAS_POLICY[spec["precision"]],
    )
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    # The update ours does: AdamW, decay 0.01, epsilon 1e-6, clipped to global norm 1.0.
    optimizer = keras.optimizers.AdamW(
        learning_rate=1e-4, weight_decay=0.01, epsilon=1e-6, global_clipnorm=1.0
    )
    if spec["precision"] == "fp16":
        # Dynamic loss scaling. compile() wraps the optimizer itself when the task's policy
        # is mixed_float16, as keras-hub 0.32's BertMaskedLM takes its backbone's; wrapping
        # here keeps the comparison fp16 against fp16 should that change.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    jit_compile = {"auto": "auto", "true": True, "false": False}[spec["theirs_jit_compile"]]
    model.compile(optimizer=optimizer, jit_compile=jit_compile)  # loss, metrics: MaskedLM's
    x = {
        "token_ids": batch["input_ids"],
        "segment_ids": batch["segment_ids"],
        "padding_mask": batch["input_mask"],
        "mask_positions": batch["masked_lm_positions"],
    }
    y, sample_weight = batch["masked_lm_ids"], batch["masked_lm_weights"]
    dataset = tf.data.Dataset.from_tensors((x, y, sample_weight)).repeat()
    iterator = iter(dataset)

    def run(steps: int) -> int:
        # Steps are counted here, not by the optimizer's `iterations`, which leaves out
        # the steps fp16's LossScaleOptimizer skips (they take as long as the others; ours
        # counts them too).
        done = 0
        if model.train_function is None:
            # The first step goes through `fit`, which builds the optimizer and compiles
            # the train function for a dataset iterator; the other steps call that function
            # on an iterator of the same dataset, as `fit` does, without tracing it again.
            # (train_on_batch traces it for other arguments: a second compilation, 71-79 s
            # for BERT-large on a GPU.)
            model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
            done = 1
        for _ in range(steps - done):
            model.train_function(iterator)
        return steps

    facts = {
        "jit_compile": f"{spec['theirs_jit_compile']} → {model.jit_compile}",
        "keras_hub": keras_hub.__version__,
        "policy": backbone.dtype_policy.name,
    }
    return run, facts


def measure_gemm(precisions: list[str], sizes: list[int], repeats: int, device: str) -> dict:
    """TFLOP/s of square TensorFlow matmuls: {precision: {size: best of `repeats`}}.

    On the GPU, fp32 is whatever TensorFlow does by default (TF32 on Ampere and later,
    as the models' fp32 matmuls do)."""
    import tensorflow as tf

    with tf.device("/gpu:0" if device == "gpu" else "/cpu:0"):
        return _measure_gemm(tf, precisions, sizes, repeats)


def _measure_gemm(tf, precisions: list[str], sizes: list[int], repeats: int) -> dict:
    # The reduction makes the result small to fetch; it is n² work against n³.
    product = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    result = {}
    for precision in precisions:
        result[precision] = {}
        for n in sizes:
            a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), MATMUL_DTYPE[precision])
            b = tf.cast(tf.random.stateless_normal([n, n], seed=[3, 4]), MATMUL_DTYPE[precision])
            product(a, b).numpy()  # trace and warm up
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                product(a, b).numpy()
                best = min(best, time.perf_counter() - start)
            result[precision][n] = 2 * n**3 / best / 1e12
    return result


def _send(message: dict) -> None:
    print(MESSAGE_PREFIX + json.dumps(message), flush=True)


def worker_main(spec: dict) -> None:
    """A worker: builds its side, warms up, then runs timed windows on request."""
    sys.path.insert(0, spec.get("ours_repo") or REPO)
    environment = _prepare_environment(spec)
    tf = _configure_tensorflow(spec)
    versions = {"tensorflow": tf.__version__, "python": platform.python_version()}
    import keras

    versions["keras"] = keras.__version__
    threads = (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )
    versions["threads"] = f"intra {threads[0]}, inter {threads[1]} (0: TensorFlow's default)"
    versions.update(_device_facts(tf, spec["device"]))
    if spec["role"] == "gemm":
        gemm = measure_gemm(
            spec["precisions"], spec["gemm_sizes"], spec["gemm_repeats"], spec["device"]
        )
        _send({"gemm": gemm, "versions": versions})
        return
    size = CONFIGS[spec["config"]]
    batch = synthetic_batch(
        spec["batch_size"],
        spec["seq_length"],
        spec["predictions"],
        spec["vocab_size"],
        spec["padding"],
        spec["seed"],
    )
    make_runner = make_our_runner if spec["role"] == "ours" else make_keras_hub_runner
    start = time.perf_counter()
    run, facts = make_runner(size, batch, spec)
    facts["environment"] = environment
    build_seconds = time.perf_counter() - start
    warmup = []
    for _ in range(spec["warmup_steps"]):
        start = time.perf_counter()
        steps = run(1)
        warmup.append((time.perf_counter() - start) / steps)
    _send(
        {
            "ready": True,
            "build_seconds": build_seconds,
            "first_step_seconds": warmup[0],
            # The fastest warm-up step after the first: what the driver sizes windows by.
            "step_seconds": min(warmup[1:] or warmup),
            "facts": facts,
            "versions": versions,
        }
    )
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["run"]:
            start = time.perf_counter()
            steps = run(int(command[1]))
            _send({"steps": steps, "seconds": time.perf_counter() - start})
        elif command[:1] == ["quit"]:
            return


# ----------------------------------------------------------------------------------------
# Driver side


class WorkerError(RuntimeError):
    """A worker process died or answered nonsense."""


class Worker:
    """A worker subprocess running this file with --worker; messages over stdin/stdout."""

    def __init__(self, spec: dict):
        self.name = spec["role"]
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ)
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        if spec["device"] == "cpu":
            # This measures the CPU: a GPU would change what jit_compile="auto" means.
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )

    def receive(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(MESSAGE_PREFIX):
                return json.loads(line[len(MESSAGE_PREFIX) :])
            self.log.write(line)
        self._died()

    def _died(self) -> NoReturn:
        self.process.wait()
        self.log.seek(0)
        tail = "".join(self.log.readlines()[-25:])
        raise WorkerError(f"{self.name} worker exited ({self.process.returncode}):\n{tail}")

    def run(self, steps: int) -> dict:
        try:
            self.process.stdin.write(f"run {steps}\n")
            self.process.stdin.flush()
        except OSError:  # a worker that died while it waited for its turn
            self._died()
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self.log.close()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _worker_spec(args: argparse.Namespace, **fields) -> dict:
    spec = {
        name: getattr(args, name)
        for name in (
            "batch_size",
            "seq_length",
            "predictions",
            "vocab_size",
            "padding",
            "seed",
            "intra_op_threads",
            "inter_op_threads",
            "warmup_steps",
            "xla",
            "steps_per_loop",
            "theirs_jit_compile",
            "theirs_cpu_bfc",
            "theirs_onednn",
            "ours_repo",
            "device",
        )
    }
    spec.update(fields)
    return spec


def _receive_ready(worker: Worker, config: str, precision: str) -> dict:
    ready = worker.receive()
    _log(
        f"  {config} {precision} {worker.name}: built in {ready['build_seconds']:.1f} s, "
        f"first step {ready['first_step_seconds']:.1f} s, "
        f"then {ready['step_seconds']:.3f} s/step"
    )
    return ready


def _roles(args: argparse.Namespace) -> list[str]:
    return [role for role in ("ours", "theirs") if getattr(args, f"{role}_enabled")]


def _time_row(
    args: argparse.Namespace, config: str, precision: str, workers: dict, ready: dict
) -> dict:
    """Alternates timed windows of the row's warmed-up workers; medians in seq/s.

    With --warm_up_together the warm-up steps shared the machine with other workers'
    warm-ups, so each worker first runs --calibration_steps alone to size its windows.
    """
    roles = list(workers)
    step_seconds = {role: ready[role]["step_seconds"] for role in roles}
    if args.warm_up_together:
        for role in roles:
            result = workers[role].run(args.calibration_steps)
            step_seconds[role] = result["seconds"] / result["steps"]
            _log(f"  {config} {precision} {role}: {step_seconds[role]:.4f} s/step alone")
    steps = {
        role: args.steps or max(1, round(args.window_seconds / step_seconds[role]))
        for role in roles
    }
    windows = {role: [] for role in roles}
    for window in range(args.windows):
        # Alternate who goes first, so a drift in machine load favours neither.
        for role in roles if window % 2 == 0 else roles[::-1]:
            result = workers[role].run(steps[role])
            windows[role].append(args.batch_size * result["steps"] / result["seconds"])
        _log(
            f"  window {window + 1}/{args.windows}: "
            + ", ".join(f"{role} {windows[role][-1]:.2f} seq/s" for role in roles)
        )
    return {
        "config": config,
        "precision": precision,
        "ready": ready,
        "steps": steps,
        "windows": windows,
        "median": {role: statistics.median(windows[role]) for role in roles},
    }


def benchmark_pair(args: argparse.Namespace, config: str, precision: str) -> dict:
    """Warms up each selected side, then alternates timed windows; medians in seq/s."""
    workers, ready = {}, {}
    try:
        # One side after the other, so neither's tracing slows the other's warm-up.
        for role in _roles(args):
            workers[role] = Worker(
                _worker_spec(args, role=role, config=config, precision=precision)
            )
            ready[role] = _receive_ready(workers[role], config, precision)
        return _time_row(args, config, precision, workers, ready)
    finally:
        for worker in workers.values():
            worker.close()


def benchmark_together(args: argparse.Namespace, config: str) -> list[dict]:
    """--warm_up_together: all workers of `config` warm up at once, then each row is timed.

    Returns one row per precision; a row whose worker failed holds "error" instead of
    timings, and the other rows go on.
    """
    workers = {precision: {} for precision in args.precisions}
    rows = []
    try:
        for precision, pair in workers.items():
            for role in _roles(args):
                spec = _worker_spec(args, role=role, config=config, precision=precision)
                pair[role] = Worker(spec)
        ready = {}
        for precision, pair in workers.items():
            try:
                ready[precision] = {
                    role: _receive_ready(worker, config, precision) for role, worker in pair.items()
                }
            except WorkerError as error:
                _log(str(error))
                for worker in pair.values():
                    worker.close()
        for precision, pair in workers.items():
            if precision not in ready:
                rows.append({"config": config, "precision": precision, "error": "see the log"})
                continue
            try:
                rows.append(_time_row(args, config, precision, pair, ready[precision]))
            except WorkerError as error:
                _log(str(error))
                rows.append({"config": config, "precision": precision, "error": "see the log"})
            for worker in pair.values():  # its memory goes back before the next row
                worker.close()
    finally:
        for pair in workers.values():
            for worker in pair.values():
                worker.close()
    return rows


def _percent(flops_per_step: int, seq_per_s: float, batch_size: int, peak_tflops: float) -> str:
    if not peak_tflops:
        return "–"
    return f"{100 * flops_per_step * seq_per_s / batch_size / (peak_tflops * 1e12):.1f}%"


def format_report(args: argparse.Namespace, cpu: dict, gemm: dict | None, rows: list) -> str:
    """The markdown report: command, machine, GEMM peaks, results and details."""
    command = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__)] + args.argv)
    versions, facts = {}, {}
    for row in rows:
        for role, ready in row.get("ready", {}).items():
            versions.update(ready["versions"])
            facts.setdefault(role, ready["facts"])
    if gemm:
        versions.update(gemm["versions"])
    flags = ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in cpu["flags"].items())
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {cpu['model']}, {cpu['cores']} cores usable; CPU flags: {flags}. "
        + (
            f"GPU: {versions.get('gpu', '?')}; TensorFlow built for CUDA "
            f"{versions.get('cuda', '?')}, cuDNN {versions.get('cudnn', '?')}; TF32 for "
            f"fp32 matmuls: {'on' if versions.get('tf32') else 'off'}. "
            if args.device == "gpu"
            else ""
        )
        + f"Python {versions.get('python', platform.python_version())}, TensorFlow "
        f"{versions.get('tensorflow', '?')}, Keras {versions.get('keras', '?')}"
        + (f", keras-hub {facts['theirs']['keras_hub']}" if "theirs" in facts else "")
        + f"; TensorFlow threads: {versions.get('threads', '?')}. "
        f"Load average (1 min): {cpu.get('load', '?')}.",
        "",
        f"Settings: global batch {args.batch_size}, sequence length {args.seq_length}, "
        f"{args.predictions} predictions, vocabulary {args.vocab_size:,}, padding "
        f"{args.padding}; one replica on the {'GPU' if args.device == 'gpu' else 'CPU'}; "
        + ("all workers of a model warmed up together; " if args.warm_up_together else "")
        + f"{args.warmup_steps} warm-up steps, then "
        f"{args.windows} timed windows per side, the sides taking turns, each of "
        + (f"{args.steps} steps" if args.steps else f"about {args.window_seconds:g} s")
        + "; the median window is reported.",
    ]
    if "ours" in facts:
        # Precision is each row's own, and so is XLA when --xla is not given (the Trainer
        # picks it for the precision and the hardware).
        used = {k: v for k, v in facts["ours"]["config"].items() if k not in ("precision", "xla")}
        settings = [f"{k}={v!r}" for k, v in used.items()]
        xla = {}
        for row in rows:
            ready = row.get("ready", {}).get("ours")
            if ready and "xla" in ready["facts"]["config"]:
                xla.setdefault(row["precision"], ready["facts"]["config"]["xla"])
        if xla and args.xla is None:
            modes = ", ".join(f"{'on' if on else 'off'} in {p}" for p, on in xla.items())
            settings.insert(0, f"xla not given ({modes})")
        elif xla:
            settings.insert(0, f"xla={args.xla!r}")
        lines.append(
            f"Ours: `{facts['ours']['module']}.Trainer`"
            + (", TrainConfig " + ", ".join(settings) if settings else "")
            + "".join(f"; {note}" for note in facts["ours"]["notes"])
            + "; masked-LM and next-sentence heads, AdamW clipped to global norm 1.0; "
            + facts["ours"].get("environment", "CPU allocator not recorded")
            + "."
        )
    if "theirs" in facts:
        lines.append(
            f"keras-hub: jit_compile {facts['theirs']['jit_compile']}, AdamW with "
            "global_clipnorm 1.0, no next-sentence head; "
            + facts["theirs"].get("environment", "CPU allocator not recorded")
            + "."
        )
    peaks = {}
    if gemm:
        lines.append("")
        for precision, by_size in gemm["gemm"].items():
            peaks[precision] = max(by_size.values())
            sizes = ", ".join(f"{n}: {tflops:.3f}" for n, tflops in by_size.items())
            lines.append(
                f"GEMM peak {precision}: **{peaks[precision]:.3f} TFLOP/s** "
                f"(square TensorFlow matmuls, best of {args.gemm_repeats}, by size {sizes})."
            )
    lines += [
        "",
        "| config | precision | ours seq/s | keras-hub seq/s | ours / keras-hub "
        "| ours % of GEMM peak | keras-hub % of GEMM peak |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    details = [
        "",
        "| config | precision | GFLOP/step ours, keras-hub | ours windows seq/s "
        "| keras-hub windows seq/s | steps/window | first step s (ours, keras-hub) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        size = CONFIGS[row["config"]]
        label = (
            f"{row['config']} (L{size.num_layers} H{size.hidden_size} A{size.num_heads} "
            f"I{size.intermediate_size})"
        )
        if "error" in row:
            lines.append(f"| {label} | {row['precision']} | failed: {row['error']} | | | | |")
            continue
        median, peak = row["median"], peaks.get(row["precision"])
        ours_facts = row.get("ready", {}).get("ours", {}).get("facts", {})
        flops = {
            "ours": model_flops(
                size,
                args,
                True,
                ours_facts.get("last_layer_rows"),
                ours_facts.get("packed_tokens"),
            ),
            "theirs": model_flops(size, args, False),
        }
        cells = {role: f"{median[role]:.2f}" if role in median else "–" for role in flops}
        ratio = f"{median['ours'] / median['theirs']:.2f}" if len(median) == 2 else "–"
        percent = {
            role: _percent(flops[role], median[role], args.batch_size, peak)
            if role in median
            else "–"
            for role in flops
        }
        lines.append(
            f"| {label} | {row['precision']} | {cells['ours']} | {cells['theirs']} | {ratio} "
            f"| {percent['ours']} | {percent['theirs']} |"
        )

        def spread(role, row=row):
            values = row["windows"].get(role)
            return f"{min(values):.2f}–{max(values):.2f}" if values else "–"

        def first(role, row=row):
            ready = row["ready"].get(role)
            return f"{ready['first_step_seconds']:.1f}" if ready else "–"

        details.append(
            f"| {row['config']} | {row['precision']} | {flops['ours'] / 1e9:.1f}, "
            f"{flops['theirs'] / 1e9:.1f} | {spread('ours')} | {spread('theirs')} | "
            + ", ".join(f"{role} {n}" for role, n in row["steps"].items())
            + f" | {first('ours')}, {first('theirs')} |"
        )
    lines += details
    lines += [
        "",
        "Model FLOPs are matmul FLOPs counted GEMM by GEMM, training = 3 × forward "
        "(benchmarks/flops_bert.py); ours includes the next-sentence head, keras-hub has "
        "none"
        + (
            "; ours computes its last layer at the masked positions and the first token "
            "only (keys and values at all positions), keras-hub at every position"
            if facts.get("ours", {}).get("last_layer_rows")
            else ""
        )
        + (
            "; without XLA ours does its dense products (projections, feed-forward) on "
            "the real tokens only, rounded up to a multiple of 64 rows"
            if any(
                row.get("ready", {}).get("ours", {}).get("facts", {}).get("packed_tokens")
                for row in rows
            )
            else ""
        )
        + ". % of GEMM peak: model FLOP/s over the measured matmul peak of the same "
        "precision.",
    ]
    return "\n".join(lines) + "\n"


def boolean(text: str) -> bool:
    """An argparse type for true/false flags (--xla=false)."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
    return text.lower() == "true"


def names(allowed):
    """An argparse type for a comma-separated subset of `allowed` (--configs=tiny,base)."""

    def parse(text):
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated subset of {','.join(allowed)}"
            )
        return chosen

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def sizes(text):
        return [int(n) for n in text.split(",") if n.strip()]

    add = parser.add_argument
    add("--configs", type=names(CONFIGS), default="tiny,mini,small,base", help="models")
    add("--precisions", type=names(PRECISIONS), default="fp32,bf16", help="precisions")
    add("--batch_size", type=int, default=32, help="global batch (one replica)")
    add("--seq_length", type=int, default=128)
    add("--predictions", type=int, default=20, help="masked positions per sequence")
    add("--vocab_size", type=int, default=30522, help="30522: the released uncased vocab")
    add("--padding", choices=("realistic", "full"), default="realistic")
    add("--steps", type=int, default=0, help="steps per window; 0: about --window_seconds")
    add("--window_seconds", type=float, default=10.0, help="window length when --steps=0")
    add("--windows", type=int, default=5, help="timed windows per side; the median counts")
    add("--warmup_steps", type=int, default=3, help="untimed steps first (tracing included)")
    add("--ours_only", action="store_true", help="time bert-gpu only")
    add("--theirs_only", action="store_true", help="time keras-hub only")
    add("--xla", type=boolean, help="ours: TrainConfig(xla=...) if given and the field exists")
    add("--steps_per_loop", type=int, help="ours: passed if given and TrainConfig has it")
    add("--theirs_jit_compile", choices=("auto", "true", "false"), default="auto")
    add(
        "--theirs_cpu_bfc",
        action="store_true",
        help="keras-hub with the BFC CPU allocator bert-gpu's scripts set "
        "(TF_CPU_ALLOCATOR_USE_BFC=true); default: TensorFlow's allocator, as keras-hub runs",
    )
    add(
        "--theirs_onednn",
        action="store_true",
        help="keras-hub with oneDNN's kernels on, as bert-gpu's scripts set them "
        "(TF_ENABLE_ONEDNN_OPTS=1); default: TensorFlow's choice for the CPU, as keras-hub runs",
    )
    add("--device", choices=DEVICES, default="cpu", help="one replica on the CPU or on GPU 0")
    add(
        "--warm_up_together",
        action="store_true",
        help="start all workers of a model at once (their compilation overlaps), then time "
        "the rows one by one; workers must fit in memory side by side",
    )
    add("--calibration_steps", type=int, help="--warm_up_together: steps alone (default 5)")
    add(
        "--ours_repo",
        default=REPO,
        help="the checkout whose trainer is 'ours' (e.g. a git worktree of an older commit, "
        "to measure before/after a change against the same keras-hub yardstick)",
    )
    add("--intra_op_threads", type=int, default=0, help="0: TensorFlow's default")
    add("--inter_op_threads", type=int, default=0, help="0: TensorFlow's default")
    add("--gemm_sizes", type=sizes, default="2048,3072,4096", help="square matmul sizes")
    add("--gemm_repeats", type=int, default=3, help="timings per size; the best counts")
    add("--seed", type=int, default=12345)
    add("--output", help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    if args.ours_only and args.theirs_only:
        parser.error("--ours_only and --theirs_only exclude each other")
    if args.calibration_steps is not None and not args.warm_up_together:
        parser.error("--calibration_steps: only used with --warm_up_together")
    if args.calibration_steps is None:
        args.calibration_steps = 5
    for name in (
        "batch_size",
        "seq_length",
        "predictions",
        "vocab_size",
        "windows",
        "calibration_steps",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)}: expected a positive integer")
    if args.warmup_steps < 1:
        parser.error("--warmup_steps: expected at least 1 (the first step traces)")
    if args.predictions > args.seq_length:
        parser.error("--predictions cannot exceed --seq_length")
    args.ours_enabled = not args.theirs_only
    args.theirs_enabled = not args.ours_only
    args.argv = argv
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        worker_main(json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    if args.theirs_enabled and importlib.util.find_spec("keras_hub") is None:
        sys.exit(
            f"keras_hub is not installed for {sys.executable}: run this script with the "
            "benchmark environment (make bench-training, or python3 -m venv .venv-bench && "
            ".venv-bench/bin/pip install -r requirements-bench.txt), or pass --ours_only"
        )
    cpu = cpu_facts()
    load_before = os.getloadavg()[0]
    _log(f"CPU: {cpu['model']}, {cpu['cores']} cores; measuring the GEMM peak")
    gemm_worker = Worker(
        _worker_spec(
            args,
            role="gemm",
            precisions=args.precisions,
            gemm_sizes=args.gemm_sizes,
            gemm_repeats=args.gemm_repeats,
        )
    )
    try:
        gemm = gemm_worker.receive()
    finally:
        gemm_worker.close()
    for precision, by_size in gemm["gemm"].items():
        _log(
            f"  GEMM {precision}: " + ", ".join(f"{n}: {t:.3f} TFLOP/s" for n, t in by_size.items())
        )
    rows = []
    for config in args.configs:
        if args.warm_up_together:
            _log(f"{config}: {', '.join(args.precisions)}, warming up together")
            rows += benchmark_together(args, config)
            continue
        for precision in args.precisions:
            _log(f"{config} {precision}")
            try:
                rows.append(benchmark_pair(args, config, precision))
            except WorkerError as error:
                _log(str(error))
                rows.append({"config": config, "precision": precision, "error": "see the log"})
    failed = any("error" in row for row in rows)
    # How busy the machine was: on a quiet one, about the benchmark's own busy threads
    # (up to the cores); much more means others' work shared the cores.
    cpu["load"] = f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    report = format_report(args, cpu, gemm, rows)
    print(report)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
