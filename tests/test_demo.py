"""The demo of `make pretrain` evaluates on documents it does not train on."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documents(text):
    """Documents of the original format: blocks of lines separated by blank lines."""
    return [block.strip() for block in text.split("\n\n") if block.strip()]


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("awk") is None,
                    reason="needs make and awk")  # fmt: skip
def test_make_pretrain_holds_out_documents_for_eval(tmp_path):
    demo = tmp_path / "demo"
    dry_run = subprocess.run(
        ["make", "-n", "-W", "requirements.txt", f"DEMO={demo}", "pretrain"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    commands = dry_run.stdout.replace("\\\n", " ")
    (split,) = [line for line in commands.splitlines() if line.strip().startswith("awk")]
    (train,) = [line for line in commands.splitlines() if "run_pretraining_gpu.py" in line]
    assert f"--input_file={demo}/train.tfrecord" in train
    assert f"--eval_input_file={demo}/heldout.tfrecord" in train and "--do_eval" in train
    demo.mkdir()
    subprocess.run(["bash", "-c", split], cwd=ROOT, check=True)
    with open(os.path.join(ROOT, "sample_text.txt"), encoding="utf-8") as f:
        corpus = documents(f.read())
    kept = documents((demo / "train.txt").read_text())
    held_out = documents((demo / "heldout.txt").read_text())
    assert len(corpus) == 42 and len(held_out) == 6
    assert kept + held_out == corpus  # every document once, the last six held out
    assert not set(kept) & set(held_out)
