"""A BERT in NumPy float64: the forward pass, and the backward pass of the pretraining loss.

Written from the paper (Devlin et al., 2018) and the original release's variable names,
independently of modeling.py; the tests compare the TensorFlow model and training step
with it. Weights are a dict {original checkpoint name: float64 array}.

Also here: the float32 rounding bounds the tests compare with (see `forward_tolerances`).
"""

import math

import numpy as np

# Unit roundoff of float32 round-to-nearest: fl(x) = x·(1 + δ) with |δ| ≤ U32.
U32 = 2.0**-24
# Unit roundoff of bfloat16 (8 significant bits, 7 stored): 2^-8, as U32 = 2^-24 for 24.
U_BF16 = 2.0**-8

LAYER_NORM_EPSILON = 1e-12
MASK_ADDER = -10000.0
GELU_C = math.sqrt(2.0 / math.pi)


# ---------------------------------------------------------------------------------------
# Functions and their derivatives
# ---------------------------------------------------------------------------------------


def layer_norm(x, gamma, beta):
    """LayerNorm over the last axis: (x - mean) / sqrt(var + 1e-12) · gamma + beta."""
    return _layer_norm(x, gamma, beta)[0]


def _layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdims=True)
    inv_sigma = 1.0 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + LAYER_NORM_EPSILON)
    x_hat = (x - mean) * inv_sigma
    return x_hat * gamma + beta, (x_hat, inv_sigma, gamma)


def _layer_norm_backward(dy, cache):
    """(dx, dgamma, dbeta) of y = x̂·γ + β, x̂ = (x - μ)/σ, from dy and the forward cache."""
    x_hat, inv_sigma, gamma = cache
    axes = tuple(range(dy.ndim - 1))
    dx_hat = dy * gamma
    dx = inv_sigma * (
        dx_hat - dx_hat.mean(-1, keepdims=True) - x_hat * (dx_hat * x_hat).mean(-1, keepdims=True)
    )
    return dx, (dy * x_hat).sum(axes), dy.sum(axes)


def gelu_tanh(x):
    """The original release's GELU: 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))."""
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x**3)))


def gelu_tanh_derivative(x):
    t = np.tanh(GELU_C * (x + 0.044715 * x**3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * GELU_C * (1.0 + 3 * 0.044715 * x**2)


def gelu_erf(x):
    """The exact GELU: 0.5·x·(1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------


def forward(w, config, features, **variant):
    """The pretraining model's outputs for `features` (as in BertPretrainingModel.call).

    Args:
        w: {original name: array}.
        config: a modeling.BertConfig (only its sizes are read).
        features: input_ids, segment_ids, input_mask [B, S], masked_lm_positions [B, P].
        **variant: for the tests that check a tolerance rejects real bugs:
            activation (default gelu_tanh), attention_scale (default 1/sqrt(D)),
            norm (default layer_norm, called as norm(x, gamma, beta)).

    Returns:
        sequence_output [B, S, H], pooled_output [B, H], mlm_logits [B, P, V],
        nsp_logits [B, 2], and mlm_hidden [B, P, H] (the MLM transform's output, the
        left factor of the logits).
    """
    return _forward(w, config, features, **variant)[0]


def _forward(
    w, config, features, activation=gelu_tanh, attention_scale=None, norm=None, cache=False
):
    ids, segments = features["input_ids"], features["segment_ids"]
    mask, positions = features["input_mask"], features["masked_lm_positions"]
    b, s = ids.shape
    n = config.num_attention_heads
    d = config.hidden_size // n
    scale = 1.0 / math.sqrt(d) if attention_scale is None else attention_scale
    caches = {}

    def dense(x, prefix):
        return x @ w[prefix + "/kernel"] + w[prefix + "/bias"]

    def ln(x, prefix, key):
        gamma, beta = w[prefix + "/LayerNorm/gamma"], w[prefix + "/LayerNorm/beta"]
        if norm is not None:
            return norm(x, gamma, beta)
        y, caches[key] = _layer_norm(x, gamma, beta)
        return y

    def heads(x):  # [B, S, H] → [B, N, S, D]
        return x.reshape(b, s, n, d).transpose(0, 2, 1, 3)

    x = (
        w["bert/embeddings/word_embeddings"][ids]
        + w["bert/embeddings/position_embeddings"][:s][None]
        + w["bert/embeddings/token_type_embeddings"][segments]
    )
    x = ln(x, "bert/embeddings", "embeddings_ln")
    score_bias = (1.0 - mask[:, None, None, :]) * MASK_ADDER  # [B, 1, 1, T]
    for i in range(config.num_hidden_layers):
        p = f"bert/encoder/layer_{i}"
        layer_input = x
        q = heads(dense(x, p + "/attention/self/query"))  # [B, N, F, D]
        k = heads(dense(x, p + "/attention/self/key"))  # [B, N, T, D]
        v = heads(dense(x, p + "/attention/self/value"))  # [B, N, T, D]
        probs = softmax(q @ k.transpose(0, 1, 3, 2) * scale + score_bias)  # [B, N, F, T]
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, n * d)  # [B, F, H]
        x = ln(x + dense(context, p + "/attention/output/dense"), p + "/attention/output", f"{i}a")
        intermediate = dense(x, p + "/intermediate/dense")  # [B, S, I]
        h = activation(intermediate)
        attention_out = x
        x = ln(x + dense(h, p + "/output/dense"), p + "/output", f"{i}f")
        caches[i] = (layer_input, q, k, v, probs, context, attention_out, intermediate, h)
    pooled = np.tanh(dense(x[:, 0], "bert/pooler/dense"))  # [B, H]
    gathered = x[np.arange(b)[:, None], positions]  # [B, P, H]
    transform = dense(gathered, "cls/predictions/transform/dense")
    mlm_hidden = ln(activation(transform), "cls/predictions/transform", "mlm_ln")
    mlm = mlm_hidden @ w["bert/embeddings/word_embeddings"].T + w["cls/predictions/output_bias"]
    nsp = (
        pooled @ w["cls/seq_relationship/output_weights"].T + w["cls/seq_relationship/output_bias"]
    )
    outputs = {
        "sequence_output": x,
        "pooled_output": pooled,
        "mlm_logits": mlm,
        "nsp_logits": nsp,
        "mlm_hidden": mlm_hidden,
    }
    caches.update(gathered=gathered, transform=transform)
    return outputs, (caches if cache else None)


# ---------------------------------------------------------------------------------------
# Loss and backward
# ---------------------------------------------------------------------------------------


def _cross_entropy(logits, labels, weights, count):
    """(Σ weight·(-log p[label]) / count, its gradient w.r.t. logits, correct sum)."""
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(-1, keepdims=True))
    onehot = np.eye(logits.shape[-1])[labels]
    loss_sum = -(weights * (log_probs * onehot).sum(-1)).sum()
    d_logits = (np.exp(log_probs) - onehot) * weights[..., None] / count
    correct = (weights * (logits.argmax(-1) == labels)).sum()
    return loss_sum, d_logits, correct


def pretraining_loss_and_gradients(w, config, batch):
    """The pretraining loss of one device holding the whole batch, and its gradient.

    The loss is the original release's: mean masked-LM cross-entropy over the batch's
    masked tokens (Σ weight·CE / Σ weight) plus mean next-sentence cross-entropy over its
    examples (Σ example_weight·CE / Σ example_weight).

    Args:
        w: {original name: float64 array}.
        config: a modeling.BertConfig.
        batch: the model's features plus masked_lm_ids, masked_lm_weights [B, P],
            next_sentence_labels [B] and example_weight [B].

    Returns:
        A dict: "loss"; "sums" (mlm_loss_sum, mlm_count, mlm_correct, nsp_loss_sum,
        nsp_count, nsp_correct); "outputs" (as `forward`); "gradients" {name: array
        shaped like w[name]}; and "term_scales" {name: array}, per gradient element the
        sum of the absolute values of the terms its last sum adds up (over batch rows;
        the scale of that sum's rounding, see `gradient_tolerances`).
    """
    out, c = _forward(w, config, batch, cache=True)
    b, s = batch["input_ids"].shape
    n = config.num_attention_heads
    d = config.hidden_size // n
    mlm_weights = batch["masked_lm_weights"].astype(np.float64)
    example_weights = batch["example_weight"].astype(np.float64)
    mlm_count, nsp_count = max(mlm_weights.sum(), 1.0), max(example_weights.sum(), 1.0)
    mlm_loss_sum, d_mlm, mlm_correct = _cross_entropy(
        out["mlm_logits"], batch["masked_lm_ids"], mlm_weights, mlm_count
    )
    nsp_loss_sum, d_nsp, nsp_correct = _cross_entropy(
        out["nsp_logits"], batch["next_sentence_labels"], example_weights, nsp_count
    )
    loss = mlm_loss_sum / mlm_count + nsp_loss_sum / nsp_count
    sums = {
        "mlm_loss_sum": mlm_loss_sum,
        "mlm_count": mlm_weights.sum(),
        "mlm_correct": mlm_correct,
        "nsp_loss_sum": nsp_loss_sum,
        "nsp_count": example_weights.sum(),
        "nsp_correct": nsp_correct,
    }

    g = {name: np.zeros_like(value) for name, value in w.items()}
    a = {name: np.zeros_like(value) for name, value in w.items()}  # Σ|terms| of g

    def dense_backward(dy, x, prefix):
        """Accumulates the kernel and bias gradients of y = x·W + b; returns dx."""
        rows_x, rows_dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        g[prefix + "/kernel"] += rows_x.T @ rows_dy
        a[prefix + "/kernel"] += np.abs(rows_x).T @ np.abs(rows_dy)
        g[prefix + "/bias"] += rows_dy.sum(0)
        a[prefix + "/bias"] += np.abs(rows_dy).sum(0)
        return dy @ w[prefix + "/kernel"].T

    def ln_backward(dy, prefix, key):
        dx, dgamma, dbeta = _layer_norm_backward(dy, c[key])
        x_hat = c[key][0]
        axes = tuple(range(dy.ndim - 1))
        g[prefix + "/LayerNorm/gamma"] += dgamma
        a[prefix + "/LayerNorm/gamma"] += np.abs(dy * x_hat).sum(axes)
        g[prefix + "/LayerNorm/beta"] += dbeta
        a[prefix + "/LayerNorm/beta"] += np.abs(dy).sum(axes)
        return dx

    def merge(x):  # [B, N, S, D] → [B, S, H]
        return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)

    # Heads. The MLM output layer is the word-embedding table (tied) plus a bias.
    word = "bert/embeddings/word_embeddings"
    g["cls/predictions/output_bias"] += d_mlm.sum((0, 1))
    a["cls/predictions/output_bias"] += np.abs(d_mlm).sum((0, 1))
    g[word] += np.einsum("bpv,bph->vh", d_mlm, out["mlm_hidden"])
    a[word] += np.einsum("bpv,bph->vh", np.abs(d_mlm), np.abs(out["mlm_hidden"]))
    d_hidden = d_mlm @ w[word]  # [B, P, H]
    d_act = ln_backward(d_hidden, "cls/predictions/transform", "mlm_ln")
    d_transform = d_act * gelu_tanh_derivative(c["transform"])
    d_gathered = dense_backward(d_transform, c["gathered"], "cls/predictions/transform/dense")
    dx = np.zeros((b, s, config.hidden_size))
    np.add.at(dx, (np.arange(b)[:, None], batch["masked_lm_positions"]), d_gathered)

    pooled = out["pooled_output"]
    g["cls/seq_relationship/output_weights"] += d_nsp.T @ pooled  # [2, H]
    a["cls/seq_relationship/output_weights"] += np.abs(d_nsp).T @ np.abs(pooled)
    g["cls/seq_relationship/output_bias"] += d_nsp.sum(0)
    a["cls/seq_relationship/output_bias"] += np.abs(d_nsp).sum(0)
    d_pooled_pre = (d_nsp @ w["cls/seq_relationship/output_weights"]) * (1.0 - pooled**2)
    dx[:, 0] += dense_backward(d_pooled_pre, out["sequence_output"][:, 0], "bert/pooler/dense")

    # Encoder, last layer first.
    for i in reversed(range(config.num_hidden_layers)):
        p = f"bert/encoder/layer_{i}"
        layer_input, q, k, v, probs, context, attention_out, intermediate, h = c[i]
        d_sum = ln_backward(dx, p + "/output", f"{i}f")  # of attention_out + ffn output
        d_h = dense_backward(d_sum, h, p + "/output/dense")
        d_intermediate = d_h * gelu_tanh_derivative(intermediate)
        d_attention_out = d_sum + dense_backward(
            d_intermediate, attention_out, p + "/intermediate/dense"
        )
        d_sum = ln_backward(d_attention_out, p + "/attention/output", f"{i}a")
        d_context = dense_backward(d_sum, context, p + "/attention/output/dense")
        d_context = d_context.reshape(b, s, n, d).transpose(0, 2, 1, 3)  # [B, N, F, D]
        d_probs = d_context @ v.transpose(0, 1, 3, 2)  # [B, N, F, T]
        d_v = probs.transpose(0, 1, 3, 2) @ d_context  # [B, N, T, D]
        d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True)) / math.sqrt(d)
        d_q = d_scores @ k  # [B, N, F, D]
        d_k = d_scores.transpose(0, 1, 3, 2) @ q  # [B, N, T, D]
        dx = d_sum
        for name, grad in (("query", d_q), ("key", d_k), ("value", d_v)):
            dx = dx + dense_backward(merge(grad), layer_input, f"{p}/attention/self/{name}")

    d_embeddings = ln_backward(dx, "bert/embeddings", "embeddings_ln")
    for grads, delta in ((g, d_embeddings), (a, np.abs(d_embeddings))):
        np.add.at(grads[word], batch["input_ids"], delta)
        grads["bert/embeddings/position_embeddings"][:s] += delta.sum(0)
        np.add.at(grads["bert/embeddings/token_type_embeddings"], batch["segment_ids"], delta)
    return {"loss": loss, "sums": sums, "outputs": out, "gradients": g, "term_scales": a}


# ---------------------------------------------------------------------------------------
# Float32 rounding bounds
# ---------------------------------------------------------------------------------------


def summed_lengths(config, seq_length):
    """Σ K over the chain of float32 sums from the input to the MLM logits.

    A float32 sum of K terms (a dot product, a LayerNorm mean or variance, a softmax
    denominator) is off by at most K·U32·Σ|terms| (Higham, "Accuracy and Stability of
    Numerical Algorithms", Thm 3.1 / eq. 3.4: γ_K = K·u/(1 - K·u)), whatever the blocking
    or fusion, and the model's output carries the errors of every sum along its chain.
    Per layer: q/k/v (H), scores (D), softmax denominator (T = S), context (T), output
    projection (H), LayerNorm (H), intermediate (H), FFN output (I), LayerNorm (H). Before:
    the embedding sum (3) and its LayerNorm (H); after: the MLM transform (H), its
    LayerNorm (H) and the logits (H). (The pooler and NSP chain, 2·H after the encoder,
    is shorter.)
    """
    h, d, i, t = (config.hidden_size, config.head_size, config.intermediate_size, seq_length)
    per_layer = h + d + 2 * t + h + h + h + i + h  # q, k and v side by side: one H
    return 3 + h + config.num_hidden_layers * per_layer + 3 * h


def forward_tolerances(w, config, features, reference):
    """Per output, the largest float32 error a correct implementation can make.

    bound = GAIN · (Σ K along the chain) · U32 · scale, where scale is the size of the
    values the last sum adds up (Σ|terms| of that sum, or the largest |value| for the
    LayerNorm output `sequence_output`). Each stage's rounding is relative to the scale of
    the values it produces, and this post-LayerNorm network carries such relative errors to
    the output without growth: every LayerNorm rescales its input to unit variance (its
    output error is |γ| times the relative error of its input), GELU' ≤ 1.13, tanh' ≤ 1.
    GAIN = 2 covers |γ| < 2 of the test weights (γ = 1 + 0.3·N(0, 1)) and the
    residual sums.

    Args:
        w, config, features: as for `forward`.
        reference: forward(w, config, features), the float64 outputs.

    Returns:
        {output name: absolute tolerance}.
    """
    gain = 2.0
    chain = summed_lengths(config, features["input_ids"].shape[1])
    first = reference["sequence_output"][:, 0]
    scales = {
        "sequence_output": np.abs(reference["sequence_output"]).max(),
        # tanh' ≤ 1: the pooled error is at most the error of the pre-activation sum.
        "pooled_output": (np.abs(first) @ np.abs(w["bert/pooler/dense/kernel"])).max()
        + np.abs(w["bert/pooler/dense/bias"]).max(),
        "mlm_logits": (
            np.abs(reference["mlm_hidden"]) @ np.abs(w["bert/embeddings/word_embeddings"]).T
        ).max()
        + np.abs(w["cls/predictions/output_bias"]).max(),
        "nsp_logits": (
            np.abs(reference["pooled_output"]) @ np.abs(w["cls/seq_relationship/output_weights"]).T
        ).max()
        + np.abs(w["cls/seq_relationship/output_bias"]).max(),
    }
    scales["mlm_hidden"] = scales["sequence_output"]
    return {key: gain * chain * U32 * scale for key, scale in scales.items()}


def gradient_tolerances(config, batch, term_scales):
    """Per variable, the largest float32 error a correct implementation makes in its gradient.

    A gradient element is a sum over the batch rows (B·S tokens, B·P predictions, and 2
    replicas' shares) of products whose factors went through the forward chain and back
    through the same chain in reverse, each float32 sum of K terms adding at most K·U32
    relative error (see `summed_lengths`). The backward pass mixes the errors of a
    variable's elements (the LayerNorm and softmax backward steps output differences of
    larger terms), so the scale is the variable's largest Σ|terms| (`term_scales` from
    `pretraining_loss_and_gradients`), not each element's own:
    bound = GAIN · (2·chain + B·(S + P) + 2) · U32 · max Σ|terms|, GAIN = 2 as in
    `forward_tolerances`. For the models of the tests that is ≈ 1.4e-4 · max Σ|terms|;
    measured errors are 50× smaller, eager or under XLA.

    Returns:
        {name: absolute tolerance (a float) for every element of that variable's gradient}.
    """
    b, s = batch["input_ids"].shape
    p = batch["masked_lm_positions"].shape[1]
    count = 2 * summed_lengths(config, s) + b * (s + p) + 2
    return {name: 2.0 * count * U32 * scale.max() for name, scale in term_scales.items()}


def cross_entropy_sum_tolerance(logits, weights, logit_tolerance=0.0):
    """The largest float32 error of Σ weight·(-log softmax(logits)[label]).

    Each target log-probability errs by at most 2·(the logits' error) — log-softmax is
    2-Lipschitz in the max norm — plus its own float32 evaluation, the shift by the row's
    max, exp, a sum of V terms, log and a subtraction: ≤ (V + 4)·U32·spread, with
    spread = (max - min of the row) + log V ≥ |log-probability|. The weighted sum of n
    terms adds ≤ n·U32·Σ weight·spread.

    Args:
        logits: [..., V] float64, the reference logits.
        weights: [...], the weights of the terms.
        logit_tolerance: the largest error of the float32 logits (0 when they are given).
    """
    vocab = logits.shape[-1]
    spread = logits.max(-1) - logits.min(-1) + math.log(vocab)
    term = 2.0 * logit_tolerance + (vocab + 4) * U32 * spread
    return float((weights * term).sum() + weights.size * U32 * (weights * spread).sum())
