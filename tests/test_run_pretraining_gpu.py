"""Tests of the command line, run_pretraining_gpu.py, in subprocesses."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from train_workspace import make_workspace, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lines TensorFlow prints when imported carelessly; the command line filters them.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog", "cpu_feature_guard",
    "oneDNN custom operations",
)  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("cli"))


def run_cli(*args):
    command = [sys.executable, os.path.join(ROOT, "run_pretraining_gpu.py"), *args]
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_command_line_trains_with_xla_on_one_cpu_replica_evaluates_and_resumes(workspace, tmp_path):
    out = tmp_path / "run"
    # No --max_seq_length / --max_predictions_per_seq: they come from the data. --xla:
    # one replica compiles its whole step (the default for fp32 on this CPU, unless it has
    # AMX).
    args = [
        f"--input_file={workspace['data']}", f"--output_dir={out}",
        f"--bert_config_file={workspace['configs']['drop']}", "--xla",
        "--do_train", "--do_eval", "--num_gpus=0", "--batch_size=8",
        "--eval_batch_size=8", "--num_train_steps=6", "--num_warmup_steps=2",
        "--save_checkpoints_steps=4", "--log_every_n_steps=2", "--max_eval_steps=3",
    ]  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert not any(noise in log for noise in STARTUP_NOISE), log[:2000]
    assert "1 replica on the CPU (--num_gpus=0)" in log
    assert "precision fp32 (float32), XLA" in log
    assert "8 per replica × 1 replica(s) = 8 global per optimizer step" in log
    assert "parameters; sequences of 32 with 5 predictions" in log and str(out) in log
    assert "step 6/6" in log and "examples/s" in log and "steps/s" in log and "ETA" in log
    assert "warning: evaluating on training data" in log
    assert tf.train.latest_checkpoint(str(out)).endswith("model.ckpt-6")
    results = dict(
        line.split(" = ") for line in (out / "eval_results.txt").read_text().splitlines()
    )
    assert set(results) >= {
        "global_step", "loss", "masked_lm_accuracy", "masked_lm_loss",
        "next_sentence_accuracy", "next_sentence_loss",
    }  # fmt: skip
    assert results["global_step"] == "6" and results["eval_steps"] == "3"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out))
    assert "trained steps 0 → 6 (6 steps, 48 examples)" in log and "TensorBoard:" in log
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["xla"] is True and saved["max_seq_length"] == 32
    assert (out / "vocab.txt").read_text() == open(workspace["vocab"]).read()
    # The same command again: it resumes at step 6, has nothing left to train, evaluates.
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "already at step 6 of 6" in again.stderr
    assert "eval at step 6" in again.stderr and "best eval so far" in again.stderr
    assert len((out / "eval_results.jsonl").read_text().splitlines()) == 2


def test_help_is_quiet():
    result = run_cli("--help")  # (absl exits with 1 after printing the flags)
    assert not any(noise in result.stdout + result.stderr for noise in STARTUP_NOISE)
    assert "--gradient_accumulation_steps" in result.stdout


def test_command_line_errors(workspace, tmp_path):
    common = [f"--output_dir={tmp_path / 'o'}", "--do_train"]
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps(dict(tiny_config(), hidden_sise=32)))
    result = run_cli(
        f"--input_file={workspace['data']}", f"--bert_config_file={bad_config}", *common
    )
    assert result.returncode == 1
    assert "hidden_sise" in result.stderr and "Traceback" not in result.stderr
    config = f"--bert_config_file={workspace['configs']['drop']}"
    # A text file as training data: named, and pointed to the data tool.
    result = run_cli(f"--input_file={workspace['root'] / 'corpus.txt'}", config, *common)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "corpus.txt: not a TFRecord file" in result.stderr
    assert "create_pretraining_data.py" in result.stderr and "function_node" not in result.stderr
    # Warm-up longer than training.
    result = run_cli(
        f"--input_file={workspace['data']}", config, *common, "--num_train_steps=10",
        "--num_warmup_steps=20",
    )  # fmt: skip
    assert result.returncode == 1
    assert "--num_warmup_steps=20 is more than --num_train_steps=10" in result.stderr
    if not tf.config.list_physical_devices("GPU"):
        result = run_cli(f"--input_file={workspace['data']}", config, *common, "--num_gpus=2")
        assert result.returncode == 1 and "no GPU is visible" in result.stderr
        assert "--num_gpus=0" in result.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written
