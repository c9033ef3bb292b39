"""Tests of export_checkpoint.py: a training output directory out to each format.

The Hugging Face export is loaded by transformers itself, the SavedModel by
tf.saved_model.load in a fresh process, the original-format export by --init_checkpoint's
reader; test_checkpoints.py compares the formats' numbers in depth.
"""

import hashlib
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

import checkpoints
import export_checkpoint
import modeling

VOCAB = os.path.join(ROOT, "vocab.txt")  # the bundled uncased vocabulary, 2,000 tokens
CONFIG = modeling.BertConfig(
    vocab_size=2000,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for name, variable in modeling.original_name_map(model).items():
        value = rng.normal(size=variable.shape) * (0.3 if len(variable.shape) > 1 else 0.1)
        variable.assign((value + (1.0 if name.endswith("gamma") else 0.0)).astype(np.float32))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training output directory as run_pretraining_gpu.py leaves it: checkpoints of the
    model, optimizer and step, bert_config.json, train_config.json naming the data, and
    the data's metadata naming the vocabulary. Returns (directory, trained model)."""
    directory = tmp_path_factory.mktemp("run")
    model = modeling.BertPretrainingModel(CONFIG)
    model.build_weights()
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(
        checkpoint, str(directory), 3, checkpoint_name="model.ckpt"
    )
    for number, seed in ((10, 1), (20, 2)):  # the newest must be the one exported
        randomize(model, seed)
        step.assign(number)
        manager.save(checkpoint_number=number)
    (directory / "bert_config.json").write_text(CONFIG.to_json_string())
    data = directory / "data" / "train.tfrecord"
    data.parent.mkdir()
    with open(VOCAB, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    metadata = {"vocab_file": VOCAB, "vocab_sha256": digest, "do_lower_case": True}
    (directory / "data" / "train.tfrecord.json").write_text(json.dumps(metadata))
    (directory / "train_config.json").write_text(json.dumps({"train_files": [str(data)]}))
    return str(directory), model


def sample_features():
    rng = np.random.default_rng(0)
    input_ids = rng.integers(5, 2000, (2, 12)).astype(np.int32)
    input_mask = np.ones_like(input_ids)
    input_mask[1, 9:] = 0
    segment_ids = np.zeros_like(input_ids)
    segment_ids[:, 6:] = 1
    return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}


def test_export_huggingface_from_a_training_output_directory(run_dir, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory, trained = run_dir
    out = str(tmp_path / "hf")
    files = export_checkpoint.export(
        export_checkpoint.ExportConfig(checkpoint=directory, format="huggingface", output_dir=out)
    )
    assert "model.safetensors" in files and "vocab.txt" in files
    # The vocabulary and its casing came from the training data's metadata.
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        assert json.load(f)["do_lower_case"] is True
    hf_model = transformers.AutoModelForPreTraining.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.tokenize("The LIGHTHOUSE") == tokenizer.tokenize("the lighthouse")
    features = sample_features()
    with torch.no_grad():
        theirs = hf_model(
            input_ids=torch.tensor(features["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(features["input_mask"], dtype=torch.long),
            token_type_ids=torch.tensor(features["segment_ids"], dtype=torch.long),
        ).seq_relationship_logits.numpy()
    positions = np.zeros((2, 1), np.int32)
    ours = trained({**features, "masked_lm_positions": positions})["nsp_logits"].numpy()
    # float32 in two libraries; see RELATIVE_TOLERANCE in test_checkpoints.py.
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4 * max(1.0, np.abs(ours).max()))


def test_export_original_reads_back_bit_exactly(run_dir, tmp_path):
    directory, trained = run_dir
    out = str(tmp_path / "original")
    export_checkpoint.export(
        export_checkpoint.ExportConfig(
            checkpoint=os.path.join(directory, "model.ckpt-20"), format="original", output_dir=out
        )
    )
    source = checkpoints.resolve_init_checkpoint(out)
    assert source.kind == "original" and source.path.endswith("bert_model.ckpt")
    reader = tf.train.load_checkpoint(source.path)
    for name, value in checkpoints.original_weights(trained).items():
        np.testing.assert_array_equal(reader.get_tensor(name), value, err_msg=name)
    with open(os.path.join(out, "vocab.txt"), "rb") as f, open(VOCAB, "rb") as g:
        assert f.read() == g.read()


def test_export_savedmodel_from_the_command_line_serves_the_same_outputs(run_dir, tmp_path):
    directory, trained = run_dir
    out = str(tmp_path / "savedmodel")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "export_checkpoint.py", f"--checkpoint={directory}"]
    command += ["--format=savedmodel", f"--output_dir={out}"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "initialized 46 variable(s) from a bert-gpu checkpoint" in result.stderr
    assert "model.ckpt-20" in result.stderr

    features = sample_features()
    np.savez(tmp_path / "features.npz", **features)
    load = (
        "import sys, numpy as np, tensorflow as tf\n"
        "features = dict(np.load(sys.argv[2]))\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "outputs = serve(**{k: tf.constant(v) for k, v in features.items()})\n"
        "np.savez(sys.argv[3], **{k: v.numpy() for k, v in outputs.items()})\n"
    )
    served = str(tmp_path / "served.npz")
    result = subprocess.run(
        [sys.executable, "-c", load, out, str(tmp_path / "features.npz"), served],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    served = np.load(served)
    sequence_output, pooled_output = trained.encoder(
        tf.constant(features["input_ids"]),
        tf.constant(features["segment_ids"]),
        tf.constant(features["input_mask"]),
    )
    # The same float32 kernels; the graph may fuse a matmul with its bias add, changing
    # the last bits of a few sums: 1e-5 of the outputs' scale (LayerNorm keeps it ~1).
    for name, ours in (("sequence_output", sequence_output), ("pooled_output", pooled_output)):
        ours = ours.numpy()
        assert served[name].shape == ours.shape
        np.testing.assert_allclose(served[name], ours, rtol=0, atol=1e-5 * np.abs(ours).max())


def test_export_refuses_to_overwrite_and_leaves_nothing_half_written(
    run_dir, tmp_path, monkeypatch
):
    directory, _ = run_dir
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    config = export_checkpoint.ExportConfig(
        checkpoint=directory, format="original", output_dir=str(taken)
    )
    with pytest.raises(ValueError, match="exists and is not empty.*--overwrite"):
        export_checkpoint.export(config)
    assert os.listdir(taken) == ["keep.txt"]

    def fail(model):
        raise OSError("disk full")

    # A failure after config.json is written: the directory must not appear.
    monkeypatch.setattr(checkpoints, "hf_weights", fail)
    out = tmp_path / "hf"
    with pytest.raises(OSError, match="disk full"):
        checkpoints.export_huggingface(run_dir[1], str(out), VOCAB, do_lower_case=True)
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # neither hf nor a hidden temporary


def test_export_says_what_it_lacks(run_dir, tmp_path):
    prefix = str(tmp_path / "lone" / "model.ckpt-1")
    tf.train.Checkpoint(model=run_dir[1]).write(prefix)
    config = export_checkpoint.ExportConfig(
        checkpoint=prefix, format="huggingface", output_dir=str(tmp_path / "o")
    )
    with pytest.raises(
        ValueError, match="no bert_config.json or config.json beside it.*--bert_config_file"
    ):
        export_checkpoint.export(config)
    config_file = tmp_path / "bert_config.json"
    config_file.write_text(CONFIG.to_json_string())
    config = export_checkpoint.ExportConfig(
        checkpoint=prefix,
        format="huggingface",
        output_dir=str(tmp_path / "o"),
        bert_config_file=str(config_file),
    )
    with pytest.raises(ValueError, match="no vocab.txt beside it.*pass --vocab_file"):
        export_checkpoint.export(config)
    with pytest.raises(
        ValueError, match="--format=onnx: expected one of huggingface, original, savedmodel"
    ):
        export_checkpoint.ExportConfig(checkpoint=prefix, format="onnx", output_dir="o")


def test_do_lower_case_is_inferred_from_the_vocabulary():
    assert checkpoints.infer_do_lower_case(checkpoints.read_vocab(VOCAB))
    assert not checkpoints.infer_do_lower_case(["[PAD]", "[UNK]", "the", "The", "##s"])
    assert checkpoints.infer_do_lower_case(["[PAD]", "[UNK]", "[CLS]", "the", "##s", "ß"])
