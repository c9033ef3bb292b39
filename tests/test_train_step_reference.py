"""The real training step against an independent NumPy computation of the same step.

`Trainer.train_step` runs on 2 replicas (2 logical CPU devices, the MirroredStrategy code
path of a 2-GPU machine). The expected result is float64 NumPy, written from the paper and
the original release: the forward pass and its backward pass by hand (tests/numpy_bert.py,
checked here against finite differences), the loss of the whole GLOBAL batch (masked-LM
loss over all its masked tokens, next-sentence loss over all its examples), the gradient
clipped to global norm 1.0, and the original AdamW: no bias correction, beta_1 0.9,
beta_2 0.999, epsilon 1e-6, weight decay 0.01 off LayerNorm and bias variables, the
learning rate of a linear warm-up and decay. The step runs with XLA and without; without,
AdamW updates through TensorFlow's fused Adam kernel, which computes 1 - beta in float32
from float32(beta), and the reference takes those betas.

Each step is computed from the state the trainer holds before it (weights and both
slots, read back), so every comparison covers exactly one step, with a tolerance derived
from that step's float32 computation (see `step_tolerances`).
"""

import functools
import math

import conftest
import keras
import numpy as np
import numpy_bert as nb
import pytest
import tensorflow as tf

import modeling

# Trainer and TrainConfig stay importable from the script wherever they are defined.
from run_pretraining_gpu import TrainConfig, Trainer

U32 = nb.U32
BERT_CONFIG = modeling.BertConfig(
    vocab_size=30,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=24,  # ≠ hidden_size: a transposed FFN kernel cannot go unnoticed
    max_position_embeddings=12,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
SEQ, PRED = 8, 3
REPLICAS, BATCH_SIZE = 2, 2  # batch_size is per replica: global batches of 4
PEAK_LR, WARMUP, TOTAL = 0.02, 2, 10
# Step 0 has lr 0 (the warm-up starts from 0, as in the original: only the slots move),
# step 1 is in the warm-up, step 2 in the decay.
NUM_STEPS = 3
BETA_1, BETA_2, EPSILON, WEIGHT_DECAY, CLIP_NORM = 0.9, 0.999, 1e-6, 0.01, 1.0


def expected_learning_rate(step):
    """The original release's schedule: linear warm-up from 0, linear decay from step 0."""
    if step < WARMUP:
        return PEAK_LR * step / WARMUP
    return PEAK_LR * (1.0 - min(step, TOTAL) / TOTAL)


def decays(name):
    """The original release excludes LayerNorm scales and offsets and every bias."""
    return "LayerNorm" not in name and "bias" not in name


# ---------------------------------------------------------------------------------------
# Weights and data
# ---------------------------------------------------------------------------------------


@functools.cache
def variable_shapes():
    """{original name: shape} of the model's variables (building a model takes a second)."""
    model = modeling.BertPretrainingModel(BERT_CONFIG)
    model.build_weights()
    return {name: tuple(v.shape) for name, v in modeling.original_name_map(model).items()}


def random_weights(seed=0):
    """{original name: float32-representable float64 array}; no bias 0, no gamma 1."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in variable_shapes().items():
        value = rng.normal(0.0, 0.3, shape) + (1.0 if name.endswith("gamma") else 0.0)
        weights[name] = value.astype(np.float32).astype(np.float64)
    return weights


def global_batch(seed):
    """A global batch of 4 with padding; replica 0's half holds 6 masked tokens, replica
    1's half 3 (and a padding prediction slot of weight 0 in each of its rows)."""
    rng = np.random.default_rng(seed)
    lengths = [8, 6, 7, 5]
    predictions = [3, 3, 2, 1]
    rows = len(lengths)
    input_mask = np.array([[1] * n + [0] * (SEQ - n) for n in lengths], np.int32)
    segment_ids = np.array([[0] * (n // 2) + [1] * (n - n // 2) + [0] * (SEQ - n) for n in lengths])
    positions = np.zeros((rows, PRED), np.int32)
    weights = np.zeros((rows, PRED), np.float32)
    ids = np.zeros((rows, PRED), np.int32)
    for row, (n, k) in enumerate(zip(lengths, predictions)):
        positions[row, :k] = rng.choice(np.arange(1, n), k, replace=False)
        weights[row, :k] = 1.0
        ids[row, :k] = rng.integers(1, BERT_CONFIG.vocab_size, k)
    return {
        "input_ids": (rng.integers(1, BERT_CONFIG.vocab_size, (rows, SEQ)) * input_mask).astype(
            np.int32
        ),
        "input_mask": input_mask,
        "segment_ids": segment_ids.astype(np.int32),
        "masked_lm_positions": positions,
        "masked_lm_ids": ids,
        "masked_lm_weights": weights,
        "next_sentence_labels": rng.permutation([0, 0, 1, 1]).astype(np.int32),
        "example_weight": np.ones(rows, np.float32),
    }


BATCHES = [global_batch(seed) for seed in range(NUM_STEPS)]


def half(batch, replica):
    return {k: v[replica * BATCH_SIZE : (replica + 1) * BATCH_SIZE] for k, v in batch.items()}


# ---------------------------------------------------------------------------------------
# The NumPy backward pass against finite differences
# ---------------------------------------------------------------------------------------


def test_numpy_backward_matches_finite_differences():
    """Self-check of the hand-written backward pass, per variable, in float64.

    For a random unit direction d in one variable's space, the central difference
    (L(w + h·d) - L(w - h·d)) / 2h differs from ∇L·d by h²/6·|∂³L/∂d³| (truncation) plus
    ~u64·|L|/h (rounding, u64 = 2^-53). With h = 1e-4 and L ≈ 5 the rounding term is
    ~6e-12, and the truncation term stays below 1e-8 while |∂³L/∂d³| < 6e3 — a loss of
    O(1) weights and activations has third derivatives of O(1-100). A wrong backward step
    (a missing factor, a transposed kernel, a dropped residual) errs by O(|∇L·d|) ≈ 0.1-1.
    """
    weights = random_weights()
    batch = BATCHES[0]
    gradients = nb.pretraining_loss_and_gradients(weights, BERT_CONFIG, batch)["gradients"]
    rng = np.random.default_rng(1)
    h, tolerance = 1e-4, 1e-8
    for name, value in weights.items():
        direction = rng.normal(size=value.shape)
        direction /= np.linalg.norm(direction)
        losses = []
        for sign in (1.0, -1.0):
            shifted = dict(weights, **{name: value + sign * h * direction})
            losses.append(nb.pretraining_loss_and_gradients(shifted, BERT_CONFIG, batch)["loss"])
        finite_difference = (losses[0] - losses[1]) / (2 * h)
        analytic = float((gradients[name] * direction).sum())
        assert abs(finite_difference - analytic) < tolerance, (name, finite_difference, analytic)
    # The key bias cannot change the softmax (it adds q·b_k to every score of a row): its
    # gradient is exactly 0, which the hand-written pass gets to rounding.
    key_bias = gradients["bert/encoder/layer_0/attention/self/key/bias"]
    assert np.abs(key_bias).max() < 1e-12


# ---------------------------------------------------------------------------------------
# The trainer's steps
# ---------------------------------------------------------------------------------------


def local_values(strategy, variable):
    """Every replica's copy of a (Keras or tf) variable, as NumPy arrays."""
    variable = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.asarray(copy.numpy()) for copy in strategy.experimental_local_results(variable)]


def read_state(trainer, strategy, names):
    """{name: (weight, m, v)} as float64, after checking the replicas' copies are equal.

    Every replica applies the same all-reduced gradient with the same operations to its
    own copy, so the copies are bit-for-bit equal.
    """
    state = {}
    for index, (variable, name) in enumerate(zip(trainer.variables, names)):
        values = []
        for tracked in (variable, trainer.optimizer.m[index], trainer.optimizer.v[index]):
            copies = local_values(strategy, tracked)
            assert len(copies) == REPLICAS, name
            for copy in copies[1:]:
                np.testing.assert_array_equal(copy, copies[0], err_msg=name)
            assert copies[0].shape == tuple(variable.shape), name
            values.append(copies[0].astype(np.float64))
        state[name] = tuple(values)
    return state


@pytest.fixture(scope="module", params=[True, False], ids=["xla", "no_xla"])
def trainer_run(request, tmp_path_factory):
    """The real Trainer, set to `random_weights()`, run for NUM_STEPS steps, with and
    without XLA (without, AdamW updates through TensorFlow's fused Adam kernel).

    Returns {"states": [state before step 0, ..., after the last], "metrics": per step,
    "fused": whether the fused kernel updated}.
    """
    strategy = conftest.mirrored_strategy(REPLICAS)
    assert strategy.num_replicas_in_sync == REPLICAS
    directory = str(tmp_path_factory.mktemp("train_step_reference"))
    config = TrainConfig(
        input_file="unused",
        output_dir=directory,
        bert_config_file="unused",
        do_train=True,
        batch_size=BATCH_SIZE,
        max_seq_length=SEQ,
        max_predictions_per_seq=PRED,
        learning_rate=PEAK_LR,
        num_warmup_steps=WARMUP,
        num_train_steps=TOTAL,
        xla=request.param,
    )
    trainer = Trainer(strategy, BERT_CONFIG, config)
    assert trainer.optimizer.fused is not request.param
    # Compiled for CPUs, the bias and LayerNorm gradients' row sums are products with ones.
    column_sums = trainer.model.encoder.layer_0.intermediate.column_sums
    assert column_sums == ("matmul" if request.param else "reduce")
    # Without XLA the encoder computes on the real tokens only (the batches hold padding;
    # below, packed rows a multiple of 1, read when the step is traced: no filler rows;
    # with one layer, the embeddings and the key and value projections are packed).
    assert trainer.model.encoder.pack_tokens is not request.param
    by_id = {id(v): name for name, v in modeling.original_name_map(trainer.model).items()}
    names = [by_id[id(variable)] for variable in trainer.variables]
    weights = random_weights()
    assert sorted(names) == sorted(weights)  # every weight is trained
    for variable, name in zip(trainer.variables, names):
        variable.assign(weights[name].astype(np.float32))

    stacked = {key: np.stack([b[key] for b in BATCHES]) for key in BATCHES[0]}
    iterator = iter(tf.data.Dataset.from_tensor_slices(stacked))
    states, metrics = [read_state(trainer, strategy, names)], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling, "PACKED_ROWS_MULTIPLE", 1)
        for _ in range(NUM_STEPS):
            metrics.append({k: float(v) for k, v in trainer.train_step(iterator).items()})
            states.append(read_state(trainer, strategy, names))
    return {"states": states, "metrics": metrics, "fused": trainer.optimizer.fused}


# ---------------------------------------------------------------------------------------
# The NumPy step and its float32 tolerance
# ---------------------------------------------------------------------------------------


def adamw(weight, m, v, gradient, learning_rate, decay, bias_correction_step=None, fused=False):
    """The original AdamWeightDecayOptimizer's update of one variable (float64).

    fused: TensorFlow's fused Adam kernel instead, which computes 1 - beta in float32
    from float32(beta) (AdamWeightDecay._apply): the same update with those betas.
    """
    beta_1, beta_2 = BETA_1, BETA_2
    if fused:
        beta_1, beta_2 = float(np.float32(BETA_1)), float(np.float32(BETA_2))
    m = beta_1 * m + (1.0 - beta_1) * gradient
    v = beta_2 * v + (1.0 - beta_2) * gradient**2
    m_hat, v_hat = m, v
    if bias_correction_step is not None:  # Adam's, which the original omits (a control)
        m_hat = m / (1.0 - beta_1**bias_correction_step)
        v_hat = v / (1.0 - beta_2**bias_correction_step)
    adam = m_hat / (np.sqrt(v_hat) + EPSILON)
    update = adam + (WEIGHT_DECAY * weight if decay else 0.0)
    return weight - learning_rate * update, m, v, adam


def reference_step(state, batch, step, variant=None, fused=False):
    """The expected step from `state` ({name: (weight, m, v)}), and its float32 tolerances.

    Args:
        fused: the update of TensorFlow's fused Adam kernel (see `adamw`).
        variant: None for the original algorithm; or one of the wrong algorithms the test
            must reject: "local_normalisation" (each replica divides by its own counts),
            "no_clipping", "bias_correction", "decay_everything", "next_learning_rate".

    Returns:
        (expected {name: (weight, m, v)}, tolerances {name: (weight, m, v)}, info) where
        info holds the loss sums, the global norm and the learning rate.
    """
    weights = {name: values[0] for name, values in state.items()}
    result = nb.pretraining_loss_and_gradients(weights, BERT_CONFIG, batch)
    gradients = result["gradients"]
    if variant == "local_normalisation":
        parts = [
            nb.pretraining_loss_and_gradients(weights, BERT_CONFIG, half(batch, r))["gradients"]
            for r in range(REPLICAS)
        ]
        gradients = {name: sum(part[name] for part in parts) for name in gradients}
    norm = math.sqrt(sum((g**2).sum() for g in gradients.values()))
    clip = CLIP_NORM / max(norm, CLIP_NORM) if variant != "no_clipping" else 1.0
    learning_rate = expected_learning_rate(step + (variant == "next_learning_rate"))

    # Gradient error: per variable, from `nb.gradient_tolerances`; the global norm then
    # errs by at most the norm of those errors (triangle inequality) plus the float32 sum
    # of N squares (≤ N·U32·norm² relative to norm², so ≤ N·U32·norm); clipping divides
    # by the norm.
    gradient_tolerance = nb.gradient_tolerances(BERT_CONFIG, batch, result["term_scales"])
    count = sum(g.size for g in gradients.values())
    norm_tolerance = (
        math.sqrt(sum(gradients[n].size * t**2 for n, t in gradient_tolerance.items()))
        + count * U32 * norm
    )
    expected, tolerances = {}, {}
    for name, (weight, m, v) in state.items():
        decay = decays(name) or variant == "decay_everything"
        correction = step + 1 if variant == "bias_correction" else None
        gradient = gradients[name] * clip
        # Error of the clipped gradient: its own, the norm's (relative), one rounding.
        delta = (
            gradient_tolerance[name] * clip
            + np.abs(gradient) * (norm_tolerance / norm if norm > CLIP_NORM else 0.0)
            + 2 * U32 * np.abs(gradient)
        )
        new = adamw(weight, m, v, gradient, learning_rate, decay, correction, fused)
        # AdamW is elementwise and monotonic in the gradient over an interval this small,
        # so the largest change for a gradient within ±delta is at one of the ends. Near
        # g = 0 the step m / (sqrt(v) + 1e-6) swings with the sign of g: there the
        # tolerance is as wide as the update itself, as it must be (the float32 sign of a
        # gradient that is 0 up to rounding is rounding).
        spread = [np.zeros_like(weight)] * 3
        for shifted in (gradient + delta, gradient - delta):
            other = adamw(weight, m, v, shifted, learning_rate, decay, correction, fused)
            spread = [np.maximum(s, np.abs(o - x)) for s, o, x in zip(spread, other, new)]
        # Plus the rounding of the update's own float32 operations: m and v are 2 products
        # and a sum (3·U32 of the terms); the weight update about 8 operations (sqrt, +eps,
        # /, decay product and sum, lr product, the lr's own rounding) on the update's
        # terms, and up to 4 roundings at the weight's magnitude (the result's, and those
        # of an equivalent arrangement such as w·(1 - lr·wd) - lr·adam). A weight whose
        # gradient and slots are 0 (an unused position row) decays by lr·wd·w, and its
        # float32 result is that one rounding away from the exact one.
        new_weight, new_m, new_v, adam = new
        rounding = (
            4 * U32 * np.abs(new_weight)
            + 8 * U32 * learning_rate * (np.abs(adam) + WEIGHT_DECAY * np.abs(weight)),
            3 * U32 * (BETA_1 * np.abs(m) + (1 - BETA_1) * np.abs(gradient)),
            3 * U32 * (BETA_2 * v + (1 - BETA_2) * gradient**2),
        )
        expected[name] = (new_weight, new_m, new_v)
        tolerances[name] = tuple(s + r for s, r in zip(spread, rounding))
    info = {"sums": result["sums"], "outputs": result["outputs"], "norm": norm}
    info.update(norm_tolerance=norm_tolerance, learning_rate=learning_rate)
    return expected, tolerances, info


def worst_ratio(actual, expected, tolerances):
    """max over every variable, slot and element of |actual - expected| / tolerance."""
    worst = (0.0, None)
    for name, values in expected.items():
        for kind, a, e, t in zip(("weight", "m", "v"), actual[name], values, tolerances[name]):
            ratio = np.max(np.abs(a - e) / np.maximum(t, 1e-300))
            worst = max(worst, (float(ratio), f"{name} ({kind})"), key=lambda x: x[0])
    return worst


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


def test_the_replicas_hold_different_numbers_of_masked_tokens():
    # Normalising each replica by its own count would weigh replica 1's tokens twice as
    # much as replica 0's; only the global count (9) gives the one-device loss.
    for batch in BATCHES:
        counts = [half(batch, r)["masked_lm_weights"].sum() for r in range(REPLICAS)]
        assert counts == [6.0, 3.0]


@pytest.mark.parametrize("step", range(NUM_STEPS))
def test_train_step_matches_numpy_reference(trainer_run, step):
    before, after = trainer_run["states"][step], trainer_run["states"][step + 1]
    metrics = trainer_run["metrics"][step]
    fused = trainer_run["fused"]
    expected, tolerances, info = reference_step(before, BATCHES[step], step, fused=fused)

    assert info["norm"] > 1.5 * CLIP_NORM  # clipping changes this step's gradient
    ratio, where = worst_ratio(after, expected, tolerances)
    assert ratio <= 1.0, f"step {step}: {where} is off by {ratio:.3g}× its tolerance"
    if info["learning_rate"] == 0.0:  # w - 0·update is w exactly: only the slots move
        for name, (weight, _, _) in after.items():
            np.testing.assert_array_equal(weight, before[name][0], err_msg=name)

    # The learning rate: float64 arithmetic rounded once to float32.
    assert abs(metrics["learning_rate"] - info["learning_rate"]) <= U32 * info["learning_rate"]
    # The global norm before clipping: "grad_norm" per step, or "grad_norm_sum" where the
    # trainer sums it over a loop of steps (one step here).
    (norm,) = [metrics[k] for k in ("grad_norm", "grad_norm_sum") if k in metrics]
    assert abs(norm - info["norm"]) <= info["norm_tolerance"]
    # Counts are sums of 0/1 weights: exact.
    sums = info["sums"]
    assert metrics["mlm_count"] == sums["mlm_count"] == 9.0
    assert metrics["nsp_count"] == sums["nsp_count"] == 4.0
    # Loss sums: the logits' float32 error (nb.forward_tolerances) carried through the
    # log-softmax, plus its own rounding (nb.cross_entropy_sum_tolerance).
    logit_tolerance = nb.forward_tolerances(
        {n: v[0] for n, v in before.items()}, BERT_CONFIG, BATCHES[step], info["outputs"]
    )
    for prefix, logits, weights in (
        ("mlm", "mlm_logits", BATCHES[step]["masked_lm_weights"]),
        ("nsp", "nsp_logits", BATCHES[step]["example_weight"]),
    ):
        values = info["outputs"][logits]
        tolerance = nb.cross_entropy_sum_tolerance(values, weights, logit_tolerance[logits])
        assert abs(metrics[f"{prefix}_loss_sum"] - sums[f"{prefix}_loss_sum"]) <= tolerance
        # Accuracy counts are exact where no counted argmax is within rounding of a tie.
        top_two = np.sort(values, -1)[..., -2:]
        gaps = (top_two[..., 1] - top_two[..., 0])[weights > 0]
        assert (gaps > 2 * logit_tolerance[logits]).all()
        assert metrics[f"{prefix}_correct"] == sums[f"{prefix}_correct"]


@pytest.mark.parametrize(
    "variant",
    [
        "local_normalisation",
        "no_clipping",
        "bias_correction",
        "decay_everything",
        "next_learning_rate",
    ],
)
def test_the_reference_rejects_wrong_steps(trainer_run, variant):
    """A trainer implementing a wrong step would fail the test above by a wide margin."""
    step = 1  # the first step with a non-zero learning rate
    before, after = trainer_run["states"][step], trainer_run["states"][step + 1]
    fused = trainer_run["fused"]
    _, tolerances, _ = reference_step(before, BATCHES[step], step, fused=fused)
    wrong, _, _ = reference_step(before, BATCHES[step], step, variant, fused)
    ratio, where = worst_ratio(after, wrong, tolerances)
    assert ratio > 100, f"{variant}: the trainer is within {ratio:.3g}× tolerance ({where})"
