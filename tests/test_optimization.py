"""Tests for optimization.py: schedule, AdamW (single device and mirrored), clipping."""

import functools

import conftest
import keras
import numpy as np
import pytest
import tensorflow as tf

import optimization
from optimization import AdamWeightDecay, WarmupPolynomialDecay, clip_by_global_norm

SCHEDULE = dict(peak_learning_rate=1e-4, num_warmup_steps=10, num_train_steps=100)

# A LayerNorm scale, a bias and a kernel, under the original release's names.
NAMES = (
    "bert/encoder/layer_0/attention/output/LayerNorm/gamma",
    "cls/predictions/output_bias",
    "bert/encoder/layer_0/intermediate/dense/kernel",
)
SHAPES = ((4,), (5,), (3, 4))


# ---------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),  # the first update has lr 0, as in the original
        (1, 1e-5),
        (5, 5e-5),
        (9, 9e-5),
        (10, 9e-5),  # decay counts from step 0: 1e-4 * (1 - 10/100)
        (55, 4.5e-5),
        (99, 1e-6),
        (100, 0.0),
        (150, 0.0),
    ],
)
def test_learning_rate_hand_computed(step, expected):
    assert optimization.learning_rate(step, **SCHEDULE) == pytest.approx(expected, abs=1e-15)
    tf_rate = WarmupPolynomialDecay(**SCHEDULE)(tf.constant(step)).numpy()
    assert tf_rate == pytest.approx(expected, rel=1e-7, abs=1e-15)


def test_learning_rate_without_warmup_starts_at_peak():
    schedule = dict(peak_learning_rate=2.0, num_warmup_steps=0, num_train_steps=4)
    rates = [optimization.learning_rate(step, **schedule) for step in range(6)]
    assert rates == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]


@pytest.mark.parametrize(
    "schedule",
    [
        SCHEDULE,
        dict(peak_learning_rate=1e-4, num_warmup_steps=0, num_train_steps=100),
        dict(peak_learning_rate=3e-3, num_warmup_steps=7, num_train_steps=33),
        # Warmup longer than training: the warmup branch wins until it ends.
        dict(peak_learning_rate=0.5, num_warmup_steps=50, num_train_steps=40),
    ],
)
def test_tf_schedule_equals_python_schedule(schedule):
    tf_schedule = WarmupPolynomialDecay(**schedule)
    steps = np.arange(0, 160)
    compiled = tf.function(lambda s: tf.map_fn(tf_schedule, s, fn_output_signature=tf.float32))
    for dtype in (tf.int32, tf.int64):
        got = compiled(tf.constant(steps, dtype)).numpy()
        expected = np.array(
            [optimization.learning_rate(int(s), **schedule) for s in steps], np.float32
        )
        np.testing.assert_array_equal(got, expected)
    # Eager, with a variable as the step counter, as the trainer keeps it.
    step = tf.Variable(12, dtype=tf.int64)
    assert tf_schedule(step).dtype == tf.float32
    assert tf_schedule(step).numpy() == np.float32(optimization.learning_rate(12, **schedule))


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),
        (5, 5e-5),  # warm-up is linear whatever the power
        (10, 1e-4 * 0.9**0.5),  # decay from step 0: sqrt(1 - 10/100)
        (19, 1e-4 * 0.81**0.5),  # = 0.9e-4 exactly in real numbers
        (64, 1e-4 * 0.6),  # sqrt(0.36)
        (100, 0.0),
        (130, 0.0),
    ],
)
def test_polynomial_decay_hand_computed(step, expected):
    schedule = dict(SCHEDULE, power=0.5)
    assert optimization.learning_rate(step, **schedule) == pytest.approx(expected, rel=1e-12)
    tf_rate = WarmupPolynomialDecay(**schedule)(tf.constant(step)).numpy()
    # float64 → float32 rounding: half an ulp, 2^-24 relative.
    assert tf_rate == pytest.approx(expected, rel=2**-24, abs=1e-15)


def test_tf_schedule_config_round_trips():
    config = WarmupPolynomialDecay(**SCHEDULE).get_config()
    assert config == dict(SCHEDULE, power=1.0)
    assert WarmupPolynomialDecay(**config)(5).numpy() == np.float32(5e-5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(peak_learning_rate=0.0), "peak_learning_rate must be > 0"),
        (dict(peak_learning_rate=-1e-4), "peak_learning_rate must be > 0"),
        (dict(num_train_steps=0), "num_train_steps must be > 0"),
        (dict(num_warmup_steps=-1), "num_warmup_steps must be >= 0"),
        (dict(power=0.0), "power must be > 0"),
    ],
)
def test_schedule_rejects_bad_arguments(bad, message):
    arguments = {**SCHEDULE, **bad}
    with pytest.raises(ValueError, match=message):
        optimization.learning_rate(0, **arguments)
    with pytest.raises(ValueError, match=message):
        WarmupPolynomialDecay(**arguments)


def test_learning_rate_rejects_negative_step():
    with pytest.raises(ValueError, match="step must be >= 0"):
        optimization.learning_rate(-1, **SCHEDULE)


# ---------------------------------------------------------------------------------------
# AdamW against an independent NumPy implementation
# ---------------------------------------------------------------------------------------


def numpy_adamw_step(params, ms, vs, grads, lr, decays, wd=0.01, b1=0.9, b2=0.999, eps=1e-6):
    """One step of the original release's AdamWeightDecayOptimizer, in float64 NumPy."""
    new_params, new_ms, new_vs = [], [], []
    for p, m, v, g, decay in zip(params, ms, vs, grads, decays):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        direction = m / (np.sqrt(v) + eps)
        if decay:
            direction = direction + wd * p
        new_params.append(p - lr * direction)
        new_ms.append(m)
        new_vs.append(v)
    return new_params, new_ms, new_vs


def make_variables(kind, values):
    if kind == "tf":
        return [tf.Variable(x, dtype=tf.float32) for x in values]
    return [keras.Variable(x, dtype="float32") for x in values]


def assert_close(actual, expected):
    """float32 results against float64 references: ~1e-6 relative to each array's scale."""
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-6, atol=1e-6 * np.max(np.abs(e)))


# TensorFlow's fused Adam kernel (AdamWeightDecay(fused=True)) computes 1 - beta in float32
# from float32(beta): its moments are those of the reference with beta = float32(beta).
FUSED_BETAS = dict(b1=float(np.float32(0.9)), b2=float(np.float32(0.999)))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("kind", ["tf", "keras"])
def test_adamw_matches_numpy_reference(kind, fused):
    rng = np.random.default_rng(0)
    initial = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(5)]
    # Short warmup and horizon so that warmup (incl. lr 0), peak and decay all occur.
    schedule = dict(peak_learning_rate=0.1, num_warmup_steps=2, num_train_steps=6)

    variables = make_variables(kind, initial)
    opt = AdamWeightDecay(variables, NAMES, fused=fused)
    assert opt.decay_flags == (False, False, True)
    betas = FUSED_BETAS if fused else {}

    params = [x.astype(np.float64) for x in initial]
    ms = [np.zeros(s) for s in SHAPES]
    vs = [np.zeros(s) for s in SHAPES]
    for step in range(5):
        lr = optimization.learning_rate(step, **schedule)
        opt.apply_gradients([tf.constant(g) for g in grads[step]], lr)
        params, ms, vs = numpy_adamw_step(
            params, ms, vs, [g.astype(np.float64) for g in grads[step]], lr, opt.decay_flags,
            **betas,
        )  # fmt: skip
        assert_close([v.numpy() for v in variables], params)
        assert_close([m.numpy() for m in opt.m], ms)
        assert_close([v.numpy() for v in opt.v], vs)
    # The weights did move (lr was 0 only for step 0).
    assert not np.allclose(variables[2].numpy(), initial[2])


def numpy_lamb_step(params, ms, vs, grads, lr, count, adapts, wd=0.01, b1=0.9, b2=0.999,
                    eps=1e-6):  # fmt: skip
    """One LAMB step (You et al. 2019, algorithm 2, NVIDIA's exclusions) in float64 NumPy."""
    new_params, new_ms, new_vs = [], [], []
    for p, m, v, g, adapt in zip(params, ms, vs, grads, adapts):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**count)
        v_hat = v / (1 - b2**count)
        direction = m_hat / (np.sqrt(v_hat) + eps)
        if adapt:
            direction = direction + wd * p
            w_norm, u_norm = np.linalg.norm(p), np.linalg.norm(direction)
            direction = direction * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
        new_params.append(p - lr * direction)
        new_ms.append(m)
        new_vs.append(v)
    return new_params, new_ms, new_vs


@pytest.mark.parametrize("kind", ["tf", "keras"])
def test_lamb_matches_numpy_reference(kind):
    rng = np.random.default_rng(3)
    # Weights of very different scales: the trust ratio ||w|| / ||update|| differs per
    # tensor, which is what LAMB adds over Adam.
    initial = [(rng.normal(size=s) * scale).astype(np.float32)
               for s, scale in zip(SHAPES, (1.0, 0.1, 3.0))]  # fmt: skip
    grads = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(6)]
    schedule = dict(peak_learning_rate=0.05, num_warmup_steps=2, num_train_steps=8, power=0.5)

    variables = make_variables(kind, initial)
    opt = optimization.Lamb(variables, NAMES)
    assert opt.decay_flags == (False, False, True)  # LayerNorm and bias are not adapted

    params = [x.astype(np.float64) for x in initial]
    ms = [np.zeros(s) for s in SHAPES]
    vs = [np.zeros(s) for s in SHAPES]
    for step in range(6):
        lr = optimization.learning_rate(step, **schedule)
        opt.apply_gradients([tf.constant(g) for g in grads[step]], lr, count=step + 1)
        params, ms, vs = numpy_lamb_step(
            params, ms, vs, [g.astype(np.float64) for g in grads[step]], lr, step + 1,
            opt.decay_flags,
        )  # fmt: skip
        assert_close([v.numpy() for v in variables], params)
        assert_close([m.numpy() for m in opt.m], ms)
        assert_close([v.numpy() for v in opt.v], vs)
    # The trust ratio matters: an Adam step of the same moments would land elsewhere.
    adam_params = [x.astype(np.float64) for x in initial]
    adam_ms = [np.zeros(s) for s in SHAPES]
    adam_vs = [np.zeros(s) for s in SHAPES]
    for step in range(6):
        lr = optimization.learning_rate(step, **schedule)
        adam_params, adam_ms, adam_vs = numpy_lamb_step(
            adam_params, adam_ms, adam_vs, [g.astype(np.float64) for g in grads[step]], lr,
            step + 1, (False, False, False),
        )  # fmt: skip
    assert not np.allclose(adam_params[2], params[2], rtol=1e-3)


def test_lamb_bias_correction_makes_the_first_step_the_sign_of_the_gradient():
    # At count 1, m_hat = g and v_hat = g^2, so an unadapted variable moves by
    # lr * g / (|g| + eps): a step of lr in the direction of -sign(g).
    gradient = np.array([1e-3, -2.0, 5e2, -7e-2, 1.0], np.float32)
    variable = tf.Variable(np.zeros(5, np.float32))
    opt = optimization.Lamb([variable], ["cls/predictions/output_bias"])
    opt.apply_gradients([tf.constant(gradient)], 0.1, count=1)
    expected = -0.1 * gradient / (np.abs(gradient) + 1e-6)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="needs `count`"):
        opt.apply_gradients([tf.constant(gradient)], 0.1)


def test_lamb_trust_ratio_is_one_for_zero_weights():
    # A decayed kernel at exactly 0: ||w|| = 0 gives a trust ratio of 1, not 0 or NaN.
    variable = tf.Variable(np.zeros((2, 3), np.float32))
    opt = optimization.Lamb([variable], ["bert/pooler/dense/kernel"])
    gradient = np.full((2, 3), 0.5, np.float32)
    opt.apply_gradients([tf.constant(gradient)], 0.1, count=1)
    np.testing.assert_allclose(variable.numpy(), -0.1 * 0.5 / (0.5 + 1e-6), rtol=1e-6)


def test_weight_decay_applies_to_kernels_only():
    # With zero gradients the Adam part of the step is exactly 0, leaving only the decay:
    # decayed variables shrink by lr * rate, excluded ones stay put.
    values = [np.full(s, 2.0, np.float32) for s in SHAPES]
    variables = make_variables("tf", values)
    opt = AdamWeightDecay(variables, NAMES, weight_decay_rate=0.1)
    opt.apply_gradients([tf.zeros(s) for s in SHAPES], learning_rate=0.5)
    np.testing.assert_array_equal(variables[0].numpy(), values[0])  # LayerNorm/gamma
    np.testing.assert_array_equal(variables[1].numpy(), values[1])  # output_bias
    np.testing.assert_allclose(variables[2].numpy(), 2.0 * (1 - 0.5 * 0.1), rtol=1e-7)


@pytest.mark.parametrize(
    "name, decays",
    [
        ("bert/encoder/layer_3/output/LayerNorm/beta", False),
        ("bert/embeddings/LayerNorm/gamma", False),
        ("bert/encoder/layer_0/attention/self/query/bias", False),
        ("cls/predictions/output_bias", False),
        ("cls/seq_relationship/output_bias", False),
        ("encoder/layer_norm/gamma", False),
        ("bert/encoder/layer_0/attention/self/query/kernel", True),
        ("bert/embeddings/word_embeddings", True),
        ("cls/seq_relationship/output_weights", True),
    ],
)
def test_decay_flag_by_name(name, decays):
    opt = AdamWeightDecay([tf.Variable(0.0)], [name])
    assert opt.decays_weight(0) is decays


def test_zero_rate_or_custom_exclusions():
    variables = [tf.Variable(0.0), tf.Variable(0.0)]
    names = ["dense/kernel", "dense/bias"]
    assert AdamWeightDecay(variables, names, weight_decay_rate=0.0).decay_flags == (False, False)
    custom = AdamWeightDecay(variables, names, exclude_from_weight_decay=("kernel",))
    assert custom.decay_flags == (False, True)


def test_no_bias_correction():
    # One step from zero slots with g = 2: m = 0.2, v = 0.004, so the step is
    # 0.2 / (sqrt(0.004) + 1e-6) ~= sqrt(10) ~= 3.1622 per unit lr. Adam's bias correction
    # would divide m by (1 - 0.9) and v by (1 - 0.999) and give 2 / (2 + 1e-6) ~= 1.0.
    variable = tf.Variable([0.0])
    opt = AdamWeightDecay([variable], ["dense/bias"])
    opt.apply_gradients([tf.constant([2.0])], learning_rate=1.0)
    expected = -0.2 / (np.sqrt(0.004) + 1e-6)
    assert expected == pytest.approx(-3.16223, abs=1e-5)
    np.testing.assert_allclose(variable.numpy(), [expected], rtol=1e-6)
    # The fused kernel: 1 - beta from float32 betas, 1 - float32(0.999) = 0.00099998713,
    # and 1 - float32(0.9) = 0.100000024: v 1.3e-5 smaller, m 2.2e-7 larger, the step
    # 6.5e-6 + 2.2e-7 = 6.7e-6 larger than the original's.
    fused_variable = tf.Variable([0.0])
    AdamWeightDecay([fused_variable], ["dense/bias"], fused=True).apply_gradients(
        [tf.constant([2.0])], learning_rate=1.0
    )
    c1, c2 = (1 - np.float64(np.float32(b)) for b in (0.9, 0.999))
    fused_expected = -2 * c1 / (np.sqrt(4 * c2) + 1e-6)
    assert fused_expected / expected - 1 == pytest.approx(6.7e-6, rel=0.02)
    np.testing.assert_allclose(fused_variable.numpy(), [fused_expected], rtol=1e-6)


def test_update_accepts_keras_variable_and_skips_missing_gradients():
    kernel = keras.Variable(np.ones((2, 2), np.float32))
    bias = tf.Variable(np.ones(2, np.float32))
    opt = AdamWeightDecay([kernel, bias], ["dense/kernel", "dense/bias"])
    assert opt.model_variables[0] is kernel.value
    assert opt.model_variables[1] is bias
    opt.apply_gradients([tf.ones((2, 2)), None], learning_rate=0.1)
    assert not np.allclose(kernel.numpy(), 1.0)
    np.testing.assert_array_equal(bias.numpy(), 1.0)
    np.testing.assert_array_equal(opt.m[1].numpy(), 0.0)
    opt.update(1, bias, tf.ones(2), 0.1)  # a Keras or tf variable, or a device copy
    assert not np.allclose(bias.numpy(), 1.0)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("optimizer", ["adamw", "adamw_fused", "lamb"])
def test_update_with_apply_is_the_update_or_leaves_everything_unchanged(optimizer, jit_compile):
    # `apply` folds a skipped step into the coefficients: true gives bit for bit the update
    # without it (a second optimizer, same state, same gradient), false leaves the weights
    # and slots bit for bit as they were, even for a NaN gradient.
    rng = np.random.default_rng(5)
    names = ["layer/kernel", "layer/LayerNorm/gamma"]
    start = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    grads = [rng.normal(size=v.shape).astype(np.float32) for v in start]

    def build():
        variables = [tf.Variable(v) for v in start]
        kind = {"adamw": AdamWeightDecay, "adamw_fused": AdamWeightDecay, "lamb": optimization.Lamb}
        extra = {"fused": True} if optimizer == "adamw_fused" else {}
        opt = kind[optimizer](variables, names, **extra)
        moments = np.random.default_rng(6)  # a state after some steps: m and v not zero
        for m, v in zip(opt.m, opt.v):
            m.assign(moments.normal(size=m.shape).astype(np.float32) * 0.1)
            v.assign(np.abs(moments.normal(size=v.shape)).astype(np.float32) * 0.01)
        return variables, opt

    def state(variables, opt):
        return [x.numpy() for x in (*variables, *opt.m, *opt.v)]

    plain, gated = build(), build()

    def step(opt, gradients, apply):
        for index, (variable, gradient) in enumerate(zip(opt.model_variables, gradients)):
            opt.update(index, variable, gradient, 0.01, count=3.0, apply=apply)

    run = tf.function(step, jit_compile=jit_compile, autograph=False)
    run(plain[1], [tf.constant(g) for g in grads], None)
    run(gated[1], [tf.constant(g) for g in grads], tf.constant(True))
    for expected, actual in zip(state(*plain), state(*gated)):
        np.testing.assert_array_equal(actual, expected)
    assert not np.array_equal(state(*gated)[0], start[0])  # it did update

    before = state(*gated)
    nan = [np.full_like(g, np.nan) for g in grads]
    run(gated[1], [tf.constant(g) for g in nan], tf.constant(False))
    for expected, actual in zip(before, state(*gated)):
        np.testing.assert_array_equal(actual, expected)


def test_sparse_gradient_equals_its_dense_form():
    # Embedding lookups give IndexedSlices gradients; the update densifies them, so rows
    # that were not looked up still decay their m and v, as in the original.
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    sparse_table, dense_table = tf.Variable(table), tf.Variable(table)
    names = ["bert/embeddings/word_embeddings"]
    sparse_opt = AdamWeightDecay([sparse_table], names)
    dense_opt = AdamWeightDecay([dense_table], names)
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(sparse_table, [1, 3, 1]))
        (gradient,) = tape.gradient(loss, [sparse_table])
        assert isinstance(gradient, tf.IndexedSlices)
        sparse_opt.apply_gradients([gradient], 0.1)
        dense_opt.apply_gradients([tf.convert_to_tensor(gradient)], 0.1)
    np.testing.assert_array_equal(sparse_table.numpy(), dense_table.numpy())
    np.testing.assert_array_equal(sparse_opt.m[0].numpy(), dense_opt.m[0].numpy())
    assert not np.allclose(sparse_table.numpy()[1], table[1])


def test_adamw_rejects_bad_arguments():
    variable = tf.Variable([0.0])
    with pytest.raises(ValueError, match="one name per variable"):
        AdamWeightDecay([variable], ["a", "b"])
    with pytest.raises(ValueError, match="beta_2 must be in"):
        AdamWeightDecay([variable], ["a"], beta_2=1.0)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        AdamWeightDecay([variable], ["a"], epsilon=0.0)
    with pytest.raises(ValueError, match="weight_decay_rate must be >= 0"):
        AdamWeightDecay([variable], ["a"], weight_decay_rate=-0.1)
    with pytest.raises(ValueError, match="dtype float64"):
        AdamWeightDecay([tf.Variable([0.0], dtype=tf.float64)], ["a"])
    with pytest.raises(TypeError, match="sequence of substrings"):
        AdamWeightDecay([variable], ["a"], exclude_from_weight_decay="bias")
    with pytest.raises(ValueError, match="2 gradients for 1 variables"):
        AdamWeightDecay([variable], ["a"]).apply_gradients([None, None], 0.1)


def test_slots_are_checkpointed_without_model_variables(tmp_path):
    variables = make_variables("keras", [np.ones(s, np.float32) for s in SHAPES])
    opt = AdamWeightDecay(variables, NAMES)
    grads = [tf.fill(s, 0.5) for s in SHAPES]
    opt.apply_gradients(grads, 0.1)
    saved_m = [m.numpy() for m in opt.m]
    saved_v = [v.numpy() for v in opt.v]

    checkpoint = tf.train.Checkpoint(optimizer=opt)
    path = checkpoint.save(str(tmp_path / "ckpt"))
    keys = [name for name, _ in tf.train.list_variables(path) if name.startswith("optimizer/")]
    # Only the 2 x 3 slots: the model's variables belong to the model's checkpoint entry.
    assert len(keys) == 6, keys

    opt.apply_gradients(grads, 0.1)
    assert not np.allclose(opt.m[0].numpy(), saved_m[0])
    checkpoint.restore(path).assert_consumed()
    assert_close([m.numpy() for m in opt.m], saved_m)
    assert_close([v.numpy() for v in opt.v], saved_v)


# ---------------------------------------------------------------------------------------
# The trainer's pattern under MirroredStrategy
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_mirrored_update_matches_numpy_reference(fused):
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) == 2, "tests/conftest.py should split the CPU into 2 devices"
    strategy = conftest.mirrored_strategy(2)
    num_replicas = strategy.num_replicas_in_sync
    rng = np.random.default_rng(1)
    initial = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    # Per step and replica, a different "batch" x; loss_r = sum(x_r * w^2) / 2 / R, so the
    # all-reduced gradient is mean_r(x_r) * w, which depends on the current weights.
    xs = [[[rng.normal(size=s) for s in SHAPES] for _ in range(num_replicas)] for _ in range(5)]
    schedule = dict(peak_learning_rate=0.1, num_warmup_steps=2, num_train_steps=6)
    clip_norm = 1.5  # small enough to clip some steps

    with strategy.scope():
        # One Keras and two tf variables: the trainer's model has Keras variables.
        variables = [keras.Variable(initial[0])] + make_variables("tf", initial[1:])
        opt = AdamWeightDecay(variables, NAMES, fused=fused)
        step_counter = tf.Variable(0, dtype=tf.int64, trainable=False)
    lr_schedule = WarmupPolynomialDecay(**schedule)
    model_variables = opt.model_variables

    def replica_gradients(x):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(xi * tf.square(w)) for xi, w in zip(x, model_variables)])
            loss = loss / 2 / num_replicas
        grads = tape.gradient(loss, model_variables)
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads, _ = clip_by_global_norm(grads, clip_norm)
        return grads

    @tf.function
    def train_step(x):
        grads = strategy.run(replica_gradients, args=(x,))
        lr = lr_schedule(step_counter)
        for index, variable in enumerate(model_variables):
            strategy.extended.update(
                variable, functools.partial(opt.update, index), args=(grads[index], lr)
            )
        step_counter.assign_add(1)

    params = [x.astype(np.float64) for x in initial]
    ms = [np.zeros(s) for s in SHAPES]
    vs = [np.zeros(s) for s in SHAPES]
    clipped_steps = 0
    for step in range(5):
        x = strategy.experimental_distribute_values_from_function(
            lambda context, step=step: [
                tf.constant(a, tf.float32) for a in xs[step][context.replica_id_in_sync_group]
            ]
        )
        train_step(x)

        grads = [np.mean([xs[step][r][i] for r in range(num_replicas)], 0) * params[i]
                 for i in range(len(SHAPES))]  # fmt: skip
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        clipped_steps += norm > clip_norm
        grads = [g * clip_norm / max(norm, clip_norm) for g in grads]
        lr = optimization.learning_rate(step, **schedule)
        params, ms, vs = numpy_adamw_step(
            params, ms, vs, grads, lr, opt.decay_flags, **(FUSED_BETAS if fused else {})
        )

        for replica_values in (
            [v.values for v in model_variables],
            [m.values for m in opt.m],
            [v.values for v in opt.v],
        ):
            assert all(len(copies) == num_replicas for copies in replica_values)
        for r in range(num_replicas):
            assert_close([v.values[r].numpy() for v in model_variables], params)
            assert_close([m.values[r].numpy() for m in opt.m], ms)
            assert_close([v.values[r].numpy() for v in opt.v], vs)
    assert 0 < clipped_steps < 5
    assert int(step_counter.numpy()) == 5


# ---------------------------------------------------------------------------------------
# Clipping
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_norm", [1.0, 100.0])
def test_clip_by_global_norm_matches_numpy(clip_norm):
    rng = np.random.default_rng(2)
    grads = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    assert 1.0 < norm < 100.0  # so one case clips and the other does not
    clipped, global_norm = clip_by_global_norm([tf.constant(g) for g in grads], clip_norm)
    np.testing.assert_allclose(global_norm.numpy(), norm, rtol=1e-6)
    scale = min(1.0, clip_norm / norm)
    assert_close([c.numpy() for c in clipped], [g * scale for g in grads])


def test_clip_by_global_norm_passes_none_and_rejects_bad_norm():
    clipped, norm = clip_by_global_norm([tf.constant([3.0, 4.0]), None], 1.0)
    assert clipped[1] is None
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(norm.numpy(), 5.0)
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        clip_by_global_norm([tf.constant([1.0])], 0.0)
