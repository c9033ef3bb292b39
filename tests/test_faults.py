"""Faults: training killed at random moments, damaged data, an output directory that
cannot be written. What survives what (README) is checked here."""

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import conftest
import numpy as np
import pytest
import tensorflow as tf
from train_workspace import PRED, SEQ, make_workspace

import create_pretraining_data as cpd
import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("faults"))


def cli_command(workspace, out, steps):
    return [
        sys.executable, os.path.join(ROOT, "run_pretraining_gpu.py"),
        f"--input_file={workspace['data']}", f"--output_dir={out}",
        f"--bert_config_file={workspace['configs']['drop']}",  # dropout on
        "--do_train", "--num_gpus=0", "--noxla", "--batch_size=8", f"--num_train_steps={steps}",
        "--num_warmup_steps=2", "--learning_rate=1e-3", "--save_checkpoints_steps=1",
        "--log_every_n_steps=1", "--steps_per_loop=1", "--keep_checkpoint_max=3",
        "--shuffle_buffer=50", "--seed=11",
    ]  # fmt: skip


def readable(path):
    """Every tensor of the checkpoint at `path` can be read."""
    reader = tf.train.load_checkpoint(path)
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)
    return reader


def final_tensors(out):
    reader = readable(tf.train.latest_checkpoint(str(out)))
    return {
        key: reader.get_tensor(key)
        for key, dtype in reader.get_variable_to_dtype_map().items()
        if dtype.is_floating
    }


def test_training_killed_ten_times_resumes_to_the_weights_of_an_uninterrupted_run(
    workspace, tmp_path
):
    steps = 16
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    reference = tmp_path / "reference"
    done = subprocess.run(cli_command(workspace, reference, steps), capture_output=True, env=env)
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    out = tmp_path / "killed"
    rng = random.Random(5)
    kills = during_save = 0
    while kills < 10:
        log = tmp_path / f"run-{kills}.log"
        with open(log, "w") as f:
            process = subprocess.Popen(
                cli_command(workspace, out, steps), stdout=f, stderr=subprocess.STDOUT, env=env
            )
        start = tf.train.latest_checkpoint(str(out))
        # A random moment once training runs (start-up is the slow part, and the same
        # every time): odd kills land while TensorFlow's temporary files of a checkpoint
        # exist, i.e. during a save; even ones a random 0-50 ms after a step's log line.
        in_save = kills % 2 == 1
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            steps_logged = len(re.findall(r"^step \d+/", log.read_text(), re.M))
            if in_save and any("_temp" in name for name in os.listdir(out)):
                during_save += 1
                break
            if steps_logged >= (4 if in_save else 1):  # (a save too quick to catch)
                time.sleep(0 if in_save else rng.uniform(0, 0.05))
                break
            time.sleep(0.001)
        if process.poll() is not None:
            break  # finished before the kill
        process.kill()
        process.wait()
        kills += 1
        latest = tf.train.latest_checkpoint(str(out))
        # Whatever the moment, the newest checkpoint is complete and readable, and it is
        # never older than the one the run started from.
        if latest is not None:
            readable(latest)
            assert start is None or int(latest.rsplit("-", 1)[1]) >= int(start.rsplit("-", 1)[1])
    assert kills == 10, f"the run finished after {kills} kills: make it longer"
    assert during_save >= 1, "no kill landed while a checkpoint was being written"
    finished = subprocess.run(cli_command(workspace, out, steps), capture_output=True, env=env)
    assert finished.returncode == 0, finished.stderr.decode()[-3000:]
    assert tf.train.latest_checkpoint(str(out)).endswith(f"model.ckpt-{steps}")
    expected, actual = final_tensors(reference), final_tensors(out)
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def damaged_copy(workspace, directory, how):
    """The workspace's data as two files (both with metadata); the second one damaged."""
    directory.mkdir()
    paths = [str(directory / f"part-{i}.tfrecord") for i in range(2)]
    options = cpd.DataOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=4)
    corpus = str(workspace["root"] / "corpus.txt")
    spec = cpd.TokenizerSpec(workspace["vocab"])
    cpd.create_pretraining_data(corpus, paths, spec, options, log=None)
    size = os.path.getsize(paths[1])
    with open(paths[1], "r+b") as f:
        if how == "flipped byte":
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0x40]))
        else:
            f.truncate(size - 25)  # mid-record
    return paths


@pytest.mark.parametrize(
    "how, fault", [("flipped byte", "checksum mismatch"), ("truncated", "truncated record")]
)
def test_damaged_data_stops_training_and_eval_naming_the_file(workspace, tmp_path, how, fault):
    paths = damaged_copy(workspace, tmp_path / "data", how)
    out = tmp_path / "out"
    config = training.TrainConfig(
        input_file=str(tmp_path / "data" / "part-*.tfrecord"), output_dir=str(out),
        bert_config_file=workspace["configs"]["nodrop"], do_train=True, batch_size=8,
        num_train_steps=200, num_warmup_steps=1, save_checkpoints_steps=1,
        log_every_n_steps=1, steps_per_loop=1, xla=False, seed=3,
        shuffle_buffer=8, cycle_length=1,  # read the files one after the other
    )  # fmt: skip
    with pytest.raises(ValueError) as info:
        training.train_and_evaluate(config, strategy=conftest.mirrored_strategy(1))
    message = str(info.value)
    assert f"damaged training data: {paths[1]}: {fault}" in message, message
    assert "function_node" not in message
    # Training went on until the damage, and its last checkpoint is intact.
    latest = tf.train.latest_checkpoint(str(out))
    assert latest is not None
    readable(latest)
    eval_config = training.TrainConfig(
        input_file=None, eval_input_file=paths[1], output_dir=str(out),
        bert_config_file=workspace["configs"]["nodrop"], do_eval=True, max_eval_steps=0,
        xla=False,
    )  # fmt: skip
    with pytest.raises(ValueError) as info:
        training.train_and_evaluate(eval_config, strategy=conftest.mirrored_strategy(1))
    assert f"damaged eval data: {paths[1]}: {fault}" in str(info.value)


def mount_tmpfs(path, size_kb, read_only=False):
    """A small tmpfs at `path` (root only); pytest.skip with the reason otherwise."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (the test runs as a user)")
    path.mkdir()
    options = f"size={size_kb}k" + (",ro" if read_only else "")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


def unmount(path):
    # Lazily: TensorFlow may still hold a summary file open there.
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def small_run(workspace, out, steps):
    return training.TrainConfig(
        input_file=workspace["data"], output_dir=str(out),
        bert_config_file=workspace["configs"]["nodrop"], do_train=True, batch_size=8,
        num_train_steps=steps, num_warmup_steps=1, save_checkpoints_steps=1,
        keep_checkpoint_max=100, log_every_n_steps=1, xla=False, seed=3,
    )  # fmt: skip


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_loads(workspace, tmp_path):
    disk = tmp_path / "disk"
    # A checkpoint of the tiny model is ~0.8 MB (+ the input position, ~0.2 MB): 6 MB
    # hold a few, not all thirty (keep_checkpoint_max=100).
    mount_tmpfs(disk, 6000)
    try:
        out = disk / "out"
        with pytest.raises(OSError) as info:
            training.train_and_evaluate(
                small_run(workspace, out, 30), strategy=conftest.mirrored_strategy(1)
            )
        message = str(info.value)
        assert "cannot write the checkpoint of step" in message
        assert "No space left on device" in message or "space" in message.lower()
        latest = tf.train.latest_checkpoint(str(out))
        assert latest is not None and f"the newest complete checkpoint is {latest}" in message
        readable(latest)
    finally:
        unmount(disk)


def test_a_read_only_output_directory_is_a_clear_error_and_nothing_is_lost(
    workspace, tmp_path, monkeypatch
):
    disk = tmp_path / "disk"
    mount_tmpfs(disk, 20000)
    try:
        out = disk / "out"
        original = training.Trainer.train_steps

        def stop_after_two(self, iterators, num_steps):  # a Ctrl-C at step 2
            result = original(self, iterators, num_steps)
            if int(self.step.numpy()) == 2:
                signal.raise_signal(signal.SIGINT)
            return result

        with monkeypatch.context() as m:
            m.setattr(training.Trainer, "train_steps", stop_after_two)
            stopped = training.train_and_evaluate(
                small_run(workspace, out, 4), strategy=conftest.mirrored_strategy(1)
            )
        assert stopped["stopped_by_signal"] == signal.SIGINT
        before = sorted(os.listdir(out))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(OSError) as info:
            training.train_and_evaluate(
                small_run(workspace, out, 4), strategy=conftest.mirrored_strategy(1)
            )
        assert f"cannot write {out / 'train_config.json'}" in str(info.value)
        assert "Read-only file system" in str(info.value)
        assert sorted(os.listdir(out)) == before
        readable(tf.train.latest_checkpoint(str(out)))
    finally:
        unmount(disk)
    shutil.rmtree(disk, ignore_errors=True)
