"""Training on several machines: local worker processes on 127.0.0.1 ports.

Each test starts real `run_pretraining_gpu.py` workers (MultiWorkerMirroredStrategy over
loopback) and compares what they train with a single process that reads the same input
shards (--input_shards) — the product's promise across processes.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import conftest
import numpy as np
import pytest
import tensorflow as tf
from train_workspace import PRED, SEQ, make_workspace

import create_pretraining_data as cpd
import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    workspace = make_workspace(root)
    # Every worker reads its own files: the data in two shards.
    shards = [str(root / f"shard-{i}.tfrecord") for i in range(2)]
    options = cpd.DataOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=4)
    spec = cpd.TokenizerSpec(workspace["vocab"])
    cpd.create_pretraining_data(str(root / "corpus.txt"), shards, spec, options, log=None)
    workspace["shards"] = str(root / "shard-*.tfrecord")
    return workspace


def free_ports(count):
    """Ports free on the loopback interface (bound then released)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def arguments(workspace, output_dir, config="drop", batch_size=4, xla=False, **extra):
    flags = dict(
        input_file=workspace["shards"],
        output_dir=output_dir,
        bert_config_file=workspace["configs"][config],
        batch_size=batch_size,
        num_train_steps=STEPS,
        num_warmup_steps=1,
        learning_rate=1e-3,
        save_checkpoints_steps=2,
        log_every_n_steps=1,
        seed=7,
        shuffle_buffer=100,
    )
    flags.update(extra)
    return ["--do_train", "--xla" if xla else "--noxla", *(f"--{k}={v}" for k, v in flags.items())]


class Cluster:
    """Worker processes of one training command, with their logs."""

    def __init__(self, workspace, output_dir, tmp_path, **flags):
        self.ports = free_ports(2)
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.logs = [tmp_path / f"worker-{i}-{time.monotonic_ns()}.log" for i in range(2)]
        self.processes = []
        for index, log in enumerate(self.logs):
            command = [
                sys.executable, os.path.join(ROOT, "run_pretraining_gpu.py"),
                *arguments(workspace, str(output_dir), **flags),
                f"--worker_hosts={hosts}", f"--task_index={index}",
            ]  # fmt: skip
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
            env.pop("TF_CONFIG", None)
            with open(log, "w") as out:
                self.processes.append(
                    subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
                )

    def log(self, index):
        return self.logs[index].read_text()

    def wait_for(self, index, text, timeout=300):
        """Waits until worker `index` has logged `text` (an observable state, not a time)."""
        deadline = time.monotonic() + timeout
        while text not in self.log(index):
            if self.processes[index].poll() is not None:
                raise AssertionError(f"worker {index} exited early:\n{self.log(index)[-3000:]}")
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.log(index)[-3000:]}"
            time.sleep(0.2)

    def finish(self, timeout=300):
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append("hung")
        return codes


def checkpoint_tensors(path):
    """The float tensors of a training checkpoint, by key (weights, slots)."""
    reader = tf.train.load_checkpoint(path)
    tensors = {}
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating and not key.startswith("loss_scale"):
            tensors[key] = reader.get_tensor(key)
    return tensors


def single_process(
    workspace, output_dir, num_replicas, config="drop", batch_size=4, xla=False, steps=STEPS
):
    """The same run in this process, on `num_replicas` replicas reading 2 input shards."""
    bert_config = workspace["configs"][config]
    run = training.TrainConfig(
        input_file=workspace["shards"], output_dir=str(output_dir),
        bert_config_file=bert_config, do_train=True, batch_size=batch_size,
        num_train_steps=steps, num_warmup_steps=1, learning_rate=1e-3,
        save_checkpoints_steps=2, log_every_n_steps=1, seed=7, shuffle_buffer=100,
        xla=xla, input_shards=2,
    )  # fmt: skip
    training.train_and_evaluate(run, strategy=conftest.mirrored_strategy(num_replicas))
    return checkpoint_tensors(tf.train.latest_checkpoint(str(output_dir)))


def assert_same_weights(actual, expected):
    assert actual.keys() == expected.keys()
    assert len(actual) > 100  # weights and both Adam slots of every variable
    for key, value in expected.items():
        # Ring all-reduce between processes sums in another order than the local one:
        # float32 rounding, bounded as in test_training.assert_trained_alike (weights
        # rtol 1e-5; Adam slots, whose terms may cancel, 4e-4 (m) and 8e-4 (v) of each
        # slot's largest element).
        scale = np.abs(value).max()
        relative = {"m": 4e-4, "v": 8e-4}.get(slot_kind(key), 1e-5)
        np.testing.assert_allclose(actual[key], value, rtol=1e-5, atol=relative * scale + 1e-10)


def slot_kind(key):
    """'m' or 'v' for an Adam slot's checkpoint key (optimizer/m/0/...), else ''."""
    return next((kind for kind in ("m", "v") if key.startswith(f"optimizer/{kind}/")), "")


def test_two_workers_stopped_by_sigterm_on_one_resume_and_train_like_one_process(
    workspace, tmp_path
):
    # Dropout on: masks depend on (step, replica), and the 2 workers' replicas are
    # replicas 0 and 1, like those of one process with 2 replicas. 40 steps: the signal
    # must land before the last one, and on a fast CPU the tests' model trained the 3
    # steps after "step 3/6" (about 0.1 s each) before the signal took effect.
    steps = 40
    out = tmp_path / "cluster"
    cluster = Cluster(workspace, out, tmp_path, num_train_steps=steps)
    cluster.wait_for(0, f"step 3/{steps}")
    cluster.processes[1].send_signal(signal.SIGTERM)  # a scheduler stops one worker
    codes = cluster.finish()
    assert codes == [143, 143], [cluster.log(0)[-2000:], cluster.log(1)[-2000:]]
    stopped = tf.train.latest_checkpoint(str(out))
    step = int(stopped.rsplit("-", 1)[1])
    assert 3 <= step < steps
    for index in (0, 1):
        assert f"at step {step}; run the same command to resume" in cluster.log(index)
    assert "received by another worker" in cluster.log(0)
    # Only the chief wrote to the output directory; the other worker's temporary
    # checkpoints (tempdir/bert-gpu-worker-<pid>-*) are gone.
    pid = cluster.processes[1].pid
    assert not [
        p for p in os.listdir(tempfile.gettempdir()) if p.startswith(f"bert-gpu-worker-{pid}-")
    ]

    again = Cluster(workspace, out, tmp_path, num_train_steps=steps)
    assert again.finish() == [0, 0], again.log(0)[-3000:]
    assert f"resumed from {stopped} at step {step}" in again.log(1)
    final = checkpoint_tensors(tf.train.latest_checkpoint(str(out)))
    assert tf.train.latest_checkpoint(str(out)).endswith(f"model.ckpt-{steps}")
    assert_same_weights(final, single_process(workspace, tmp_path / "single", 2, steps=steps))


def test_two_workers_with_two_replicas_each_train_like_one_device_with_the_whole_batch(
    workspace, tmp_path
):
    # 2 workers × 2 logical CPU replicas × 2 examples, dropout 0, against one device
    # with the 8 examples of both input shards.
    out = tmp_path / "cluster"
    cluster = Cluster(workspace, out, tmp_path, config="nodrop", batch_size=2, cpu_replicas=2)
    assert cluster.finish() == [0, 0], cluster.log(0)[-3000:]
    assert "2 worker(s) × 2 replica(s) = 4 replica(s)" in cluster.log(1)
    assert "2 per replica × 4 replica(s) (2 workers × 2) = 8 global" in cluster.log(0)
    final = checkpoint_tensors(tf.train.latest_checkpoint(str(out)))
    expected = single_process(workspace, tmp_path / "single", 1, config="nodrop", batch_size=8)
    assert_same_weights(final, expected)


def test_two_workers_with_xla_and_accumulation_train_like_one_device_with_the_whole_batch(
    workspace, tmp_path
):
    # The defaults of a multi-machine run (XLA on) with accumulation: each worker's
    # replica compiles its micro-batch loop and its update as two clusters, with the
    # all-reduce across the two processes in between. 2 workers × 2 micro-batches × 2
    # examples, dropout 0, against one device with the 8 examples, compiled too (without
    # XLA, AdamW updates through TensorFlow's fused Adam kernel, with other float32
    # constants: AdamWeightDecay._apply).
    out = tmp_path / "cluster"
    cluster = Cluster(
        workspace, out, tmp_path, config="nodrop", batch_size=2, xla=True,
        gradient_accumulation_steps=2,
    )  # fmt: skip
    assert cluster.finish() == [0, 0], cluster.log(0)[-3000:]
    assert "XLA" in cluster.log(0) and "no XLA" not in cluster.log(0)
    assert "= 8 global" in cluster.log(0), cluster.log(0)[-3000:]
    final = checkpoint_tensors(tf.train.latest_checkpoint(str(out)))
    expected = single_process(
        workspace, tmp_path / "single", 1, config="nodrop", batch_size=8, xla=True
    )
    assert_same_weights(final, expected)


def test_a_killed_worker_is_named_by_the_other_within_bounded_time(workspace, tmp_path):
    out = tmp_path / "cluster"
    cluster = Cluster(workspace, out, tmp_path, num_train_steps=100000, save_checkpoints_steps=50)
    cluster.wait_for(0, "step 3/")
    cluster.processes[1].kill()  # SIGKILL: no goodbye
    killed = time.monotonic()
    code = cluster.processes[0].wait(timeout=120)
    waited = time.monotonic() - killed
    log = cluster.log(0)
    assert code == 1, log[-3000:]
    assert f"worker 1 (127.0.0.1:{cluster.ports[1]}) stopped answering" in log, log[-3000:]
    assert waited < 120
