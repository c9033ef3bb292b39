"""Tests for modeling.py: the model against a NumPy BERT, heads, losses, names, dropout."""

import json
import math

import conftest
import keras
import numpy as np
import numpy_bert as nb
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


# The float64 NumPy BERT every comparison below is made against (tests/numpy_bert.py), and
# the largest float32 errors a correct implementation can make.


def reference_and_tolerances(weights, config, features, **variant):
    reference = nb.forward(weights, config, features, **variant)
    return reference, nb.forward_tolerances(weights, config, features, reference)


def assert_within(actual, expected, tolerances, keys=None, factor=1.0):
    """|actual - expected| ≤ factor·tolerance for every output in `keys` (default: all)."""
    for key in keys or actual:
        error = np.abs(np.asarray(actual[key], np.float64) - expected[key]).max()
        assert error <= factor * tolerances[key], (key, error, factor * tolerances[key])


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
    expected, tolerances = reference_and_tolerances(weights, model.config, features)
    assert outputs["mlm_logits"].shape == (3, 3, VOCAB)
    assert outputs["mlm_logits"].dtype == np.float32
    assert outputs["nsp_logits"].dtype == np.float32
    # The float32 model against the float64 reference: only the float32 side rounds. Each
    # tolerance is GAIN·(Σ K)·U32·scale (nb.forward_tolerances): here Σ K = 573 summed
    # terms along the chain to the MLM logits (3 + H + 2·(H + D + 2S + 3H + I + H) + 3H
    # with H=32, D=8, S=8, I=37), GAIN = 2, and scale the size of the values the last sum
    # adds up (Σ|h_i·e_i| + |bias| ≈ 10 for the MLM logits): ≈ 7e-4 for the MLM logits,
    # 2e-4 for sequence_output. Measured errors are 60-250× smaller on an AMD EPYC (with
    # oneDNN or Eigen kernels); the 1.5e-5 reported from an Intel Xeon with AVX-512 is 50×
    # smaller. Real bugs are over 1000× larger (test below).
    assert_within(outputs, expected, tolerances)


@pytest.mark.parametrize(
    "bug",
    ["attention_scale_1_over_D", "no_layer_norm", "transposed_query_kernel", "gamma_beta_swapped"],
)
def test_forward_tolerances_reject_real_bugs(model_and_weights, bug):
    """The tolerances above are far below what a wrong model computes."""
    model, weights = model_and_weights
    features = batch()
    expected, tolerances = reference_and_tolerances(weights, model.config, features)
    variant, wrong_weights = {}, dict(weights)
    if bug == "attention_scale_1_over_D":
        variant["attention_scale"] = 1.0 / model.config.head_size
    elif bug == "no_layer_norm":
        variant["norm"] = lambda x, gamma, beta: x * gamma + beta
    elif bug == "transposed_query_kernel":
        name = "bert/encoder/layer_1/attention/self/query/kernel"
        wrong_weights[name] = weights[name].T
    else:
        prefix = "cls/predictions/transform/LayerNorm/"
        wrong_weights[prefix + "gamma"] = weights[prefix + "beta"]
        wrong_weights[prefix + "beta"] = weights[prefix + "gamma"]
    wrong = nb.forward(wrong_weights, model.config, features, **variant)
    error = np.abs(wrong["mlm_logits"] - expected["mlm_logits"]).max()
    assert error > 1000 * tolerances["mlm_logits"], (bug, error)


def test_padding_is_ignored_and_matters(model_and_weights):
    model, weights = model_and_weights
    features = batch()
    outputs = run_model(model, features)
    mask = features["input_mask"].astype(bool)

    changed = dict(features)
    changed["input_ids"] = np.where(mask, features["input_ids"], 7).astype(np.int32)
    changed["segment_ids"] = np.where(mask, features["segment_ids"], 1).astype(np.int32)
    changed_outputs = run_model(model, changed)
    # Exact by construction: a padding key's score is ≈ -10000 below the row's max, so its
    # exp() underflows to exactly 0 in float32 and 0·value adds exactly 0; the shapes (hence
    # the kernels and their summation orders) are unchanged.
    np.testing.assert_array_equal(
        changed_outputs["sequence_output"][mask], outputs["sequence_output"][mask]
    )
    for key in ("pooled_output", "nsp_logits", "mlm_logits"):  # all positions are unpadded
        np.testing.assert_array_equal(changed_outputs[key], outputs[key], err_msg=key)

    # The same changed tokens, now unmasked, do change the real positions: by far more
    # than float32 rounding could.
    unmasked = dict(changed, input_mask=np.ones_like(features["input_mask"]))
    unmasked_outputs = run_model(model, unmasked)
    tolerances = reference_and_tolerances(weights, model.config, unmasked)[1]
    difference = np.abs(unmasked_outputs["pooled_output"] - outputs["pooled_output"])[1:].max()
    assert difference > 100 * tolerances["pooled_output"]


def test_output_positions_give_the_full_encoders_rows(model_and_weights):
    """With output_positions, the last layer computes only those rows (and [CLS]'s): the
    same values as the full encoder's output at them, values and gradients, positions
    repeated or 0 (a padded prediction) included."""
    model, weights = model_and_weights
    features = to_tensors(batch())
    positions = tf.constant([[0, 3, 3, 7], [5, 1, 0, 0], [2, 2, 2, 2]])  # [B, P]
    inputs = (features["input_ids"], features["segment_ids"], features["input_mask"])
    upstream = tf.random.stateless_normal([3, 4, 32], [1, 2])  # weights the rows differently
    upstream_pooled = tf.random.stateless_normal([3, 32], [3, 4])

    def loss_of(outputs, pooled):
        return tf.reduce_sum(outputs * upstream) + tf.reduce_sum(pooled * upstream_pooled)

    with tf.GradientTape(persistent=True) as tape:
        full, full_pooled = model.encoder(*inputs)  # [B, S, H]
        full_loss = loss_of(tf.gather(full, positions, batch_dims=1), full_pooled)
        rows, pooled = model.encoder(*inputs, output_positions=positions)  # [B, P, H]
        loss = loss_of(rows, pooled)
    assert rows.shape == (3, 4, 32)
    # The two paths differ only in the shapes of the last layer's products (hence maybe
    # in their summation orders): within the float32 tolerances of the whole encoder
    # against the float64 reference.
    tolerances = reference_and_tolerances(weights, model.config, batch())[1]
    expected = tf.gather(full, positions, batch_dims=1).numpy()
    np.testing.assert_allclose(rows, expected, rtol=0, atol=tolerances["sequence_output"])
    np.testing.assert_allclose(pooled, full_pooled, rtol=0, atol=tolerances["pooled_output"])
    # The gradients of every variable agree to float32 rounding along the backward chain:
    # as in the forward bound, about 2·(Σ K = 573 terms)·u32 ≈ 7e-5 of the size of the
    # values summed, here taken as the largest entry of each gradient; 1e-4. A row dropped
    # or put in the wrong place changes them by 1e-2 or more.
    # The key biases' gradients are 0 in exact arithmetic (a softmax row does not change
    # when all its scores shift by q·bias), so both paths hold rounding noise there: their
    # scale is taken from the query bias of the same layer.
    variables = model.encoder.trainable_variables
    gradients = {
        variable.path: (tf.convert_to_tensor(got).numpy(), tf.convert_to_tensor(want).numpy())
        for variable, got, want in zip(
            variables, tape.gradient(loss, variables), tape.gradient(full_loss, variables)
        )
    }
    for path, (got, want) in gradients.items():
        scale_path = path.replace("/key/bias", "/query/bias")
        scale = np.abs(gradients[scale_path][1]).max()
        assert scale > 0, path
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=path)


def test_the_cut_last_layer_applies_its_dropout():
    """One layer and dropout on the attention probabilities only: the embeddings have no
    dropout, so only the (cut) last layer can make training=True differ from inference,
    and its masks follow the seed."""
    config = tiny_config(
        num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5
    )
    model = built_model(config)
    randomize(model)
    features = to_tensors(batch())

    def logits(**kwargs):
        return model(features, **kwargs)["mlm_logits"].numpy()

    inference = logits(training=False)
    first = logits(training=True, dropout_seed=SEED)
    np.testing.assert_array_equal(first, logits(training=True, dropout_seed=SEED))
    assert np.abs(first - inference).max() > 0.1  # rounding is below 1e-4 here
    assert np.abs(first - logits(training=True, dropout_seed=SEED + 1)).max() > 0.1


# ---------------------------------------------------------------------------------------
# Packed tokens
# ---------------------------------------------------------------------------------------


def test_token_packing_moves_the_real_rows():
    """packed_to_heads / heads_to_packed / gather_packed against NumPy indexing, for a mask
    that is not a prefix, a row of padding only and a full row, with a filler row; and
    their gradients."""
    mask = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], np.int32)  # B=3, S=4
    # 7 real tokens, rounded up to 8 rows by the first padding position.
    positions = np.concatenate([np.flatnonzero(mask), np.flatnonzero(mask == 0)])[:8]
    b_of, s_of = np.divmod(positions, 4)
    packing = modeling.token_packing(tf.constant(mask), multiple=4)
    np.testing.assert_array_equal(packing.positions, positions)
    np.testing.assert_array_equal(packing.row.numpy()[positions], np.arange(8))
    assert (np.delete(packing.row.numpy(), positions) == 8).all()
    # At most all of a small batch; a batch of padding only: one multiple of rows.
    everything = np.concatenate([np.flatnonzero(mask), np.flatnonzero(mask == 0)])
    np.testing.assert_array_equal(modeling.token_packing(tf.constant(mask)).positions, everything)
    no_tokens = modeling.token_packing(tf.zeros([2, 3], tf.int32), multiple=4)
    np.testing.assert_array_equal(no_tokens.positions, range(4))

    rng = np.random.default_rng(0)
    k_count, heads, size = 2, 2, 3  # K projections of N heads of D units
    packed = tf.constant(rng.normal(size=(8, k_count * heads * size)).astype(np.float32))
    split_upstream = rng.normal(size=(k_count, 3, heads, 4, size)).astype(np.float32)
    pad_b, pad_s = np.nonzero(mask == 0)
    # As attention's: nothing flows into padding without a packed row (the filler at
    # (0, 2) has one, and its gradient is its own).
    rowless = np.isin(np.arange(12), positions, invert=True).reshape(3, 4)
    rowless_b, rowless_s = np.nonzero(rowless)
    split_upstream[:, rowless_b, :, rowless_s] = 0.0
    assert split_upstream[:, 0, :, 2].any()
    padded_heads = tf.constant(rng.normal(size=(3, heads, 4, size)).astype(np.float32))
    merge_upstream = tf.constant(rng.normal(size=(8, heads * size)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([packed, padded_heads])
        split = modeling.packed_to_heads(packed, packing, k_count, heads)  # [K, B, N, S, D]
        merged = modeling.heads_to_packed(padded_heads, packing)  # [T, N·D]
        split_loss = tf.reduce_sum(split * split_upstream)
        merge_loss = tf.reduce_sum(merged * merge_upstream)

    rows = packed.numpy().reshape(8, k_count, heads, size)
    split = split.numpy()
    assert split.shape == (k_count, 3, heads, 4, size)
    np.testing.assert_array_equal(split[:, b_of, :, s_of], rows)  # [T, K, N, D] both
    for b, s in zip(pad_b, pad_s):  # a placeholder without a row: some row's values
        for k in range(k_count):
            for n in range(heads):
                assert (split[k, b, n, s] == rows[:, k, n]).all(axis=-1).any(), (k, b, n, s)
    want = split_upstream[:, b_of, :, s_of].reshape(8, -1)  # (fancy indices go first)
    np.testing.assert_array_equal(tape.gradient(split_loss, packed), want)

    np.testing.assert_array_equal(merged, padded_heads.numpy()[b_of, :, s_of].reshape(8, -1))
    want = np.zeros((3, heads, 4, size), np.float32)  # zero where no row is
    want[b_of, :, s_of] = merge_upstream.numpy().reshape(8, heads, size)
    np.testing.assert_array_equal(tape.gradient(merge_loss, padded_heads), want)

    # Positions (b, s) read the packed row of that token (the filler's at (0, 2)), else 0.
    x = tf.constant(np.arange(8 * 2, dtype=np.float32).reshape(8, 2) + 100)
    gathered = modeling.gather_packed(x, tf.constant([[3, 2], [0, 1], [0, 3]]), packing)
    np.testing.assert_array_equal(gathered[0], [x[2], x[7]])
    np.testing.assert_array_equal(gathered[1], np.zeros((2, 2)))
    np.testing.assert_array_equal(gathered[2], [x[3], x[6]])
    for outside in (4, -1):  # would read the next or the previous sequence's token
        with pytest.raises(tf.errors.InvalidArgumentError, match="masked_lm_positions outside"):
            modeling.gather_packed(x, tf.constant([[1, 0], [0, outside], [0, 0]]), packing)


def packed_model(config, weights):
    """A pack_tokens=True model holding `weights` ({original name: value})."""
    model = modeling.BertPretrainingModel(config, pack_tokens=True)
    model.build_weights()
    for name, variable in modeling.original_name_map(model).items():
        variable.assign(weights[name].astype(np.float32))
    return model


# Packed rows a multiple of 1: the real tokens only; of 5: the real tokens and 1 or 2 filler
# rows. (The default, 64, would pack all of these small batches.)
ROWS_MULTIPLES = [1, 5]


@pytest.mark.parametrize("multiple", ROWS_MULTIPLES)
def test_packed_tokens_match_the_numpy_reference(model_and_weights, monkeypatch, multiple):
    """Computed on the real tokens only, the heads' outputs are the padded model's: within
    the float32 tolerances against the float64 reference (padding in 2 of 3 sequences)."""
    monkeypatch.setattr(modeling, "PACKED_ROWS_MULTIPLE", multiple)
    model, weights = model_and_weights
    packed = packed_model(model.config, weights)
    features = batch(seq_length=10)
    outputs = {key: value.numpy() for key, value in packed(to_tensors(features)).items()}
    expected, tolerances = reference_and_tolerances(weights, model.config, features)
    assert_within(outputs, expected, tolerances, keys=["mlm_logits", "nsp_logits"])
    # The reference at a wrong (e.g. shifted) position is far off: the test can fail.
    shifted = dict(features, masked_lm_positions=(features["masked_lm_positions"] + 1) % 4)
    wrong = nb.forward(weights, model.config, shifted)["mlm_logits"]
    assert np.abs(wrong - outputs["mlm_logits"]).max() > 100 * tolerances["mlm_logits"]


@pytest.mark.parametrize("multiple", ROWS_MULTIPLES)
def test_packed_tokens_give_the_padded_models_gradients(model_and_weights, monkeypatch, multiple):
    """Every variable's gradient of a weighted loss over both heads, packed against padded.

    Tolerance as in test_output_positions_give_the_full_encoders_rows: float32 rounding
    along the backward chain, 1e-4 of each gradient's largest entry (the key biases' scale
    is the query bias's: theirs is 0 in exact arithmetic). A sequence of padding only (a
    padded final batch's row) is in the batch and weighted 0, as the trainer weights it."""
    monkeypatch.setattr(modeling, "PACKED_ROWS_MULTIPLE", multiple)
    model, weights = model_and_weights
    packed = packed_model(model.config, weights)
    features = batch(batch_size=4, seq_length=10)
    for key in ("input_mask", "input_ids", "segment_ids", "masked_lm_positions"):
        features[key][0] = 0  # 18 real tokens: at a multiple of 5, 2 filler rows in row 0
    example_weight = tf.constant([0.0, 1.0, 0.5, 2.0])
    upstream = tf.random.stateless_normal([4, 3, VOCAB], [5, 6])
    upstream_nsp = tf.random.stateless_normal([4, 2], [7, 8])
    tensors = to_tensors(features)
    gradients = {}
    for name, which in (("padded", model), ("packed", packed)):
        with tf.GradientTape() as tape:
            outputs = which(tensors)
            weighted = example_weight[:, tf.newaxis] * tf.reduce_sum(
                outputs["mlm_logits"] * upstream, axis=-1
            )
            loss = tf.reduce_sum(weighted) + tf.reduce_sum(
                example_weight * tf.reduce_sum(outputs["nsp_logits"] * upstream_nsp, axis=-1)
            )
        assert np.isfinite(loss.numpy()), name
        variables = which.trainable_variables
        by_variable = {id(v): g for v, g in zip(variables, tape.gradient(loss, variables))}
        gradients[name] = {
            original: tf.convert_to_tensor(by_variable[id(variable)]).numpy()
            for original, variable in modeling.original_name_map(which).items()
        }
    assert gradients["padded"].keys() == gradients["packed"].keys()
    for name, want in gradients["padded"].items():
        scale = np.abs(gradients["padded"][name.replace("/key/bias", "/query/bias")]).max()
        assert scale > 0, name
        got = gradients["packed"][name]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale, err_msg=name)


def test_packed_tokens_apply_their_dropout(monkeypatch):
    """The packed embeddings drop units at the configured rate and scale the rest; a packed
    layer's dropout follows the seed (training=True differs from inference and between
    seeds, and repeats for one seed)."""
    monkeypatch.setattr(modeling, "PACKED_ROWS_MULTIPLE", 1)
    config = tiny_config(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.0)
    model = modeling.BertPretrainingModel(config, pack_tokens=True)
    model.build_weights()
    randomize(model)
    features = to_tensors(batch())
    packing = modeling.token_packing(features["input_mask"])
    inputs = (features["input_ids"], features["segment_ids"])
    embeddings = model.encoder.embeddings
    kept = embeddings(*inputs, packing=packing).numpy()  # [T, H]
    dropped = embeddings(*inputs, packing=packing, training=True, dropout_seed=SEED).numpy()
    assert kept.shape == (18, 32)  # 8 + 6 + 4 real tokens
    zero = dropped == 0
    # 576 units, each dropped with probability 1/2: the fraction is 0.5 ± 0.021 (1 sd).
    assert 0.4 < zero.mean() < 0.6
    # Kept units are x·1·(1/(1 − 0.5)) = 2x: every factor exact, so equal up to at most one
    # rounding however the product is formed (rtol 2·u32 ≈ 1.2e-7).
    np.testing.assert_allclose(dropped[~zero], 2 * kept[~zero], rtol=2 * nb.U32)

    layer = model.encoder.layer_0
    bias = modeling.attention_bias_from_mask(features["input_mask"])

    def layer_output(**kwargs):
        return layer(tf.constant(kept), bias, packing=packing, **kwargs).numpy()

    inference = layer_output()
    first = layer_output(training=True, dropout_seed=SEED)
    np.testing.assert_array_equal(first, layer_output(training=True, dropout_seed=SEED))
    assert np.abs(first - inference).max() > 0.1  # rounding is below 1e-4 here
    assert np.abs(first - layer_output(training=True, dropout_seed=SEED + 1)).max() > 0.1


def test_sequence_longer_than_position_table_raises(model_and_weights):
    model, _ = model_and_weights
    features = batch(seq_length=17)
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        run_model(model, features)


def test_gelu_variants_match_their_formulas():
    x = np.linspace(-6.0, 6.0, 241)
    tanh_gelu = modeling.get_activation("gelu")(tf.constant(x)).numpy()
    exact_gelu = modeling.get_activation("gelu_exact")(tf.constant(x)).numpy()
    # Both sides in float64 (u64 = 2^-53): about 8 operations (x³, products, a sum, tanh
    # or erf, 1 + ·, 0.5·x·), each within 4 ulps (≤ 8·u64 relative; libm's and Eigen's
    # tanh and erf) of values of size ≤ 1 + |x| (0.5·x times a factor in [0, 2]; the
    # tanh argument's error is damped by tanh' ≤ 1): |error| ≤ 8·8·u64·(1 + |x|)
    # ≈ 7e-15·(1 + |x|); measured: ≤ 2·u64·(1 + |x|). A swap errs by up to 4.7e-4.
    tolerance = 64 * 2.0**-53 * (1 + np.abs(x))
    assert (np.abs(tanh_gelu - nb.gelu_tanh(x)) <= tolerance).all()
    assert (np.abs(exact_gelu - nb.gelu_erf(x)) <= tolerance).all()
    assert np.abs(tanh_gelu - exact_gelu).max() > 1e-4  # a swap would fail the lines above
    assert modeling.get_activation("gelu_new") is modeling.get_activation("gelu")
    np.testing.assert_array_equal(modeling.get_activation("linear")(tf.constant(x)).numpy(), x)
    np.testing.assert_array_equal(
        modeling.get_activation("relu")(tf.constant(x)).numpy(), x.clip(0)
    )
    with pytest.raises(ValueError, match="'swish'.*'gelu_exact'"):
        modeling.get_activation("swish")


@pytest.mark.parametrize("name, formula", [("gelu", nb.gelu_tanh), ("gelu_exact", nb.gelu_erf)])
def test_gelu_gradients_match_finite_differences(name, formula):
    # The GELUs' derivatives are written by hand (tf.custom_gradient); check them against
    # central differences of the NumPy formulas, in float64. Step h = 1e-5: truncation
    # h²/6·max|f‴| ≤ 1e-10, rounding about u64·(1 + |x|)/h ≤ 1e-10 for |x| ≤ 6: 1e-8 is a
    # safe bound, and a wrong derivative term (e.g. a dropped 3·0.044715·x²) errs by 1e-2.
    x = np.linspace(-6.0, 6.0, 241)
    h = 1e-5
    numeric = (formula(x + h) - formula(x - h)) / (2 * h)
    upstream = np.linspace(-2.0, 3.0, x.size)  # the incoming gradient multiplies through
    xs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = modeling.get_activation(name)(xs)
    analytic = tape.gradient(y, xs, output_gradients=tf.constant(upstream)).numpy()
    np.testing.assert_allclose(analytic, upstream * numeric, rtol=0, atol=3 * 1e-8)


# Unit roundoffs of the half types (float16: 11 significant bits).
HALF_ROUNDOFF = {"bfloat16": nb.U_BF16, "float16": 2.0**-11}


def assert_rounded_once(actual, exact, float32_error, half):
    """`actual` (half precision) is a float32 result within `float32_error` of `exact`,
    rounded once to the half type: |actual − exact| ≤ u·(|exact| + e) + e, u the half
    type's unit roundoff. Rounding every intermediate to the half type errs by several u.
    """
    u = HALF_ROUNDOFF[half]
    error = np.abs(np.asarray(actual, np.float64) - exact)
    bound = u * (np.abs(exact) + float32_error) + float32_error
    assert (error <= bound).all(), (error / np.maximum(bound, 1e-300)).max()


@pytest.mark.parametrize("execution", ["graph", "xla"])
@pytest.mark.parametrize("half", HALF_ROUNDOFF)
def test_half_precision_gelu_rounds_once(half, execution):
    """The GELU computes half-precision inputs in float32 and rounds its result (and the
    gradient with respect to its input) once, in a step XLA compiles or not."""
    dtype = HALF_TYPES[half]
    rng = np.random.default_rng(7)
    # Inputs exactly representable in the half type, so the float64 reference sees the
    # same numbers.
    x = tf.cast(rng.normal(0.5, 3.0, (64, 48)), dtype)
    dy = tf.cast(rng.normal(0.0, 1.0, (64, 48)), dtype)
    x64, dy64 = x.numpy().astype(np.float64), dy.numpy().astype(np.float64)

    def run(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = modeling.gelu(x)
        return y, tape.gradient(y, x, output_gradients=dy)

    y, dx = tf.function(run, jit_compile=execution == "xla", autograph=False)(x, dy)
    assert y.dtype == dx.dtype == dtype
    # About 8 float32 operations on values of size ≤ 1 + |x| (see
    # test_gelu_variants_match_their_formulas), each within a few ulps: 64·U32·(1 + |x|);
    # the gradient's slope is below 1.13, times |dy|.
    float32_error = 64 * nb.U32 * (1 + np.abs(x64))
    assert_rounded_once(y, nb.gelu_tanh(x64), float32_error, half)
    exact_dx = dy64 * nb.gelu_tanh_derivative(x64)
    assert_rounded_once(dx, exact_dx, float32_error * (1 + np.abs(dy64)), half)


def test_hidden_act_reaches_the_model():
    config = tiny_config(hidden_act="gelu_exact")
    model = built_model(config)
    weights = randomize(model)
    features = batch()
    outputs = run_model(model, features)
    expected, tolerances = reference_and_tolerances(
        weights, config, features, activation=nb.gelu_erf
    )
    assert_within(outputs, expected, tolerances)
    # The two GELUs differ by at most 4.7e-4 per value, so the tanh reference is only a
    # few tolerances away (6× here); outside them, so the test tells the two apart.
    tanh_reference = nb.forward(weights, config, features)["sequence_output"]
    difference = np.abs(outputs["sequence_output"] - tanh_reference).max()
    assert difference > 2 * tolerances["sequence_output"]


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
    # Logit t is fl(fl(h·e_t) + b_t). Columns source and target hold the same dot product
    # h·e_source, but a GEMM may block columns differently, so each of the two float32
    # dot products errs by ≤ H·U32·Σ|h_i·e_i| (Higham's γ_H), and each bias sum rounds
    # once: |difference| ≤ (2H + 2)·U32·(Σ|h_i·e_i| + |b_source| + |b_target|).
    hidden = nb.forward(weights, model.config, features)["mlm_hidden"]  # [B, P, H]
    scale = np.abs(hidden) @ np.abs(table[source]) + abs(bias[source]) + abs(bias[target])
    tolerance = (2 * model.config.hidden_size + 2) * nb.U32 * scale
    expected = before[..., source] - bias[source] + bias[target]
    assert (np.abs(after[..., target] - expected) <= tolerance).all()
    # Exact by construction: h·0 = 0 exactly, and 0 + b = b; the other columns compute the
    # same float32 operations on the same values as before (same shapes, same kernels).
    np.testing.assert_array_equal(
        after[..., zeroed], np.broadcast_to(np.float32(bias[zeroed]), after.shape[:2])
    )
    others = [t for t in range(VOCAB) if t not in (target, zeroed)]
    np.testing.assert_array_equal(after[..., others], before[..., others])


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

    wide = logits.astype(np.float64)  # the reference in float64: only TF's side rounds
    log_probs = wide - np.log(np.exp(wide).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, ids[..., None], -1)[..., 0]
    assert sums["loss_sum"].dtype == tf.float32
    # ≈ 1.3e-5 here (V = 4, logit spreads ≤ 10.4, Σ weight = 3.5); see the helper.
    tolerance = nb.cross_entropy_sum_tolerance(wide, weights)
    assert abs(float(sums["loss_sum"]) - (nll * weights).sum()) <= tolerance
    # Sums of a few halves and ones: exact in float32.
    assert float(sums["weight_sum"]) == 3.5
    # Correct: [0,0] (argmax 0) and [1,0] (argmax 3) with weight 1; [1,1] is argmax 0 with
    # weight 0.5; [0,2] is right but weighs 0.
    assert float(sums["correct_sum"]) == 2.5


def test_masked_lm_gradient_and_ties_match_numpy():
    # The loss, accuracy and gradient come from one compiled function with a written-out
    # gradient: check the gradient of Σ weight·cross-entropy against float64.
    rng = np.random.default_rng(7)
    vocab = 50
    logits = (3.0 * rng.standard_normal([2, 4, vocab])).astype(np.float32)
    logits[1, 2, [5, 9]] = logits[1, 2].max() + 1.0  # a tie: the first maximum counts
    ids = rng.integers(0, vocab, [2, 4]).astype(np.int32)
    ids[0, 0] = int(np.argmax(logits[0, 0]))  # one right prediction
    ids[1, 2] = 9  # the second of the tied maxima: not counted as right
    weights = np.array([[1.0, 1.0, 0.5, 0.0], [1.0, 0.0, 1.0, 1.0]], np.float32)
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits_t)
        sums = modeling.masked_lm_sums(logits_t, tf.constant(ids), tf.constant(weights))
    gradient = tape.gradient(sums["loss_sum"], logits_t).numpy()

    wide = logits.astype(np.float64)
    probs = np.exp(wide - wide.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = weights[..., None] * (probs - np.eye(vocab)[ids])
    # Each probability errs by ≤ (V + spread + 6)·U32 relative: the shift by the row's
    # max (≤ spread·U32 inside exp), exp (a few ulps), a sum of V terms, the division;
    # the subtraction of the one-hot and the product with the weight add 2·U32·|g|.
    spread = (wide.max(-1) - wide.min(-1))[..., None]
    bound = weights[..., None] * probs * (vocab + spread + 6) * nb.U32 + 2 * nb.U32 * abs(expected)
    assert np.all(abs(gradient - expected) <= bound)
    predicted = np.array([[list(row).index(row.max()) for row in batch] for batch in logits])
    assert float(sums["correct_sum"]) == float((weights * (predicted == ids)).sum())
    assert predicted[1, 2] == 5 and ids[1, 2] == 9  # the tie above is counted as wrong


def test_masked_lm_loss_of_an_id_outside_the_vocabulary_or_of_non_finite_logits_is_nan():
    # What TensorFlow's own kernel gives on CPUs; a NaN loss makes the step skip its update.
    logits = tf.zeros([1, 2, 6])
    sums = modeling.masked_lm_sums(logits, tf.constant([[1, 6]]), tf.constant([[1.0, 1.0]]))
    assert math.isnan(float(sums["loss_sum"]))
    sums = modeling.masked_lm_sums(logits, tf.constant([[1, -1]]), tf.constant([[1.0, 1.0]]))
    assert math.isnan(float(sums["loss_sum"]))
    # A non-finite logit anywhere in a row makes that row's loss NaN too.
    for bad in (math.nan, math.inf):
        row = tf.constant([[[0.0, 1.0, bad, 0.0, 0.0, 0.0], [0.0] * 6]])
        sums = modeling.masked_lm_sums(row, tf.constant([[1, 1]]), tf.constant([[1.0, 1.0]]))
        assert math.isnan(float(sums["loss_sum"]))


@pytest.mark.parametrize("label_shape", [(4,), (4, 1)])
def test_next_sentence_sums_matches_numpy(label_shape):
    logits = np.array([[2.0, -1.0], [0.0, 0.5], [3.0, 3.5], [-2.0, -4.0]], np.float32)
    labels = np.array([0, 0, 1, 1], np.int32)
    sums = modeling.next_sentence_sums(
        tf.constant(logits), tf.constant(labels.reshape(label_shape))
    )
    wide = logits.astype(np.float64)  # the reference in float64: only TF's side rounds
    log_probs = wide - np.log(np.exp(wide).sum(-1, keepdims=True))
    nll = -log_probs[np.arange(4), labels]
    tolerance = nb.cross_entropy_sum_tolerance(wide, np.ones(4))  # ≈ 5e-6
    assert abs(float(sums["loss_sum"]) - nll.sum()) <= tolerance
    # Counts of whole examples: exact.
    assert float(sums["count"]) == 4.0
    assert float(sums["correct_sum"]) == 2.0  # examples 0 and 2

    weights = np.array([1.0, 0.0, 0.0, 1.0], np.float32)  # two padding examples
    weighted = modeling.next_sentence_sums(
        tf.constant(logits), tf.constant(labels.reshape(label_shape)), tf.constant(weights)
    )
    tolerance = nb.cross_entropy_sum_tolerance(wide, weights)
    assert abs(float(weighted["loss_sum"]) - (nll[0] + nll[3])) <= tolerance
    assert float(weighted["count"]) == 2.0
    assert float(weighted["correct_sum"]) == 1.0


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
# Initial weights
# ---------------------------------------------------------------------------------------

# Keras' TruncatedNormal(stddev=s) draws N(0, s²) and redraws values beyond 2s
# (tf.random.stateless_truncated_normal), without rescaling. For X ~ N(0, 1) truncated to
# [-a, a], with φ the normal density and Z = erf(a/√2) = P(|X| < a), integrating by parts:
#   E[X²] = 1 - 2aφ(a)/Z,  E[X⁴] = 3 - (6a + 2a³)φ(a)/Z,  P(|X| > 1 | |X| < a) = 1 - erf(1/√2)/Z.
_PHI_2 = math.exp(-2.0) / math.sqrt(2.0 * math.pi)
_Z_2 = math.erf(2.0 / math.sqrt(2.0))
TRUNCATED_SECOND_MOMENT = 1.0 - 4.0 * _PHI_2 / _Z_2  # 0.7737
TRUNCATED_FOURTH_MOMENT = 3.0 - 28.0 * _PHI_2 / _Z_2  # 1.4162
TRUNCATED_BEYOND_ONE_STDDEV = 1.0 - math.erf(1.0 / math.sqrt(2.0)) / _Z_2  # 0.2848


def initial_weights(seed, config):
    keras.utils.set_random_seed(seed)  # what the trainer does with --seed
    return {name: v.numpy() for name, v in modeling.original_name_map(built_model(config)).items()}


@pytest.mark.parametrize("dtype", [None, "mixed_bfloat16"])
def test_build_weights_makes_the_variables_a_first_call_makes(dtype, monkeypatch):
    # build_weights creates the variables from the config, without tracing the model;
    # Keras, left alone (the layers' build methods it would not have without ours),
    # creates them by tracing the first call. Both ways, with the same seed, must give the
    # same variables: names, shapes, dtypes, autocasting, values (the initializers draw
    # in creation order, so a change of order changes the values).
    def made(by_call):
        keras.utils.set_random_seed(5)
        model = modeling.BertPretrainingModel(tiny_config(), dtype=dtype)
        if by_call:
            ids = tf.zeros([1, 1], tf.int32)
            features = dict(input_ids=ids, input_mask=ids + 1, segment_ids=ids)
            model(dict(features, masked_lm_positions=ids))
        else:
            model.build_weights()
        return model.weights

    with monkeypatch.context() as keras_alone:
        for layer in (modeling.TransformerLayer, modeling.BertEncoder):
            keras_alone.setattr(layer, "build", keras.layers.Layer.build)
        keras_alone.setattr(modeling.BertPretrainingModel, "build", keras.Model.build)
        by_call = made(by_call=True)
    built = made(by_call=False)
    assert [v.path for v in built] == [v.path for v in by_call]
    for a, b in zip(by_call, built):
        assert (a.shape, a.dtype, a._autocast) == (b.shape, b.dtype, b._autocast), a.path
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # Embeddings (3 tables, LayerNorm), 2 layers of 16, pooler, MLM head (transform,
    # LayerNorm, output bias), NSP head.
    assert len(built) == 5 + 2 * 16 + 2 + 5 + 2


def test_initial_weights_are_the_originals():
    # A non-default initializer_range (the original's is 0.02), and sizes that give
    # 4096-32768 samples per matrix (128 for the [2, H] ones), built in about a second.
    stddev = 0.05
    config = tiny_config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        max_position_embeddings=64,
        initializer_range=stddev,
    )
    weights = initial_weights(7, config)
    # The documented "std ≈ 0.8796·s" of a 2σ-truncated normal, from the moments above.
    assert math.sqrt(TRUNCATED_SECOND_MOMENT) == pytest.approx(0.8796, abs=1e-4)
    random_names = []
    for name, value in weights.items():
        if name.endswith(("bias", "beta")):  # dense biases, both heads' output biases
            np.testing.assert_array_equal(value, 0.0, err_msg=name)
        elif name.endswith("gamma"):
            np.testing.assert_array_equal(value, 1.0, err_msg=name)
        else:  # kernels, embedding tables, the NSP output weights
            random_names.append(name)
            x = value.astype(np.float64).ravel()
            n = x.size
            variance = stddev**2 * TRUNCATED_SECOND_MOMENT
            # Sample statistics of n independent draws, each allowed 5 of its standard
            # deviations (CLT; about 1 in 2 million per check): the mean (std σ/√n), the
            # mean of x² (std sqrt((E[x⁴] - σ⁴)/n)) and the fraction of |x| > s (binomial).
            # With n = 4096 the mean square is held to ±9%: an untruncated N(0, s²) (+29%),
            # a uniform of the same std (28.5% → 34.3% beyond s), initializer_range
            # ignored (the default 0.02: -84%) all fail; truncation is checked directly.
            fourth = stddev**4 * TRUNCATED_FOURTH_MOMENT
            assert abs(x.mean()) <= 5 * math.sqrt(variance / n), name
            assert abs((x**2).mean() - variance) <= 5 * math.sqrt((fourth - variance**2) / n), name
            p = TRUNCATED_BEYOND_ONE_STDDEV
            beyond = (np.abs(x) > stddev).mean()
            assert abs(beyond - p) <= 5 * math.sqrt(p * (1 - p) / n), name
            # Drawn in float32 as z·s with |z| < 2: at most one rounding above 2s.
            assert np.abs(x).max() <= 2 * stddev * (1 + nb.U32), name
    assert len(random_names) == 3 + 6 * config.num_hidden_layers + 3  # tables, kernels, NSP
    # Every matrix is its own draw (no initializer reused with one fixed seed).
    for i, a in enumerate(random_names):
        for b in random_names[:i]:
            assert weights[a].shape != weights[b].shape or not np.array_equal(
                weights[a], weights[b]
            ), (a, b)

    again = initial_weights(7, config)
    other = initial_weights(8, config)
    for name in weights:
        np.testing.assert_array_equal(again[name], weights[name], err_msg=name)
        if name in random_names:
            assert not np.array_equal(other[name], weights[name]), name


# ---------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------

SEED = tf.constant([12, 34], tf.int64)


def test_dropout_is_a_function_of_the_seed(model_and_weights):
    model, weights = model_and_weights
    features = batch()
    tolerances = reference_and_tolerances(weights, model.config, features)[1]
    inference = run_model(model, features)
    first = run_model(model, features, training=True, dropout_seed=SEED)
    again = run_model(model, features, training=True, dropout_seed=tf.constant([12, 34]))
    other = run_model(model, features, training=True, dropout_seed=tf.constant([12, 35]))
    for key in ("mlm_logits", "nsp_logits", "sequence_output"):
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
        # Other masks change the outputs by far more than float32 rounding could.
        assert np.abs(first[key] - other[key]).max() > 100 * tolerances[key], key
        assert np.abs(first[key] - inference[key]).max() > 100 * tolerances[key], key
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


@pytest.mark.parametrize("masks", modeling.DROPOUT_MASKS)
def test_stateless_dropout_rate_scaling_and_independence(masks):
    layer = modeling.StatelessDropout(0.3, site=5, masks=masks)
    x = tf.ones([200, 100])
    y = layer(x, training=True, dropout_seed=SEED).numpy()
    dropped = y == 0

    def near(fraction, p, count):
        # `count` Bernoulli(p) draws: the fraction has std sqrt(p·(1 − p)/count); allow 5.
        return abs(fraction - p) <= 5 * math.sqrt(p * (1 - p) / count)

    # n = 20000 draws, std 0.0032 (a wrong rate, e.g. the keep rate 0.7, is 120 std away).
    n = dropped.size
    assert near(dropped.mean(), 0.3, n)
    # 1·1·(1/0.7): at most two float32 roundings (of 1/(1 - rate), however it is formed).
    np.testing.assert_allclose(y[~dropped], 1 / 0.7, rtol=2 * nb.U32)
    # Neighbours (along a row, and the same column of the next row) are both dropped
    # with probability 0.3² = 0.09 when independent; an index that leaked into the bits
    # unmixed would correlate them.
    assert near((dropped[:, 1:] & dropped[:, :-1]).mean(), 0.09, dropped[:, 1:].size)
    assert near((dropped[1:] & dropped[:-1]).mean(), 0.09, dropped[1:].size)
    # Independent masks differ at a fraction 2·0.3·0.7 = 0.42 of the units (std 0.0035);
    # masks shared between sites, or between seeds, would differ nowhere.
    for site, seed in ((6, SEED), (5, SEED + [0, 1]), (5, SEED + [1, 0])):
        other = modeling.StatelessDropout(0.3, site=site, masks=masks)
        differ = (other(x, training=True, dropout_seed=seed).numpy() == 0) != dropped
        assert near(differ.mean(), 0.42, n), (site, seed)


def numpy_hash_bits(shape, key):
    """modeling.hash_mask_bits in NumPy, given its key words (k0, k1): uint32 arithmetic."""

    def mix(x):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))

    k0, k1 = key
    index = np.arange(np.prod(shape), dtype=np.uint32)
    return mix(mix(index + k0) ^ k1).reshape(shape)


def test_hash_masks_match_a_numpy_reference_with_and_without_xla():
    rate = 0.1
    layer = modeling.StatelessDropout(rate, site=7, masks="hash")
    x = tf.constant(np.random.default_rng(3).normal(size=(4, 3, 5, 6)), tf.float32)
    # The key words: two full-range uint32 Philox draws from the site's folded-in seed.
    site_seed = tf.random.experimental.stateless_fold_in(SEED, 7, alg="philox")
    key = tf.random.stateless_uniform([2], site_seed, None, None, tf.uint32, alg="philox").numpy()
    keep = numpy_hash_bits(x.shape, key) >= np.uint32(round(rate * 2**32))
    # x·keep·(1/(1 − rate)): the product with keep (0 or 1) is exact, the other rounds
    # once, and 1/0.9 is itself rounded: two roundings.
    expected = x.numpy() * keep * np.float32(1 / (1 - rate))
    eager = layer(x, training=True, dropout_seed=SEED).numpy()
    compiled = tf.function(lambda x: layer(x, training=True, dropout_seed=SEED), jit_compile=True)(
        x
    ).numpy()
    for y in (eager, compiled):
        np.testing.assert_array_equal(y == 0, ~keep)
        np.testing.assert_allclose(y, expected, rtol=2 * nb.U32, atol=0)
    assert 0 < (~keep).sum() < keep.size  # this seed drops some units, not all
    # The gradient: upstream·keep·(1/(1 − rate)), two roundings as in the forward pass.
    upstream = tf.constant(np.random.default_rng(4).normal(size=x.shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, training=True, dropout_seed=SEED) * upstream)
    want = upstream.numpy() * keep * np.float32(1 / (1 - rate))
    np.testing.assert_allclose(tape.gradient(loss, x), want, rtol=2 * nb.U32, atol=0)
    # In bfloat16: the same mask.
    half = modeling.StatelessDropout(rate, site=7, masks="hash", dtype="mixed_bfloat16")
    y = half(tf.cast(x, tf.bfloat16), training=True, dropout_seed=SEED).numpy()
    np.testing.assert_array_equal(y == 0, ~keep)
    with pytest.raises(ValueError, match="masks='cheap'"):
        modeling.StatelessDropout(rate, site=7, masks="cheap")
    # A mask of 2³¹ elements would wrap the int32 index: refused when traced (nothing of
    # that size is allocated to find out).
    huge = tf.TensorSpec([2**16, 2**15], tf.float32)
    step = tf.function(lambda x: layer(x, training=True, dropout_seed=SEED))
    with pytest.raises(ValueError, match="2147483648 elements in one mask.*--batch_size"):
        step.get_concrete_function(huge)


@pytest.mark.parametrize("masks", modeling.DROPOUT_MASKS)
@pytest.mark.parametrize("execution", ["graph", "xla"])
@pytest.mark.parametrize("half", HALF_ROUNDOFF)
def test_half_precision_dropout_scales_in_float32(half, execution, masks):
    """A kept unit is x/(1 − rate) rounded once to the half type, forward and backward:
    not x times 1/(1 − rate) rounded to the half type first (bfloat16: 1.109375 for
    1.1111 at rate 0.1, 0.16% short; float16: 1.111328), as `x * (1 / (1 - rate))` is."""
    dtype = HALF_TYPES[half]
    rate = 0.1
    layer = modeling.StatelessDropout(rate, site=3, masks=masks, dtype=f"mixed_{half}")
    rng = np.random.default_rng(11)
    # Exactly representable in the half type, so the float64 reference sees these numbers
    # (and none is 0, so a 0 out is a dropped unit).
    x = tf.cast(rng.normal(0.0, 3.0, (64, 48)), dtype)
    dy = tf.cast(rng.normal(0.0, 1.0, (64, 48)), dtype)

    def run(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True, dropout_seed=SEED)
        return y, tape.gradient(y, x, output_gradients=dy)

    y, dx = tf.function(run, jit_compile=execution == "xla", autograph=False)(x, dy)
    assert y.dtype == dx.dtype == dtype
    if masks == "hash":  # the mask itself, from NumPy
        site_seed = tf.random.experimental.stateless_fold_in(SEED, 3, alg="philox")
        key = tf.random.stateless_uniform([2], site_seed, None, None, tf.uint32, alg="philox")
        keep = numpy_hash_bits(x.shape, key.numpy()) >= np.uint32(round(rate * 2**32))
    else:  # Philox's stream is not reproduced here: the units kept are those not zeroed
        keep = y.numpy() != 0
    assert 0 < (~keep).sum() < keep.size
    for actual, values in ((y, x), (dx, dy)):
        exact = np.where(keep, values.numpy().astype(np.float64) / (1.0 - rate), 0.0)
        np.testing.assert_array_equal(actual.numpy() == 0, ~keep)
        # In float32: 1/(1 − rate) and the product each round once.
        assert_rounded_once(actual, exact, 2 * nb.U32 * np.abs(exact), half)


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


def loss_and_gradients_step(model, labels, jit_compile):
    """(features, seed, training) → (outputs, loss, gradients) of the pretraining loss."""

    @tf.function(jit_compile=jit_compile)
    def step(features, seed, training):
        with tf.GradientTape() as tape:
            outputs = model(features, training=training, dropout_seed=seed)
            mlm = modeling.masked_lm_sums(
                outputs["mlm_logits"], labels["masked_lm_ids"], labels["masked_lm_weights"]
            )
            nsp = modeling.next_sentence_sums(outputs["nsp_logits"], labels["next_sentence_labels"])
            loss = mlm["loss_sum"] / mlm["weight_sum"] + nsp["loss_sum"] / nsp["count"]
        return outputs, loss, tape.gradient(loss, model.trainable_variables)

    return step


def assert_loss_and_gradients_match_numpy(model, weights, features, labels, loss, gradients):
    """The loss and every gradient against the hand-written NumPy backward pass."""
    expected, tolerances = reference_and_tolerances(weights, model.config, features)
    labelled = dict(
        features,
        masked_lm_ids=labels["masked_lm_ids"].numpy(),
        masked_lm_weights=labels["masked_lm_weights"].numpy(),
        next_sentence_labels=labels["next_sentence_labels"].numpy().ravel(),
        example_weight=np.ones(3),
    )
    reference = nb.pretraining_loss_and_gradients(weights, model.config, labelled)
    mlm_weights = labels["masked_lm_weights"].numpy()
    loss_tolerance = (
        nb.cross_entropy_sum_tolerance(
            expected["mlm_logits"], mlm_weights, tolerances["mlm_logits"]
        )
        / mlm_weights.sum()
        + nb.cross_entropy_sum_tolerance(
            expected["nsp_logits"], np.ones(3), tolerances["nsp_logits"]
        )
        / 3
    )
    assert abs(float(loss) - reference["loss"]) <= loss_tolerance
    gradient_tolerances = nb.gradient_tolerances(model.config, features, reference["term_scales"])
    names = {id(v): name for name, v in modeling.original_name_map(model).items()}
    for variable, gradient in zip(model.trainable_variables, gradients):
        name = names[id(variable)]
        error = np.abs(tf.convert_to_tensor(gradient).numpy() - reference["gradients"][name])
        assert (error <= gradient_tolerances[name]).all(), (name, error.max())


def test_training_step_compiles_with_xla(model_and_weights):
    model, weights = model_and_weights
    features = batch()
    labels = labels_for(features)
    step = loss_and_gradients_step(model, labels, jit_compile=True)
    tensors = to_tensors(features)
    outputs, loss, gradients = step(tensors, SEED, False)
    eager = model(tensors)
    # XLA fuses and reorders the float32 sums; its outputs are within the float32 bound of
    # the float64 reference, like the uncompiled model's, so the two differ by at most
    # twice the bound (each side's error).
    keys = ("mlm_logits", "nsp_logits")
    expected, tolerances = reference_and_tolerances(weights, model.config, features)
    assert_within(outputs, expected, tolerances, keys)
    assert_within(outputs, {k: eager[k].numpy() for k in keys}, tolerances, keys, factor=2)
    assert_loss_and_gradients_match_numpy(model, weights, features, labels, loss, gradients)

    first = step(tensors, SEED, True)
    again = step(tensors, SEED, True)
    np.testing.assert_array_equal(first[0]["mlm_logits"], again[0]["mlm_logits"])
    difference = np.abs(first[0]["mlm_logits"] - outputs["mlm_logits"]).max()
    assert difference > 100 * tolerances["mlm_logits"]


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager_graph", "xla"])
def test_column_sums_by_matmul_match_the_numpy_backward_pass(model_and_weights, jit_compile):
    # The same weights in a model whose bias and LayerNorm gradients are products with
    # ones: its outputs, loss and gradients within the float32 bounds of the reference.
    model, weights = model_and_weights
    by_matmul = modeling.BertPretrainingModel(model.config, column_sums="matmul")
    by_matmul.build_weights()
    for name, variable in modeling.original_name_map(by_matmul).items():
        variable.assign(weights[name].astype(np.float32))
    layer = by_matmul.encoder.layer_0
    assert layer.intermediate.column_sums == layer.ffn_layer_norm.column_sums == "matmul"
    features = batch()
    labels = labels_for(features)
    step = loss_and_gradients_step(by_matmul, labels, jit_compile)
    outputs, loss, gradients = step(to_tensors(features), SEED, False)
    expected, tolerances = reference_and_tolerances(weights, model.config, features)
    assert_within(outputs, expected, tolerances, ("mlm_logits", "nsp_logits"))
    assert_loss_and_gradients_match_numpy(by_matmul, weights, features, labels, loss, gradients)


@pytest.mark.parametrize("method", modeling.COLUMN_SUMS)
def test_column_sums_helpers_against_numpy(method):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)

    def assert_sum_of(actual, terms):
        # A float32 sum of n terms (each formed with at most one rounding) is within
        # (n + 1)·U32·Σ|terms| of the exact sum, whatever the order (Higham, ch. 4).
        terms = np.asarray(terms, np.float64).reshape(-1, terms.shape[-1])
        bound = (len(terms) + 1) * nb.U32 * np.abs(terms).sum(axis=0)
        assert (np.abs(np.asarray(actual, np.float64) - terms.sum(axis=0)) <= bound).all()

    assert_sum_of(modeling.column_sums(tf.constant(x), method), x)
    # Float64 stays float64 (only half types are cast up): (n + 1)·2⁻⁵³·Σ|terms|.
    doubles = modeling.column_sums(tf.constant(x, tf.float64), method)
    error = np.abs(doubles.numpy() - x.astype(np.float64).sum(axis=(0, 1)))
    assert doubles.dtype == tf.float64
    assert (error <= 11 * 2.0**-53 * np.abs(x).sum(axis=(0, 1))).all()
    # Half precision in, half precision out: 1 + 256 · 2⁻⁹ = 1.5 is exact in bfloat16,
    # where a running sum with its 8 significant bits would stay at 1.
    halves = tf.constant([[1.0]] + [[2.0**-9]] * 256, tf.bfloat16)
    summed = modeling.column_sums(halves, method)
    assert summed.dtype == tf.bfloat16 and float(summed[0]) == 1.5

    bias, scale, offset, dy = (
        rng.normal(size=shape).astype(np.float32) for shape in ((4,), (4,), (4,), (2, 5, 4))
    )
    with tf.GradientTape(persistent=True) as tape:
        variables = [tf.constant(v) for v in (x, bias, scale, offset)]
        tape.watch(variables)
        x_t, bias_t, scale_t, offset_t = variables
        shifted = modeling.add_bias(x_t, bias_t, method)
        affine = modeling.scale_and_offset(x_t, scale_t, offset_t, method)
    # One float32 rounding: x + bias and dy·scale are exact to the float32 result; the
    # affine map rounds twice (or once, fused): within 3·U32·(|x·scale| + |offset|) (two
    # roundings, 2·U32, and their second-order term, far below the third).
    np.testing.assert_array_equal(shifted, x + bias)
    affine_error = np.abs(
        affine.numpy().astype(np.float64) - (x.astype(np.float64) * scale + offset)
    )
    assert (affine_error <= 3 * nb.U32 * (np.abs(x * scale) + np.abs(offset))).all()
    grads = tape.gradient(shifted, [x_t, bias_t], output_gradients=tf.constant(dy))
    np.testing.assert_array_equal(grads[0], dy)
    assert_sum_of(grads[1], dy)
    grads = tape.gradient(affine, [x_t, scale_t, offset_t], output_gradients=tf.constant(dy))
    np.testing.assert_array_equal(grads[0], dy * scale)
    assert_sum_of(grads[1], dy.astype(np.float64) * x)
    assert_sum_of(grads[2], dy)

    with pytest.raises(ValueError, match="column_sums='sum'.*reduce.*matmul"):
        modeling.BertPretrainingModel(tiny_config(), column_sums="sum")
    with pytest.raises(ValueError, match="column_sums='sum'.*reduce.*matmul"):
        modeling.column_sums(tf.constant(x), "sum")
    with pytest.raises(ValueError, match="use_bias=True"):
        modeling.Dense(4, "matmul", use_bias=False)
    with pytest.raises(ValueError, match="rms_scaling"):
        modeling.LayerNorm("matmul", rms_scaling=True)
    for layer in (modeling.Dense(4, "matmul"), modeling.LayerNorm("matmul")):
        again = type(layer).from_config(layer.get_config())
        assert again.column_sums == "matmul"
    assert modeling.LayerNorm().epsilon == modeling.LAYER_NORM_EPSILON


HALF_TYPES = {"bfloat16": tf.bfloat16, "float16": tf.float16}


@pytest.mark.parametrize("execution", ["eager", "graph", "xla"])
@pytest.mark.parametrize("method", modeling.COLUMN_SUMS)
@pytest.mark.parametrize("half", HALF_TYPES)
def test_bias_gradient_in_half_precision_is_the_float32_sum(
    restore_dtype_policy, half, method, execution
):
    # Under a mixed policy the gradient reaching the bias is in the half type; summed in
    # float32 (by either method) and handed to the float32 bias as it is, it is within
    # n·U32·Σ|terms| of the exact sum of the n = 2,048 half values (Higham, ch. 4), far
    # inside one rounding to the half type (u = 2⁻⁸ for bfloat16, 2⁻¹¹ for float16). The
    # CPU kernel of tf.nn.bias_add's gradient (Keras's Dense) sums bfloat16 in bfloat16:
    # with 8 significant bits a running sum near 1,000 drops terms near 1 (29% low here;
    # Keras's Dense fails "eager" and "graph" in bfloat16; XLA's lowering sums in
    # float32). TensorFlow's CPU reduce_sum, given float16, is off by several float16
    # roundings too. The inputs are arguments of the compiled function: were they
    # captured constants, TensorFlow would fold the gradient with its own CPU kernels
    # before XLA saw it.
    dtype = HALF_TYPES[half]
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(size=(16, 128, 8)), tf.float32)
    upstream = (rng.normal(size=(16, 128, 8)) + 0.5).astype(np.float32)
    dense = modeling.Dense(8, method, dtype=f"mixed_{half}")
    dense.build(x.shape)

    def bias_gradient(x, upstream):
        with tf.GradientTape() as tape:
            y = dense(x)
        assert y.dtype == dtype
        (gradient,) = tape.gradient(y, [dense.bias], output_gradients=upstream)
        return gradient

    if execution != "eager":
        bias_gradient = tf.function(bias_gradient, jit_compile=execution == "xla")
    bias_grad = bias_gradient(x, tf.constant(upstream, dtype))
    assert bias_grad.dtype == tf.float32
    rounded = tf.cast(tf.cast(upstream, dtype), tf.float64).numpy()
    exact = rounded.sum(axis=(0, 1))
    bound = 2048 * nb.U32 * np.abs(rounded).sum(axis=(0, 1))
    assert (np.abs(bias_grad.numpy() - exact) <= bound).all()


def test_every_dense_layer_of_the_model_sums_its_bias_gradient_in_float32():
    # Keras's own Dense adds its bias with tf.nn.bias_add, whose gradient's CPU kernel
    # (BiasAddGrad) sums bfloat16 in bfloat16 (the test above fails with it): the model's
    # dense layers must all be modeling.Dense.
    model = built_model(tiny_config())
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 2 * 6 + 2  # per layer q, k, v, output, intermediate, ffn; pooler, MLM
    assert all(type(layer) is modeling.Dense for layer in dense), dense


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
    # The model's values are rounded to bfloat16 (unit roundoff U_BF16 = 2^-8) at every
    # op, while the sums accumulate in float32. Along the chain to the MLM logits that is
    # R ≈ 56 roundings: per layer 21 (the weights and output of q/k/v, the scaled q, the
    # scores, probabilities, context, output projection weights and output, the residual
    # sum, LayerNorm, intermediate weights and output, ~5 inside GELU, FFN weights and
    # output, residual, LayerNorm), 4 in the embeddings, 10 in the MLM head (51 in all to
    # the NSP logits). Each is a relative error within [-U_BF16, U_BF16] (rms at most
    # U_BF16/√3) and independent of the others, so the norm of the error relative to the
    # norm of the logits is ≈ GAIN·sqrt(R)·U_BF16/√3 = 0.034 (GAIN = 2 as in
    # nb.forward_tolerances); twice that, as the NSP logits are only 6 numbers to
    # estimate an rms from. Measured: 0.007 (MLM), 0.011 (NSP).
    bound = 2 * 2 * math.sqrt(56) * nb.U_BF16 / math.sqrt(3)
    # Float32 alone would differ by at most 2·(Σ K)·U32 ≈ 7e-5 relative (see
    # test_forward_pass_matches_numpy_reference): more than that means bfloat16 was used.
    float32_bound = 2 * nb.summed_lengths(model.config, 8) * nb.U32
    for key in ("mlm_logits", "nsp_logits"):
        assert outputs[key].dtype == tf.float32
        assert dropped[key].dtype == tf.float32
        relative_error = np.linalg.norm(outputs[key] - expected[key]) / np.linalg.norm(
            expected[key]
        )
        assert float32_bound < relative_error < bound, key


def test_mirrored_replicas_match_a_single_device(model_and_weights):
    model, weights = model_and_weights
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
    single = model(features)["mlm_logits"].numpy()
    # Batches of 1 and of 2 run GEMMs of other shapes (other blockings); each is within
    # the float32 bound of the float64 reference, so they differ by at most twice that.
    expected, tolerances = reference_and_tolerances(weights, model.config, batch(batch_size=2))
    assert_within({"mlm_logits": single}, expected, tolerances)
    for replica, value in enumerate(strategy.experimental_local_results(outputs)):
        row = slice(replica, replica + 1)
        assert_within(
            {"mlm_logits": value}, {"mlm_logits": expected["mlm_logits"][row]}, tolerances
        )
        assert_within({"mlm_logits": value}, {"mlm_logits": single[row]}, tolerances, factor=2)


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
