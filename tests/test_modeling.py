"""Tests for modeling.py: the model against a NumPy BERT, heads, losses, names, dropout."""

import json
import math

import conftest
import keras
import numpy as np
import pytest
import tensorflow as tf

import modeling

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

VOCAB = 100


def tiny_config(**overrides):
    values = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=16,
        type_vocab_size=2,
    )
    values.update(overrides)
    return modeling.BertConfig(**values)


def built_model(config):
    model = modeling.BertPretrainingModel(config)
    model.build_weights()
    return model


def randomize(model, seed=0):
    """Sets every variable to random values (gamma near 1) so that no bias is zero and no
    LayerNorm is the identity; returns {original name: value}."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, variable in modeling.original_name_map(model).items():
        value = rng.normal(0.0, 0.3, variable.shape).astype(np.float32)
        if name.endswith("gamma"):
            value += 1.0
        variable.assign(value)
        values[name] = value.astype(np.float64)
    return values


def batch(seed=0, batch_size=3, seq_length=8, num_predictions=3):
    """A batch with padding: sequence b has seq_length - 2*b real tokens."""
    rng = np.random.default_rng(seed)
    lengths = [seq_length - 2 * b for b in range(batch_size)]
    input_mask = np.array([[1] * n + [0] * (seq_length - n) for n in lengths], np.int32)
    input_ids = rng.integers(1, VOCAB, (batch_size, seq_length)).astype(np.int32)
    segment_ids = np.array([[0] * (n // 2) + [1] * (seq_length - n // 2) for n in lengths])
    positions = np.stack([rng.choice(n, num_predictions, replace=False) for n in lengths])
    return {
        "input_ids": input_ids * input_mask,
        "input_mask": input_mask,
        "segment_ids": (segment_ids * input_mask).astype(np.int32),
        "masked_lm_positions": positions.astype(np.int32),
    }


def to_tensors(features):
    return {key: tf.constant(value) for key, value in features.items()}


# A NumPy BERT, written from the paper and the original release's variable names, in float64.


def np_layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + 1e-12) * gamma + beta


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / np.sqrt(2.0)))


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_bert(w, config, features):
    ids, segments = features["input_ids"], features["segment_ids"]
    mask, positions = features["input_mask"], features["masked_lm_positions"]
    b, s = ids.shape
    n, d = config.num_attention_heads, config.hidden_size // config.num_attention_heads

    def dense(x, prefix):
        return x @ w[prefix + "/kernel"] + w[prefix + "/bias"]

    def layer_norm(x, prefix):
        return np_layer_norm(x, w[prefix + "/LayerNorm/gamma"], w[prefix + "/LayerNorm/beta"])

    def heads(x):
        return x.reshape(b, s, n, d).transpose(0, 2, 1, 3)

    x = (
        w["bert/embeddings/word_embeddings"][ids]
        + w["bert/embeddings/position_embeddings"][:s][None]
        + w["bert/embeddings/token_type_embeddings"][segments]
    )
    x = layer_norm(x, "bert/embeddings")
    score_bias = (1.0 - mask[:, None, None, :]) * -10000.0
    for i in range(config.num_hidden_layers):
        p = f"bert/encoder/layer_{i}"
        q = heads(dense(x, p + "/attention/self/query"))
        k = heads(dense(x, p + "/attention/self/key"))
        v = heads(dense(x, p + "/attention/self/value"))
        probs = np_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + score_bias)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, n * d)
        x = layer_norm(x + dense(context, p + "/attention/output/dense"), p + "/attention/output")
        h = np_gelu_tanh(dense(x, p + "/intermediate/dense"))
        x = layer_norm(x + dense(h, p + "/output/dense"), p + "/output")
    pooled = np.tanh(dense(x[:, 0], "bert/pooler/dense"))
    h = x[np.arange(b)[:, None], positions]
    h = layer_norm(
        np_gelu_tanh(dense(h, "cls/predictions/transform/dense")), "cls/predictions/transform"
    )
    mlm = h @ w["bert/embeddings/word_embeddings"].T + w["cls/predictions/output_bias"]
    nsp = (
        pooled @ w["cls/seq_relationship/output_weights"].T + w["cls/seq_relationship/output_bias"]
    )
    return {"sequence_output": x, "pooled_output": pooled, "mlm_logits": mlm, "nsp_logits": nsp}


def run_model(model, features, **kwargs):
    features = to_tensors(features)
    sequence_output, pooled_output = model.encoder(
        features["input_ids"], features["segment_ids"], features["input_mask"], **kwargs
    )
    outputs = model(features, **kwargs)
    outputs.update(sequence_output=sequence_output, pooled_output=pooled_output)
    return {key: value.numpy() for key, value in outputs.items()}


@pytest.fixture(scope="module")
def model_and_weights():
    model = built_model(tiny_config())
    return model, randomize(model)


# ---------------------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------------------


def test_forward_pass_matches_numpy_reference(model_and_weights):
    model, weights = model_and_weights
    features = batch()
    outputs = run_model(model, features)
    expected = numpy_bert(weights, model.config, features)
    assert outputs["mlm_logits"].shape == (3, 3, VOCAB)
    assert outputs["mlm_logits"].dtype == np.float32
    assert outputs["nsp_logits"].dtype == np.float32
    for key, value in expected.items():
        np.testing.assert_allclose(outputs[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_padding_is_ignored_and_matters(model_and_weights):
    model, _ = model_and_weights
    features = batch()
    outputs = run_model(model, features)
    mask = features["input_mask"].astype(bool)

    changed = dict(features)
    changed["input_ids"] = np.where(mask, features["input_ids"], 7).astype(np.int32)
    changed["segment_ids"] = np.where(mask, features["segment_ids"], 1).astype(np.int32)
    changed_outputs = run_model(model, changed)
    np.testing.assert_allclose(
        changed_outputs["sequence_output"][mask], outputs["sequence_output"][mask], atol=1e-6
    )
    for key in ("pooled_output", "nsp_logits", "mlm_logits"):  # all positions are unpadded
        np.testing.assert_allclose(changed_outputs[key], outputs[key], atol=1e-6, err_msg=key)

    # The same changed tokens, now unmasked, do change the real positions.
    unmasked = dict(changed, input_mask=np.ones_like(features["input_mask"]))
    unmasked_outputs = run_model(model, unmasked)
    assert np.abs(unmasked_outputs["pooled_output"] - outputs["pooled_output"])[1:].max() > 1e-3


def test_sequence_longer_than_position_table_raises(model_and_weights):
    model, _ = model_and_weights
    features = batch(seq_length=17)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        run_model(model, features)


def test_gelu_variants_match_their_formulas():
    x = np.linspace(-6.0, 6.0, 241)
    tanh_gelu = modeling.get_activation("gelu")(tf.constant(x)).numpy()
    exact_gelu = modeling.get_activation("gelu_exact")(tf.constant(x)).numpy()
    np.testing.assert_allclose(tanh_gelu, np_gelu_tanh(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(exact_gelu, np_gelu_erf(x), rtol=0, atol=1e-12)
    assert np.abs(tanh_gelu - exact_gelu).max() > 1e-4  # a swap would fail the lines above
    assert modeling.get_activation("gelu_new") is modeling.get_activation("gelu")
    np.testing.assert_array_equal(modeling.get_activation("linear")(tf.constant(x)).numpy(), x)
    np.testing.assert_array_equal(
        modeling.get_activation("relu")(tf.constant(x)).numpy(), x.clip(0)
    )
    with pytest.raises(ValueError, match="'swish'.*'gelu_exact'"):
        modeling.get_activation("swish")


def test_hidden_act_reaches_the_model():
    config = tiny_config(hidden_act="gelu_exact")
    model = built_model(config)
    weights = randomize(model)
    features = batch()
    outputs = run_model(model, features)
    tanh_reference = numpy_bert(weights, config, features)["sequence_output"]
    assert np.abs(outputs["sequence_output"] - tanh_reference).max() > 1e-4


# ---------------------------------------------------------------------------------------
# Tied masked-LM output
# ---------------------------------------------------------------------------------------


def test_mlm_output_is_tied_to_word_embeddings():
    model = built_model(tiny_config())
    weights = randomize(model)
    features = batch()
    before = run_model(model, features)["mlm_logits"]

    # Rows of tokens absent from the input only act through the output layer.
    unused = sorted(set(range(VOCAB)) - set(features["input_ids"].ravel()))
    source, target, zeroed = unused[:3]
    table = weights["bert/embeddings/word_embeddings"].copy()
    table[target] = table[source]
    table[zeroed] = 0.0
    model.encoder.embeddings.word_embeddings.assign(table)
    after = run_model(model, features)["mlm_logits"]

    bias = weights["cls/predictions/output_bias"]
    np.testing.assert_allclose(
        after[..., target], before[..., source] - bias[source] + bias[target], atol=1e-5
    )
    np.testing.assert_allclose(after[..., zeroed], np.broadcast_to(bias[zeroed], after.shape[:2]))
    others = [t for t in range(VOCAB) if t not in (target, zeroed)]
    np.testing.assert_allclose(after[..., others], before[..., others], atol=1e-6)


def test_mlm_loss_trains_the_word_embeddings_of_unseen_tokens(model_and_weights):
    model, _ = model_and_weights
    features = to_tensors(batch())
    table = model.encoder.embeddings.word_embeddings
    with tf.GradientTape() as tape:
        logits = model(features)["mlm_logits"]
        loss = tf.reduce_sum(tf.nn.log_softmax(logits)[..., 0])
    gradient = tf.convert_to_tensor(tape.gradient(loss, table))
    assert np.abs(gradient[0].numpy()).max() > 0  # token 0 is only ever padding


# ---------------------------------------------------------------------------------------
# Losses and metrics
# ---------------------------------------------------------------------------------------


def test_masked_lm_sums_matches_numpy():
    logits = np.array(
        [
            [[2.0, 0.5, -1.0, 0.0], [0.0, 3.0, 0.0, 1.0], [1.0, 1.0, 4.0, 0.0]],
            [[0.1, 0.2, 0.3, 0.4], [5.0, -5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]],
        ],
        np.float32,
    )
    ids = np.array([[0, 3, 2], [3, 0, 1]], np.int32)
    weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.5, 0.0]], np.float32)
    sums = modeling.masked_lm_sums(tf.constant(logits), tf.constant(ids), tf.constant(weights))

    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, ids[..., None], -1)[..., 0]
    assert sums["loss_sum"].dtype == tf.float32
    np.testing.assert_allclose(sums["loss_sum"], (nll * weights).sum(), rtol=1e-6)
    np.testing.assert_allclose(sums["weight_sum"], 3.5)
    # Correct: [0,0] (argmax 0) and [1,0] (argmax 3) with weight 1; [1,1] is argmax 0 with
    # weight 0.5; [0,2] is right but weighs 0.
    np.testing.assert_allclose(sums["correct_sum"], 2.5)


@pytest.mark.parametrize("label_shape", [(4,), (4, 1)])
def test_next_sentence_sums_matches_numpy(label_shape):
    logits = np.array([[2.0, -1.0], [0.0, 0.5], [3.0, 3.5], [-2.0, -4.0]], np.float32)
    labels = np.array([0, 0, 1, 1], np.int32)
    sums = modeling.next_sentence_sums(
        tf.constant(logits), tf.constant(labels.reshape(label_shape))
    )
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -log_probs[np.arange(4), labels]
    np.testing.assert_allclose(sums["loss_sum"], nll.sum(), rtol=1e-6)
    np.testing.assert_allclose(sums["count"], 4.0)
    np.testing.assert_allclose(sums["correct_sum"], 2.0)  # examples 0 and 2

    weights = np.array([1.0, 0.0, 0.0, 1.0], np.float32)  # two padding examples
    weighted = modeling.next_sentence_sums(
        tf.constant(logits), tf.constant(labels.reshape(label_shape)), tf.constant(weights)
    )
    np.testing.assert_allclose(weighted["loss_sum"], nll[0] + nll[3], rtol=1e-6)
    np.testing.assert_allclose(weighted["count"], 2.0)
    np.testing.assert_allclose(weighted["correct_sum"], 1.0)


# ---------------------------------------------------------------------------------------
# Original checkpoint names
# ---------------------------------------------------------------------------------------


def expected_original_names(num_layers):
    names = [
        "bert/embeddings/word_embeddings",
        "bert/embeddings/position_embeddings",
        "bert/embeddings/token_type_embeddings",
        "bert/embeddings/LayerNorm/gamma",
        "bert/embeddings/LayerNorm/beta",
        "bert/pooler/dense/kernel",
        "bert/pooler/dense/bias",
        "cls/predictions/transform/dense/kernel",
        "cls/predictions/transform/dense/bias",
        "cls/predictions/transform/LayerNorm/gamma",
        "cls/predictions/transform/LayerNorm/beta",
        "cls/predictions/output_bias",
        "cls/seq_relationship/output_weights",
        "cls/seq_relationship/output_bias",
    ]
    for i in range(num_layers):
        for part in (
            "attention/self/query/",
            "attention/self/key/",
            "attention/self/value/",
            "attention/output/dense/",
            "intermediate/dense/",
            "output/dense/",
        ):
            names += [f"bert/encoder/layer_{i}/{part}kernel", f"bert/encoder/layer_{i}/{part}bias"]
        for part in ("attention/output/LayerNorm/", "output/LayerNorm/"):
            names += [f"bert/encoder/layer_{i}/{part}gamma", f"bert/encoder/layer_{i}/{part}beta"]
    return names


def test_original_name_map_covers_every_variable_once(model_and_weights):
    model, _ = model_and_weights
    names = modeling.original_name_map(model)
    expected = expected_original_names(2)
    assert len(expected) == len(set(expected)) == 46
    assert sorted(names) == sorted(expected)
    assert len(model.weights) == len(names)
    assert {id(v) for v in names.values()} == {id(v) for v in model.weights}
    for name, variable in names.items():
        relative_path = modeling.keras_variable_path(name)
        assert variable.path.endswith("/" + relative_path)
        assert modeling.original_variable_name(relative_path) == name
        assert modeling.original_variable_name(variable.path) == name


def test_original_names_have_the_original_shapes(model_and_weights):
    model, _ = model_and_weights
    names = modeling.original_name_map(model)
    assert tuple(names["bert/embeddings/word_embeddings"].shape) == (VOCAB, 32)
    assert tuple(names["bert/embeddings/position_embeddings"].shape) == (16, 32)
    assert tuple(names["bert/encoder/layer_1/attention/self/query/kernel"].shape) == (32, 32)
    assert tuple(names["bert/encoder/layer_0/intermediate/dense/kernel"].shape) == (32, 37)
    assert tuple(names["bert/encoder/layer_0/output/dense/kernel"].shape) == (37, 32)
    assert tuple(names["cls/seq_relationship/output_weights"].shape) == (2, 32)
    assert tuple(names["cls/predictions/output_bias"].shape) == (VOCAB,)


def test_name_mapping_of_layer_indices_and_unknown_names():
    path = "outer/bert_pretraining/encoder/layer_11/ffn_layer_norm/beta"
    assert modeling.original_variable_name(path) == "bert/encoder/layer_11/output/LayerNorm/beta"
    assert (
        modeling.keras_variable_path("bert/encoder/layer_11/attention/output/dense/kernel")
        == "encoder/layer_11/self_attention/output_projection/kernel"
    )
    with pytest.raises(ValueError, match="encoder/layer_0/adam_m"):
        modeling.original_variable_name("encoder/layer_0/adam_m")
    with pytest.raises(ValueError, match="not a variable name"):
        modeling.keras_variable_path("bert/encoder/layer_0/attention/self/query")
    with pytest.raises(ValueError, match="build_weights"):
        modeling.original_name_map(modeling.BertPretrainingModel(tiny_config()))


def test_bert_base_parameter_counts():
    config = modeling.BertConfig(vocab_size=30522, type_vocab_size=2)
    model = built_model(config)
    encoder_count = sum(int(np.prod(v.shape)) for v in model.encoder.weights)
    assert encoder_count == 109_482_240
    assert sum(int(np.prod(v.shape)) for v in model.weights) == 110_106_428
    assert len(modeling.original_name_map(model)) == len(expected_original_names(12))


# ---------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------

SEED = tf.constant([12, 34], tf.int64)


def test_dropout_is_a_function_of_the_seed(model_and_weights):
    model, _ = model_and_weights
    features = batch()
    inference = run_model(model, features)
    first = run_model(model, features, training=True, dropout_seed=SEED)
    again = run_model(model, features, training=True, dropout_seed=tf.constant([12, 34]))
    other = run_model(model, features, training=True, dropout_seed=tf.constant([12, 35]))
    for key in ("mlm_logits", "nsp_logits", "sequence_output"):
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
        assert np.abs(first[key] - other[key]).max() > 1e-3, key
        assert np.abs(first[key] - inference[key]).max() > 1e-3, key
    no_dropout = run_model(model, features, training=False, dropout_seed=SEED)
    for key in inference:
        np.testing.assert_array_equal(no_dropout[key], inference[key], err_msg=key)


def test_training_without_seed_raises_unless_rates_are_zero(model_and_weights):
    model, _ = model_and_weights
    with pytest.raises(ValueError, match="dropout_seed"):
        model(to_tensors(batch()), training=True)
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = built_model(config)
    features = to_tensors(batch())
    np.testing.assert_array_equal(
        model(features, training=True)["mlm_logits"], model(features)["mlm_logits"]
    )


def test_dropout_sites_are_distinct(model_and_weights):
    model, _ = model_and_weights
    # `_flatten_layers` is Keras's own recursive walk over sublayers.
    sites = [
        layer.site
        for layer in model._flatten_layers()
        if isinstance(layer, modeling.StatelessDropout)
    ]
    assert len(sites) == 1 + 3 * 2
    assert len(set(sites)) == len(sites)


def test_stateless_dropout_rate_and_scaling():
    layer = modeling.StatelessDropout(0.3, site=5)
    x = tf.ones([20000])
    y = layer(x, training=True, dropout_seed=SEED).numpy()
    assert abs((y == 0).mean() - 0.3) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    other_site = modeling.StatelessDropout(0.3, site=6)(x, training=True, dropout_seed=SEED)
    assert ((other_site.numpy() == 0) != (y == 0)).mean() > 0.3


# ---------------------------------------------------------------------------------------
# XLA, mixed precision, distribution
# ---------------------------------------------------------------------------------------


def labels_for(features, seed=1):
    rng = np.random.default_rng(seed)
    shape = features["masked_lm_positions"].shape
    return {
        "masked_lm_ids": tf.constant(rng.integers(0, VOCAB, shape).astype(np.int32)),
        "masked_lm_weights": tf.constant(np.array([[1, 1, 0]] * shape[0], np.float32)),
        "next_sentence_labels": tf.constant([[0], [1], [1]]),
    }


def test_training_step_compiles_with_xla(model_and_weights):
    model, _ = model_and_weights
    features = batch()
    labels = labels_for(features)

    @tf.function(jit_compile=True)
    def step(features, seed, training):
        with tf.GradientTape() as tape:
            outputs = model(features, training=training, dropout_seed=seed)
            mlm = modeling.masked_lm_sums(
                outputs["mlm_logits"], labels["masked_lm_ids"], labels["masked_lm_weights"]
            )
            nsp = modeling.next_sentence_sums(outputs["nsp_logits"], labels["next_sentence_labels"])
            loss = mlm["loss_sum"] / mlm["weight_sum"] + nsp["loss_sum"] / nsp["count"]
        return outputs, loss, tape.gradient(loss, model.trainable_variables)

    tensors = to_tensors(features)
    outputs, loss, gradients = step(tensors, SEED, False)
    eager = model(tensors)
    for key in ("mlm_logits", "nsp_logits"):
        np.testing.assert_allclose(outputs[key], eager[key], atol=1e-5, err_msg=key)
    assert np.isfinite(loss.numpy())
    assert all(np.isfinite(tf.convert_to_tensor(g).numpy()).all() for g in gradients)

    first = step(tensors, SEED, True)
    again = step(tensors, SEED, True)
    np.testing.assert_array_equal(first[0]["mlm_logits"], again[0]["mlm_logits"])
    assert np.abs(first[0]["mlm_logits"] - outputs["mlm_logits"]).max() > 1e-3


@pytest.fixture
def restore_dtype_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def test_mixed_bfloat16_gives_float32_logits_close_to_float32(restore_dtype_policy):
    keras.config.set_dtype_policy("float32")
    model = built_model(tiny_config())  # initial weights: realistic activation scales
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed = built_model(model.config)
    assert mixed.encoder.compute_dtype == "bfloat16"
    reference = modeling.original_name_map(model)
    for name, variable in modeling.original_name_map(mixed).items():
        assert variable.dtype == "float32"
        variable.assign(reference[name])

    features = to_tensors(batch())
    expected = model(features)
    outputs = mixed(features)
    dropped = mixed(features, training=True, dropout_seed=SEED)
    for key in ("mlm_logits", "nsp_logits"):
        assert outputs[key].dtype == tf.float32
        assert dropped[key].dtype == tf.float32
        # bfloat16 keeps 8 significant bits (relative precision 2**-8 ≈ 0.4%).
        relative_error = np.linalg.norm(outputs[key] - expected[key]) / np.linalg.norm(
            expected[key]
        )
        assert 0 < relative_error < 0.02, key


def test_mirrored_replicas_match_a_single_device(model_and_weights):
    model, _ = model_and_weights
    strategy = conftest.mirrored_strategy(2)
    with strategy.scope():
        mirrored = built_model(model.config)
    reference = modeling.original_name_map(model)
    for name, variable in modeling.original_name_map(mirrored).items():
        assert isinstance(variable.value, tf.distribute.DistributedValues), name
        variable.assign(reference[name])

    features = to_tensors(batch(batch_size=2))
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: {k: v[context.replica_id_in_sync_group :][:1] for k, v in features.items()}
    )
    outputs = strategy.run(tf.function(lambda f: mirrored(f)["mlm_logits"]), args=(per_replica,))
    expected = model(features)["mlm_logits"]
    for replica, value in enumerate(strategy.experimental_local_results(outputs)):
        np.testing.assert_allclose(value, expected[replica : replica + 1], atol=1e-5)


# ---------------------------------------------------------------------------------------
# BertConfig
# ---------------------------------------------------------------------------------------


def write_json(tmp_path, values):
    path = tmp_path / "bert_config.json"
    path.write_text(values if isinstance(values, str) else json.dumps(values))
    return str(path)


def test_config_loads_json_and_round_trips(tmp_path):
    values = dict(FULL_CONFIG, vocab_size=30522, hidden_size=256, num_attention_heads=4)
    values["hidden_dropout_prob"] = 0  # JSON integers are fine for floats
    config = modeling.BertConfig.from_json_file(write_json(tmp_path, values))
    assert config.hidden_size == 256 and config.num_hidden_layers == 12
    assert config.hidden_dropout_prob == 0.0 and isinstance(config.hidden_dropout_prob, float)
    assert config.hidden_act == "gelu" and config.head_size == 64
    assert modeling.BertConfig.from_dict(json.loads(config.to_json_string())) == config
    assert config.to_dict()["vocab_size"] == 30522


def test_config_accepts_and_drops_the_multilingual_keys(tmp_path):
    values = {
        **FULL_CONFIG,
        "vocab_size": 119547,
        "directionality": "bidi",
        "pooler_fc_size": 768,
        "pooler_num_attention_heads": 12,
        "pooler_num_fc_layers": 3,
        "pooler_size_per_head": 128,
        "pooler_type": "first_token_transform",
    }
    config = modeling.BertConfig.from_json_file(write_json(tmp_path, values))
    assert config.vocab_size == 119547
    assert "pooler_type" not in config.to_dict()


# The original release's BERT-base config (with a small vocabulary): every key present.
FULL_CONFIG = {
    "vocab_size": 10, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
    "type_vocab_size": 2, "initializer_range": 0.02,
}  # fmt: skip


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"hiden_size": 768},
            r"unknown key 'hiden_size' \(value 768\); did you mean 'hidden_size'",
        ),
        ({"pooler_extra": 1}, r"unknown key 'pooler_extra'"),
        ({"vocab_size": None}, r"missing required key\(s\) 'vocab_size'"),
        (
            {"num_hidden_layers": None, "hidden_act": None},
            r"missing required key\(s\) 'num_hidden_layers', 'hidden_act'",
        ),
        ({"hidden_size": 100}, r"hidden_size=100 is not divisible by num_attention_heads=12"),
        ({"hidden_size": "768"}, r"'hidden_size' has value '768' \(str\); expected an integer"),
        ({"num_hidden_layers": True}, r"'num_hidden_layers' has value True \(bool\)"),
        ({"num_hidden_layers": 0}, r"expected a positive integer"),
        ({"hidden_dropout_prob": 1.0}, r"'hidden_dropout_prob' has value 1.0.*\[0, 1\)"),
        ({"hidden_act": "swish"}, r"'hidden_act' has value 'swish'.*'gelu_exact'"),
        ({"initializer_range": "0.02"}, r"'initializer_range'.*expected a number"),
    ],
)
def test_config_errors_name_file_key_and_value(tmp_path, changes, message):
    values = {k: v for k, v in dict(FULL_CONFIG, **changes).items() if v is not None}
    path = write_json(tmp_path, values)
    with pytest.raises(ValueError, match=message) as error:
        modeling.BertConfig.from_json_file(path)
    assert str(error.value).startswith(path + ": ")


def test_full_config_loads(tmp_path):
    config = modeling.BertConfig.from_json_file(write_json(tmp_path, FULL_CONFIG))
    assert config.num_hidden_layers == 12 and config.type_vocab_size == 2


def test_config_file_errors(tmp_path):
    path = write_json(tmp_path, '{"vocab_size": 10,\n "hidden_size": 768,,}')
    with pytest.raises(ValueError, match=r"bert_config.json: invalid JSON at line 2, column 21"):
        modeling.BertConfig.from_json_file(path)
    with pytest.raises(ValueError, match="expected a JSON object"):
        modeling.BertConfig.from_json_file(write_json(tmp_path, "[1, 2]"))
    missing = str(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        modeling.BertConfig.from_json_file(missing)
    with pytest.raises(ValueError, match=r"^<dict>: missing required key"):
        modeling.BertConfig.from_dict({})
    with pytest.raises(ValueError, match="not divisible"):
        modeling.BertConfig(vocab_size=10, hidden_size=30, num_attention_heads=4)
