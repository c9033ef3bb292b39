"""BERT (Devlin et al., 2018) in Keras 3: the config, the encoder, the pretraining heads.

The architecture, initialisation and checkpoint-variable layout are those of the original
google-research/bert release: post-LayerNorm transformer layers, a tanh pooler over the
first token, a masked-LM head tied to the word-embedding table and evaluated only at the
masked positions (where pretraining also computes the last layer only), and a
next-sentence head. `original_name_map` pairs every variable with its name in an original
checkpoint.

Dropout is stateless: every mask is a pure function of a `dropout_seed` tensor passed to
`call` and a fixed number per dropout site, so a resumed run redraws exactly the masks
it would have drawn. Nothing here knows about devices or distribution strategies, and
nothing rules out `tf.function(jit_compile=True)` or a mixed-precision policy: shapes are
static per batch (except with `pack_tokens`, meant for uncompiled steps) and all logits
come back in float32.
"""

# Dimension legend for the shape comments:
#   B = batch size (per replica)
#   S = sequence length; in attention F = "from" (query) length, T = "to" (key) length
#   H = hidden size
#   N = number of attention heads
#   D = size per head, H / N
#   I = intermediate (feed-forward) size
#   P = masked positions per sequence (max_predictions_per_seq)
#   V = vocabulary size
#   (In the packed-token code T also counts a packed tensor's rows; see TokenPacking.)

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import keras
import tensorflow as tf

# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------

# Keys that the released multilingual `bert_config.json` files carry but that describe
# nothing the model computes (the original code never read them). They are accepted so
# those files load, and dropped; any other unknown key is an error.
IGNORED_CONFIG_KEYS = frozenset(
    {
        "directionality",
        "pooler_fc_size",
        "pooler_num_attention_heads",
        "pooler_num_fc_layers",
        "pooler_size_per_head",
        "pooler_type",
    }
)

_SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
_DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The hyperparameters of a BERT model: the fields and defaults of `bert_config.json`.

    The defaults are BERT-base's. Every field is checked on construction; a bad value
    raises ValueError naming the field, the value and what was expected.

    Attributes:
        vocab_size: number of rows of the word-embedding table (the WordPiece vocabulary).
        hidden_size: H, the width of every transformer layer.
        num_hidden_layers: number of transformer layers.
        num_attention_heads: N; must divide hidden_size.
        intermediate_size: I, the width of the feed-forward layer.
        hidden_act: activation of the feed-forward layer and of the MLM transform, one of
            `ACTIVATIONS` ("gelu" is the original release's tanh approximation).
        hidden_dropout_prob: dropout rate on the embeddings and on each sublayer's output.
        attention_probs_dropout_prob: dropout rate on the attention probabilities.
        max_position_embeddings: longest sequence the position table supports.
        type_vocab_size: number of segment (token type) ids.
        initializer_range: stddev of the truncated-normal weight initialiser.
    """

    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 16
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(_bad_value(name, value, "an integer"))
            if value <= 0:
                raise ValueError(_bad_value(name, value, "a positive integer"))
        for name in (*_DROPOUT_FIELDS, "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(_bad_value(name, value, "a number"))
            # JSON writes 0.0 as 0; store a float either way (the dataclass is frozen).
            object.__setattr__(self, name, float(value))
        for name in _DROPOUT_FIELDS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(_bad_value(name, getattr(self, name), "a rate in [0, 1)"))
        if not self.initializer_range > 0.0:
            raise ValueError(_bad_value("initializer_range", self.initializer_range, "> 0"))
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            expected = "one of " + ", ".join(repr(name) for name in ACTIVATIONS)
            raise ValueError(_bad_value("hidden_act", self.hidden_act, expected))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; every head must get "
                "hidden_size / num_attention_heads dimensions."
            )

    @property
    def head_size(self) -> int:
        """D, the width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "<dict>") -> BertConfig:
        """Builds a config from `bert_config.json`-style keys.

        Args:
            values: key → value; every field of the original bert_config.json is
                required. The keys in `IGNORED_CONFIG_KEYS` are accepted and dropped.
            source: where `values` came from (a file name), used in error messages.

        Returns:
            The validated BertConfig.

        Raises:
            ValueError: for a non-object, an unknown or missing key, or a bad value; the
                message starts with `source`.
        """
        if not isinstance(values, Mapping):
            raise ValueError(
                f"{source}: expected a JSON object of config keys, got {type(values).__name__}."
            )
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in known and key not in IGNORED_CONFIG_KEYS]
        if unknown:
            raise ValueError(
                f"{source}: " + "; ".join(_unknown_key(key, values[key], known) for key in unknown)
            )
        # Every key of the original bert_config.json is required: a config that omits,
        # say, num_hidden_layers would otherwise silently build BERT-base's 12.
        missing = [key for key in known if key not in values]
        if missing:
            raise ValueError(
                f"{source}: missing required key(s) {', '.join(map(repr, missing))}; a "
                "bert_config.json names all of: " + ", ".join(known) + "."
            )
        try:
            return cls(**{key: values[key] for key in known if key in values})
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BertConfig:
        """Reads a `bert_config.json` file; see `from_dict` for the accepted keys.

        Raises:
            FileNotFoundError: if `path` does not exist.
            ValueError: for invalid JSON (with line and column) or invalid contents.
        """
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"BERT config file not found: {path}") from None
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
            ) from None
        return cls.from_dict(values, source=path)

    def to_dict(self) -> dict[str, Any]:
        """The config as `bert_config.json` keys and values."""
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        """The config as the text of a `bert_config.json` file (sorted keys, final newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def _bad_value(name: str, value: Any, expected: str) -> str:
    return f"key '{name}' has value {value!r} ({type(value).__name__}); expected {expected}."


def _unknown_key(key: str, value: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "known keys: " + ", ".join(known) + "."
    return f"unknown key '{key}' (value {value!r}); {hint}"


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------


# Both GELUs have their derivative written out: the gradient is one elementwise pass over
# x (the input, kept anyway), recomputing what it needs. Differentiating the formula
# instead keeps x³ and the tanh from the forward pass and spends several passes over the
# [B, S, I] activations on the chain rule (90 ms of a BERT-base layer's 1.2 s on a 2-core
# CPU under XLA).
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _one_xla_cluster(function: Callable) -> Callable:
    """`function` (and its custom gradient) compiled as one XLA cluster.

    Inside a step that XLA compiles anyway it is inlined. In a step it does not compile,
    an element-wise chain becomes one pass over the tensor instead of one per operation:
    the tanh GELU's forward and backward over a [4096, 3072] float32 tensor (BERT-base's
    feed-forward, batch 32, sequence 128) took 72 ms on one core as TensorFlow operations
    and 29 ms compiled; the uncompiled step became 1.02-1.03× as fast at BERT-small, 1.04×
    at BERT-base. The functions compute half-precision inputs in float32 and round once
    at the end: compiled in bfloat16 arithmetic the GELU was no faster than TensorFlow's
    bfloat16 operations (XLA's CPU backend converts around every operation), in float32
    it took 24 ms instead of 57 ms for a [4096, 2048] tensor on one core.
    """
    # (Traced per input shape: relaxed shapes could leave the gradient's shape unknown.)
    return functools.wraps(function)(tf.function(function, jit_compile=True, autograph=False))


def _at_least_float32(x: tf.Tensor) -> tf.Tensor:
    """x in float32 if it is a half type, else as it is (float32, float64)."""
    return tf.cast(x, tf.float32) if x.dtype in (tf.bfloat16, tf.float16) else x


@_one_xla_cluster
@tf.custom_gradient
def gelu(x: tf.Tensor) -> tf.Tensor:
    """GELU, tanh approximation (Hendrycks & Gimpel, 2016), as the original release used.

    0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))); Hugging Face calls this "gelu_new".
    Half-precision inputs are computed in float32 and rounded once.
    """
    xf = _at_least_float32(x)

    def tanh_term(x):
        return tf.tanh(_GELU_C * (x + _GELU_A * x * x * x))

    def grad(dy):
        # d/dx = 0.5·(1 + t) + 0.5·x·(1 − t²)·sqrt(2/π)·(1 + 3·0.044715·x²)
        t = tanh_term(xf)
        inner_slope = _GELU_C * (1.0 + 3 * _GELU_A * xf * xf)
        slope = 0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * inner_slope
        return tf.cast(_at_least_float32(dy) * slope, dy.dtype)

    return tf.cast(0.5 * xf * (1.0 + tanh_term(xf)), x.dtype), grad


@_one_xla_cluster
@tf.custom_gradient
def gelu_exact(x: tf.Tensor) -> tf.Tensor:
    """GELU, exact: 0.5·x·(1 + erf(x / sqrt(2))); Hugging Face's "gelu". Half-precision
    inputs are computed in float32 and rounded once."""
    xf = _at_least_float32(x)

    def grad(dy):
        # d/dx = Φ(x) + x·φ(x), with φ the standard normal density.
        cdf = 0.5 * (1.0 + tf.math.erf(xf / math.sqrt(2.0)))
        slope = cdf + xf * tf.exp(-0.5 * xf * xf) / math.sqrt(2.0 * math.pi)
        return tf.cast(_at_least_float32(dy) * slope, dy.dtype)

    return tf.cast(0.5 * xf * (1.0 + tf.math.erf(xf / math.sqrt(2.0))), x.dtype), grad


def linear(x: tf.Tensor) -> tf.Tensor:
    """The identity."""
    return x


# `hidden_act` names with the original release's meaning, plus Hugging Face's alias for
# the tanh-approximated GELU.
ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "gelu": gelu,
    "gelu_new": gelu,
    "gelu_exact": gelu_exact,
    "relu": tf.nn.relu,
    "tanh": tf.tanh,
    "linear": linear,
}


def get_activation(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The activation function called `name` in `bert_config.json` (see `ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {name!r}; expected one of "
            + ", ".join(repr(known) for known in ACTIVATIONS)
            + "."
        )
    return ACTIVATIONS[name]


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------

LAYER_NORM_EPSILON = 1e-12
# Added to the attention scores of padding keys. Large enough that exp() underflows to 0
# after softmax, small enough to be finite in float16 (max 65504) and bfloat16.
MASK_ADDER = -10000.0

# Each dropout site draws its mask from fold_in(dropout_seed, site); sites must be distinct
# across the model, or two sites would drop the same units.
EMBEDDINGS_DROPOUT_SITE = 0
DROPOUT_SITES_PER_LAYER = 3  # attention probabilities, attention output, feed-forward output


def _initializer(config: BertConfig) -> keras.initializers.Initializer:
    return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


# How the backward pass sums a gradient over its rows (the gradients of the dense layers'
# biases and of LayerNorm's scale and offset). "reduce": a sum over the rows. "matmul": one
# [1, R] × [R, N] product with ones. The trainer uses "matmul" in steps XLA compiles for
# CPUs: there XLA fuses a row sum with the elementwise operations producing its input and
# runs it as a tree of windowed sums, 31-59 ms per BERT-small layer for the [4096, 2048]
# GELU gradient where summing the stored tensor takes 3 ms; the product reads the stored
# gradient, as the weight gradient's product does. Either way half-precision gradients
# are cast to float32 and summed (and the float32 biases take that sum as it is, never
# rounded to the half type: see Dense and add_bias): the CPU kernel of tf.nn.bias_add's
# gradient, which Keras's own Dense uses, sums a bfloat16 gradient in bfloat16 (a bias
# gradient near 1,000, summed over 2,048 rows, came out 29% low; the GPU kernel lost
# precision too, less; XLA's lowering of it sums in float32), and which of TensorFlow's
# CPU kernels sum half types in float32 differs by kernel and type (see
# test_bias_gradient_in_half_precision_is_the_float32_sum).
# Under XLA the cast fuses into the sum; without XLA it is one more pass over each
# gradient.
COLUMN_SUMS = ("reduce", "matmul")


def _check_column_sums(column_sums: str) -> str:
    if column_sums not in COLUMN_SUMS:
        raise ValueError(f"column_sums={column_sums!r}: expected one of {COLUMN_SUMS}")
    return column_sums


def column_sums(x: tf.Tensor, method: str = "matmul", dtype: Any = None) -> tf.Tensor:
    """Sums `x` [..., N] over every axis but the last, by `method` (see COLUMN_SUMS).

    Half-precision inputs are summed in float32; the [N] result is cast once to `dtype`
    (default: x's).
    """
    # (If XLA's simplifier ever turns a product with ones back into a reduction, the
    # profile of a CPU step shows `reduce-window` again: benchmarks/profile_training.py.)
    _check_column_sums(method)
    with tf.name_scope("column_sums"):
        n = x.shape[-1]
        rows = tf.reshape(x, [-1, n])  # [R, N]
        if rows.dtype in (tf.bfloat16, tf.float16):
            rows = tf.cast(rows, tf.float32)
        if method == "reduce":
            # The kernel of TensorFlow's own bias gradient: on CPUs twice as fast as
            # reduce_sum. (Given a half type it sums bfloat16 in bfloat16; cast first.)
            sums = tf.raw_ops.BiasAddGrad(out_backprop=rows)
        else:
            ones = tf.ones([1, tf.shape(rows)[0]], rows.dtype)
            sums = tf.reshape(tf.matmul(ones, rows), [n])
        return tf.cast(sums, dtype or x.dtype)


def add_bias(x: tf.Tensor, bias: tf.Tensor, method: str = "matmul") -> tf.Tensor:
    """x + bias ([..., N] + [N], the bias cast to x's dtype); the bias gradient is
    `column_sums(dy, method)` in the bias's dtype: a float32 bias of a half-precision x
    gets the float32 sum, never rounded to the half type."""

    @tf.custom_gradient
    def biased(x, bias):
        # (bias_add, as Keras's Dense: without XLA a little faster than a broadcast add.)
        added = tf.nn.bias_add(x, tf.cast(bias, x.dtype))
        return added, lambda dy: (dy, column_sums(dy, method, bias.dtype))

    return biased(x, bias)


def scale_and_offset(
    x: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor, method: str = "matmul"
) -> tf.Tensor:
    """x·scale + offset ([..., N] with [N], [N]); scale and offset gradients by `column_sums`."""

    @tf.custom_gradient
    def scaled(x, scale, offset):
        def grad(dy):
            return dy * scale, column_sums(dy * x, method), column_sums(dy, method)

        return x * scale + offset, grad

    return scaled(x, scale, offset)


class Dense(keras.layers.Dense):
    """keras.layers.Dense whose bias gradient is `column_sums(..., column_sums)`: summed in
    float32 in half precision (and kept in float32: the bias is not autocast, `add_bias`
    casts it), by a product with ones when `column_sums="matmul"`."""

    def __init__(self, units: int, column_sums: str = "reduce", **kwargs: Any):
        super().__init__(units, **kwargs)
        self.column_sums = _check_column_sums(column_sums)
        if column_sums == "matmul" and not self.use_bias:
            raise ValueError('Dense(column_sums="matmul") needs use_bias=True')

    def get_config(self) -> dict:
        return {**super().get_config(), "column_sums": self.column_sums}

    def add_weight(self, *args: Any, **kwargs: Any) -> keras.Variable:
        if kwargs.get("name") == "bias":  # read in its own dtype; add_bias casts it
            kwargs["autocast"] = False
        return super().add_weight(*args, **kwargs)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not self.use_bias:  # (Keras's input spec already asks for rank 2 or more)
            return super().call(inputs)
        x = keras.ops.matmul(inputs, self.kernel)
        return self.activation(add_bias(x, tf.identity(self.bias), self.column_sums))


class LayerNorm(keras.layers.LayerNormalization):
    """LayerNorm over the last axis, in float32 under a mixed policy; returns the compute
    dtype. With `column_sums="matmul"` the scale and offset gradients are by matmul."""

    def __init__(self, column_sums: str = "reduce", **kwargs: Any):
        kwargs.setdefault("epsilon", LAYER_NORM_EPSILON)
        super().__init__(**kwargs)
        self.column_sums = _check_column_sums(column_sums)
        if column_sums == "matmul" and (
            self.axis not in (-1, [-1]) or not (self.center and self.scale) or self.rms_scaling
        ):
            raise ValueError(
                'LayerNorm(column_sums="matmul") normalises the last axis with a scale and '
                "an offset; got another axis, center/scale off or rms_scaling"
            )

    def get_config(self) -> dict:
        return {**super().get_config(), "column_sums": self.column_sums}

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if self.column_sums == "reduce":
            return super().call(inputs)  # (Keras's statistics are float32 too)
        x = tf.cast(inputs, tf.float32)
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        normalized = (x - mean) * tf.math.rsqrt(variance + self.epsilon)
        scale, offset = tf.identity(self.gamma), tf.identity(self.beta)  # float32
        summed = scale_and_offset(normalized, scale, offset, self.column_sums)
        return tf.cast(summed, self.compute_dtype)


def _dense(
    units: int, config: BertConfig, name: str, column_sums: str = "reduce", **kwargs: Any
) -> Dense:
    return Dense(units, column_sums, kernel_initializer=_initializer(config), name=name, **kwargs)


def _layer_norm(name: str, dtype: Any, column_sums: str = "reduce") -> LayerNorm:
    return LayerNorm(column_sums, name=name, dtype=dtype)


# How dropout masks are drawn (see StatelessDropout). The trainer uses "hash", in steps
# compiled with XLA and in the others; "philox" (TensorFlow's own kernel) stays the
# layers' default.
DROPOUT_MASKS = ("philox", "hash")

# The 32-bit mixer of the "hash" masks: x ^= x >> 16; x *= M1; x ^= x >> 15; x *= M2;
# x ^= x >> 16 (the "lowbias32" constants of Chris Wellons's hash-prospector search, a
# bijection of uint32 whose output bits each flip with probability close to 1/2 when one
# input bit flips).
_MIX_SHIFTS = (16, 15, 16)
_MIX_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """The lowbias32 mixer on a uint32 tensor (multiplications wrap modulo 2³²)."""
    shifts = [tf.constant(shift, tf.uint32) for shift in _MIX_SHIFTS]
    for shift, multiplier in zip(shifts, _MIX_MULTIPLIERS):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift))
        x = x * tf.constant(multiplier, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shifts[-1]))


def hash_mask_bits(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """uint32 bits of the given shape: element i (row-major) gets mix(mix(i + k0) ^ k1).

    Args:
        shape: the int32 shape of the mask, at most 2³¹ − 1 elements.
        seed: int [2], a stateless seed; the key words k0, k1 are TensorFlow's stateless
            Philox draws from it (full-range uint32), so every seed has its own masks.
    """
    k = tf.random.stateless_uniform([2], seed, None, None, tf.uint32, alg="philox")
    index = tf.bitcast(tf.range(tf.reduce_prod(shape), dtype=tf.int32), tf.uint32)
    bits = _mix32(tf.bitwise.bitwise_xor(_mix32(index + k[0]), k[1]))
    return tf.reshape(bits, shape)


class StatelessDropout(keras.layers.Layer):
    """Dropout whose mask is a pure function of (`dropout_seed`, `site`).

    Each site first folds its number into the seed (`stateless_fold_in`); the mask is then
    drawn from that seed one of two ways (`masks`):

    - "philox": a float32 uniform per element from TensorFlow's stateless Philox-4x32-10,
      kept where it is ≥ rate. Its own kernel without XLA; under XLA the generator is
      expanded inline, and each element recomputes a whole 4-word Philox block (10 rounds)
      to keep one word of it: 10 ns an element on a 2-core CPU, 8% of a BERT-base step.
    - "hash": 32 bits per element from `hash_mask_bits` (a keyed integer hash of the
      element's index, four multiplications), kept where they are ≥ round(rate·2³²), and
      applied by `hash_dropout`: one XLA cluster each way, also where the step is not
      compiled. XLA fuses the hash into the multiplication that applies the mask; the
      compiled step was 10% faster with it than with "philox" at BERT-base on a 2-core
      CPU. Its keep probability is 1 − rate within 2⁻³³.

    Either way the kept units are scaled by 1/(1 − rate) in float32 (half types rounded
    once to their type).

    Either mask is reproducible for a fixed seed, site and input shape. "philox" masks
    also differ between a `jit_compile=True` step and an uncompiled one (XLA lays out
    Philox's stream differently); "hash" masks are the same in both for the same shapes.
    """

    def __init__(self, rate: float, site: int, masks: str = "philox", **kwargs: Any):
        super().__init__(**kwargs)
        if masks not in DROPOUT_MASKS:
            raise ValueError(f"masks={masks!r}; expected one of {', '.join(DROPOUT_MASKS)}.")
        self.rate = float(rate)
        self.site = site
        self.masks = masks

    def call(
        self, x: tf.Tensor, training: bool = False, dropout_seed: tf.Tensor | None = None
    ) -> tf.Tensor:
        """Zeroes each unit of `x` with probability `rate` when training; scales the rest.

        Args:
            x: any float tensor.
            training: a Python bool; no dropout when False.
            dropout_seed: int32/int64 [2], required when training with rate > 0.

        Returns:
            A tensor of the shape and dtype of `x`.
        """
        if not training or self.rate == 0.0:
            return x
        if dropout_seed is None:
            raise ValueError(
                f"Dropout '{self.path}' needs a dropout_seed (an int [2] tensor) when "
                "training=True; pass dropout_seed to the model call, or set the dropout "
                "probabilities in the config to 0."
            )
        seed = tf.random.experimental.stateless_fold_in(dropout_seed, self.site, alg="philox")
        if self.masks == "hash":
            count = x.shape.num_elements()
            if count is not None and count >= 2**31:
                raise ValueError(
                    f"Dropout '{self.path}': {count} elements in one mask, "
                    "more than the 2³¹ − 1 that hash masks can number. Lower "
                    "--batch_size (and raise --gradient_accumulation_steps to keep the "
                    "effective batch)."
                )
            return hash_dropout(x, seed, self.rate)
        keep = tf.random.stateless_uniform(tf.shape(x), seed, alg="philox") >= self.rate
        return _scale_kept(x, keep, self.rate)


def _scale_kept(x: tf.Tensor, keep: tf.Tensor, rate: float) -> tf.Tensor:
    """x·keep·(1/(1 − rate)), half types computed in float32 and rounded once: in
    bfloat16, `x * (1 / (1 - rate))` would scale by 1/(1 − rate) rounded to bfloat16
    (1.109375 for 1.1111 at rate 0.1, every kept unit 0.16% short). A product with the
    mask, not a select: a dropped NaN or infinity still gives a NaN (x·0), so a
    non-finite activation is not hidden from the step's finiteness check."""
    xf = _at_least_float32(x)
    return tf.cast(xf * tf.cast(keep, xf.dtype) * (1.0 / (1.0 - rate)), x.dtype)


@_one_xla_cluster
def _apply_hash_mask(x: tf.Tensor, seed: tf.Tensor, rate: float) -> tf.Tensor:
    """x·keep·(1/(1 − rate)), keep from `hash_mask_bits` (x's shape, `seed`); half
    types computed in float32 and rounded once."""
    threshold = tf.constant(min(round(rate * 2**32), 2**32 - 1), tf.uint32)
    return _scale_kept(x, hash_mask_bits(tf.shape(x), seed) >= threshold, rate)


def hash_dropout(x: tf.Tensor, seed: tf.Tensor, rate: float) -> tf.Tensor:
    """Dropout of `x` by the mask `hash_mask_bits(shape of x, seed) ≥ round(rate·2³²)`.

    One XLA cluster each way (inlined where the step is compiled anyway): the backward
    pass recomputes the mask from the seed instead of keeping it. The kept units are
    scaled by 1/(1 − rate) in float32 and rounded once to x's type (`_scale_kept`).
    Without XLA, on 2 cores of a Zen 4 CPU, forward and backward of a [32, 8, 128, 128]
    bfloat16 tensor took 3.5 ms against 15.1 ms with TensorFlow's Philox kernel and its
    operations, of a [3968, 512] one 1.1 against 7.9 ms.

    Args:
        x: a float tensor, fewer than 2³¹ elements (StatelessDropout refuses more where
            the shape is known when traced).
        seed: int [2], a stateless seed (the site's own).
        rate: the probability of dropping a unit, in [0, 1).
    """

    @tf.custom_gradient
    def dropout(x):
        def grad(dy):
            return _apply_hash_mask(dy, seed, rate)

        return _apply_hash_mask(x, seed, rate), grad

    return dropout(x)


# ---------------------------------------------------------------------------------------
# Packed tokens
# ---------------------------------------------------------------------------------------


# The packed rows are the real tokens rounded up to a multiple of this many rows (at most
# all B·S): the shapes a run sees stay few, so that the kernels made per shape (oneDNN's
# matrix products, the GELU's XLA cluster) are made once each, not once per batch.
PACKED_ROWS_MULTIPLE = 64


class TokenPacking(NamedTuple):
    """Where the real tokens of a padded [B, S] batch are, to compute on them alone.

    A packed tensor holds rows [T, ...]: the batch's real tokens in batch order, then the
    first padding positions, as many as round their count up to a multiple of
    `PACKED_ROWS_MULTIPLE` (at most B·S; at least one row). Those filler rows compute what
    the padded model computes at their positions, and nothing reads them.

    Attributes:
        positions: [T] int32, the flat position b·S + s of each packed row.
        row: [B·S] int32, each flat position's packed row; T for padding without one.
        batch_size: int32 scalar, B.
        seq_length: int32 scalar, S.
    """

    positions: tf.Tensor
    row: tf.Tensor
    batch_size: tf.Tensor
    seq_length: tf.Tensor


def token_packing(input_mask: tf.Tensor, multiple: int | None = None) -> TokenPacking:
    """The TokenPacking of `input_mask` [B, S] int (nonzero: a real token), its rows a
    multiple of `multiple` (default: PACKED_ROWS_MULTIPLE)."""
    multiple = multiple or PACKED_ROWS_MULTIPLE
    shape = tf.shape(input_mask)
    is_real = tf.reshape(input_mask, [-1]) != 0  # [B·S]
    total = tf.size(is_real)
    count = tf.reduce_sum(tf.cast(is_real, tf.int32))
    rows = tf.minimum(tf.maximum((count + multiple - 1) // multiple, 1) * multiple, total)
    order = tf.concat([tf.where(is_real)[:, 0], tf.where(~is_real)[:, 0]], axis=0)  # [B·S]
    order = tf.cast(order, tf.int32)
    place = tf.math.invert_permutation(order)  # each position's place in `order`
    return TokenPacking(order[:rows], tf.minimum(place, rows), shape[0], shape[1])


def packed_to_heads(x: tf.Tensor, packing: TokenPacking, count: int, num_heads: int) -> tf.Tensor:
    """Splits packed rows `x` [T, K·N·D] into K padded tensors of N heads: [K, B, N, S, D].

    One gather does the unpacking and the heads' transpose together. A padding position
    without a packed row gets another row's values (a placeholder, as good as any:
    attention never attends to padding, and no output is read at a padding query), and
    its gradient is dropped: exact, since a padding key's probabilities are exactly 0
    (see SelfAttention) and a padding query's output gets a zero gradient from
    `heads_to_packed`. (The filler rows' gradients are exactly 0 for the same reasons.)
    A sequence of padding only is the exception: it attends to its padding, so its
    outputs are not the padded model's. They must count with weight 0 (as the padded
    rows of a short final batch do), and then the gradients are exact too.
    """
    batch_size, seq_length = packing.batch_size, packing.seq_length
    rows = tf.shape(packing.positions)[0]  # T
    head_size = x.shape[-1] // (count * num_heads)  # (static: the gradient keeps the shapes)
    source = tf.reshape(tf.minimum(packing.row, rows - 1), [1, -1, 1, seq_length])  # [1,B,1,S]
    k = tf.reshape(tf.range(count), [-1, 1, 1, 1])
    n = tf.reshape(tf.range(num_heads), [1, 1, -1, 1])
    index = tf.reshape((source * count + k) * num_heads + n, [-1])  # over [K, B, N, S]
    # The padded position (k, b, n, s) of each packed row and head (t, k, n), for the
    # gradient: ((k·B + b)·N + n)·S + s with b·S + s = positions[t].
    b = tf.reshape(packing.positions // seq_length, [-1, 1, 1])  # [T, 1, 1]
    s = tf.reshape(packing.positions % seq_length, [-1, 1, 1])
    k, n = tf.reshape(k, [1, -1, 1]), tf.reshape(n, [1, 1, -1])
    inverse = tf.reshape(((k * batch_size + b) * num_heads + n) * seq_length + s, [-1])

    @tf.custom_gradient
    def split(x):
        def grad(dy):
            dy = tf.gather(tf.reshape(dy, [-1, head_size]), inverse)  # [T·K·N, D]
            return tf.reshape(dy, [rows, x.shape[-1]])

        heads = tf.gather(tf.reshape(x, [-1, head_size]), index)  # [K·B·N·S, D]
        return tf.reshape(heads, [count, batch_size, num_heads, seq_length, head_size]), grad

    return split(x)


def heads_to_packed(x: tf.Tensor, packing: TokenPacking) -> tf.Tensor:
    """Merges the heads of `x` [B, N, S, D] at the packed rows' positions: [T, N·D].

    One gather (the heads' transpose with it); the gradient is zero at padding positions
    without a packed row.
    """
    batch_size, seq_length = packing.batch_size, packing.seq_length
    num_heads, head_size = x.shape[1], x.shape[3]  # (static: the output keeps its width)
    rows = tf.shape(packing.positions)[0]  # T
    b = tf.reshape(packing.positions // seq_length, [-1, 1])  # [T, 1]
    s = tf.reshape(packing.positions % seq_length, [-1, 1])
    n = tf.reshape(tf.range(num_heads), [1, -1])
    index = tf.reshape((b * num_heads + n) * seq_length + s, [-1])  # over [T, N]
    # For the gradient: the packed row and head (t, n) of each padded (b, n, s), or the
    # zero row T·N.
    row = tf.reshape(packing.row, [batch_size, 1, seq_length])  # [B, 1, S]
    padded = tf.reshape(tf.range(num_heads), [1, -1, 1])
    inverse = tf.where(row < rows, row * num_heads + padded, rows * num_heads)  # [B, N, S]

    @tf.custom_gradient
    def merge(x):
        def grad(dy):
            dy = tf.pad(tf.reshape(dy, [-1, head_size]), [[0, 1], [0, 0]])  # [T·N + 1, D]
            return tf.reshape(tf.gather(dy, tf.reshape(inverse, [-1])), tf.shape(x))

        packed = tf.gather(tf.reshape(x, [-1, head_size]), index)  # [T·N, D]
        return tf.reshape(packed, [rows, num_heads * head_size]), grad

    return merge(x)


def gather_packed(x: tf.Tensor, positions: tf.Tensor, packing: TokenPacking) -> tf.Tensor:
    """The rows of packed `x` [T, C] at `positions` [B, F] (in [0, S)): [B, F, C].

    A padding position reads its filler row, or zeros. A position outside [0, S) is an
    error (it would read another sequence's token).
    """
    seq_length = tf.cast(packing.seq_length, positions.dtype)
    in_range = tf.reduce_all((positions >= 0) & (positions < seq_length))
    check = tf.debugging.Assert(
        in_range, ["masked_lm_positions outside [0, seq_length):", positions, seq_length]
    )
    with tf.control_dependencies([check]):
        flat = (
            positions
            + seq_length * tf.range(packing.batch_size, dtype=positions.dtype)[:, tf.newaxis]
        )
    return tf.gather(tf.pad(x, [[0, 1], [0, 0]]), tf.gather(packing.row, flat))


class BertEmbeddings(keras.layers.Layer):
    """Sum of word, position and token-type embeddings, then LayerNorm and dropout."""

    def __init__(
        self,
        config: BertConfig,
        dropout_masks: str = "philox",
        column_sums: str = "reduce",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.config = config
        dtype = self.dtype_policy
        self.layer_norm = _layer_norm("layer_norm", dtype, column_sums)
        self.dropout = StatelessDropout(
            config.hidden_dropout_prob, EMBEDDINGS_DROPOUT_SITE, dropout_masks, name="dropout",
            dtype=dtype,
        )  # fmt: skip

    def build(self, input_shape: Any) -> None:
        config = self.config

        def table(name: str, rows: int) -> keras.Variable:
            shape = (rows, config.hidden_size)
            return self.add_weight(shape=shape, initializer=_initializer(config), name=name)

        self.word_embeddings = table("word_embeddings", config.vocab_size)  # [V, H]
        self.position_embeddings = table("position_embeddings", config.max_position_embeddings)
        self.token_type_embeddings = table("token_type_embeddings", config.type_vocab_size)
        self.layer_norm.build((None, None, config.hidden_size))

    def call(
        self,
        token_ids: tf.Tensor,
        segment_ids: tf.Tensor,
        *,
        packing: TokenPacking | None = None,
        training: bool = False,
        dropout_seed: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Embeds `token_ids` [B, S] int with `segment_ids` [B, S] int.

        Returns [B, S, H]; with a `packing`, the packed rows only, [T, H].
        """
        seq_length = tf.shape(token_ids)[1]
        if packing is not None:
            token_ids = tf.gather(tf.reshape(token_ids, [-1]), packing.positions)  # [T]
            segment_ids = tf.gather(tf.reshape(segment_ids, [-1]), packing.positions)  # [T]
            positions = tf.gather(self.position_embeddings, packing.positions % seq_length)
        else:
            positions = self.position_embeddings[:seq_length]  # [S, H], for every sequence
        x = (
            tf.gather(self.word_embeddings, token_ids)  # [B, S, H] or [T, H]
            + positions
            + tf.gather(self.token_type_embeddings, segment_ids)
        )
        x = self.layer_norm(x)
        return self.dropout(x, training=training, dropout_seed=dropout_seed)


class SelfAttention(keras.layers.Layer):
    """Multi-head scaled dot-product self-attention with its output projection.

    As in Vaswani et al. (2017), "Attention is all you need", section 3.2.
    """

    def __init__(
        self,
        config: BertConfig,
        probs_dropout_site: int,
        dropout_masks: str = "philox",
        column_sums: str = "reduce",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        dtype = self.dtype_policy
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.column_sums = _check_column_sums(column_sums)
        # Holders of the original's variables; `_project_heads` uses them in one product.
        self.query = _dense(config.hidden_size, config, "query", column_sums, dtype=dtype)
        self.key = _dense(config.hidden_size, config, "key", column_sums, dtype=dtype)
        self.value = _dense(config.hidden_size, config, "value", column_sums, dtype=dtype)
        self.probs_dropout = StatelessDropout(
            config.attention_probs_dropout_prob, probs_dropout_site, dropout_masks,
            name="probs_dropout", dtype=dtype,
        )  # fmt: skip
        self.output_projection = _dense(
            config.hidden_size, config, "output_projection", column_sums, dtype=dtype
        )

    def build(self, input_shape: Any) -> None:
        shape = (None, None, self.num_heads * self.head_size)
        for dense in (self.query, self.key, self.value, self.output_projection):
            dense.build(shape)

    def call(
        self,
        x: tf.Tensor,
        attention_bias: tf.Tensor,
        *,
        queries: tf.Tensor | None = None,
        packing: TokenPacking | None = None,
        training: bool = False,
        dropout_seed: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Attends from every position of `queries` (default: `x`) to every unmasked one of `x`.

        Args:
            x: the layer input, [B, T, H] float: the keys and values; with a `packing`,
                the packed rows only, [T', H].
            attention_bias: [B, 1, 1, T] float32, 0 for keys to attend to, MASK_ADDER for
                padding.
            queries: [B, F, H] float, the rows of `x` to attend from; None: all of `x`.
            packing: the TokenPacking of a packed `x`; None: `x` is padded.
            training: apply dropout to the attention probabilities.
            dropout_seed: int [2]; see StatelessDropout.

        Returns:
            [B, F, H], the projected attention output (before dropout and residual); [T', H]
            for a packed `x` without `queries`.
        """
        if queries is None:
            # [B, N, S, D] each
            q, k, v = self._project_heads(x, (self.query, self.key, self.value), packing)
        else:
            (q,) = self._project_heads(queries, (self.query,))  # [B, N, F, D]
            k, v = self._project_heads(x, (self.key, self.value), packing)  # [B, N, T, D]
        # Scaling by 1/sqrt(D) keeps the scores' variance independent of the head size.
        scale = 1.0 / math.sqrt(self.head_size)
        scores = tf.matmul(q * tf.cast(scale, q.dtype), k, transpose_b=True)  # [B, N, F, T]
        # The softmax in float32 whatever the compute dtype: its exp and sum are where
        # half precision loses the most (and float16 overflows).
        # (Keras casts float call arguments to the compute dtype: back to float32. In
        # bfloat16 MASK_ADDER rounds to -9984, as good a "minus infinity" for exp().)
        scores = tf.cast(scores, tf.float32) + tf.cast(attention_bias, tf.float32)
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), q.dtype)  # [B, N, F, T]
        probs = self.probs_dropout(probs, training=training, dropout_seed=dropout_seed)
        context = tf.matmul(probs, v)  # [B, N, F, D]
        if packing is not None and queries is None:
            return self.output_projection(heads_to_packed(context, packing))  # [T', H]
        return self.output_projection(self._merge_heads(context))  # [B, F, H]

    def _project_heads(
        self, x: tf.Tensor, dense: tuple[Dense, ...], packing: TokenPacking | None = None
    ) -> list[tf.Tensor]:
        """The projections of `x` [B, S, H] by each of `dense`, split in heads: [B, N, S, D] each.

        The K projections are one [B·S, H] × [H, K·H] product (the kernels side by side:
        the same dot products, in one larger and faster GEMM) and one transpose; the
        variables stay the original's query, key and value. A packed `x` [T, H] (with its
        `packing`) is projected as it is, and the projections unpacked (`packed_to_heads`).
        """
        count = len(dense)
        kernel = tf.concat([tf.cast(d.kernel, x.dtype) for d in dense], axis=1)  # [H, K·H]
        bias = tf.concat([tf.identity(d.bias) for d in dense], axis=0)  # [K·H], float32
        hidden_size = self.num_heads * self.head_size
        projected = tf.matmul(tf.reshape(x, [-1, hidden_size]), kernel)  # [B·S or T, K·H]
        projected = add_bias(projected, bias, self.column_sums)
        if packing is not None:
            return tf.unstack(packed_to_heads(projected, packing, count, self.num_heads), num=count)
        batch_size, seq_length = tf.shape(x)[0], tf.shape(x)[1]
        shape = [batch_size, seq_length, count, self.num_heads, self.head_size]
        projected = tf.transpose(tf.reshape(projected, shape), [2, 0, 3, 1, 4])  # [K,B,N,S,D]
        # Unstacked, not indexed: the gradient of an unstack is one stack, while each of
        # K index slices has a gradient the size of the whole [K, B, N, S, D] tensor,
        # summed afterwards (without XLA: 0.42 s of a 5 s BERT-small step, now 0.015 s).
        return tf.unstack(projected, num=count, axis=0)

    def _merge_heads(self, x: tf.Tensor) -> tf.Tensor:
        batch_size, seq_length = tf.shape(x)[0], tf.shape(x)[2]
        x = tf.transpose(x, [0, 2, 1, 3])  # [B, S, N, D]
        return tf.reshape(x, [batch_size, seq_length, self.num_heads * self.head_size])  # [B,S,H]


class TransformerLayer(keras.layers.Layer):
    """One transformer layer, post-LayerNorm as in the original BERT.

    x ← LN(x + dropout(attention(x))), then x ← LN(x + dropout(W2·act(W1·x + b1) + b2)).
    """

    def __init__(
        self,
        config: BertConfig,
        layer_index: int,
        dropout_masks: str = "philox",
        column_sums: str = "reduce",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        first_site = EMBEDDINGS_DROPOUT_SITE + 1 + DROPOUT_SITES_PER_LAYER * layer_index
        hidden_dropout = config.hidden_dropout_prob
        dtype = self.dtype_policy
        self.attention = SelfAttention(
            config, first_site, dropout_masks, column_sums, name="self_attention", dtype=dtype
        )
        self.attention_dropout = StatelessDropout(
            hidden_dropout, first_site + 1, dropout_masks, name="attention_dropout", dtype=dtype
        )
        self.attention_layer_norm = _layer_norm("attention_layer_norm", dtype, column_sums)
        self.intermediate = _dense(
            config.intermediate_size, config, "intermediate", column_sums, dtype=dtype
        )
        self.activation = get_activation(config.hidden_act)
        self.ffn_output = _dense(config.hidden_size, config, "ffn_output", column_sums, dtype=dtype)
        self.ffn_dropout = StatelessDropout(
            hidden_dropout, first_site + 2, dropout_masks, name="ffn_dropout", dtype=dtype
        )
        self.ffn_layer_norm = _layer_norm("ffn_layer_norm", dtype, column_sums)

    def build(self, input_shape: Any) -> None:
        hidden = (None, None, self.ffn_output.units)  # [B, S, H]
        # In the order a first call would create them (the same initial values).
        self.attention.build(hidden)
        self.attention_layer_norm.build(hidden)
        self.intermediate.build(hidden)
        self.ffn_output.build((None, None, self.intermediate.units))
        self.ffn_layer_norm.build(hidden)

    def call(
        self,
        x: tf.Tensor,
        attention_bias: tf.Tensor,
        *,
        output_positions: tf.Tensor | None = None,
        packing: TokenPacking | None = None,
        training: bool = False,
        dropout_seed: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Maps `x` [B, S, H] to [B, S, H], or to [B, F, H] at `output_positions`.

        Args:
            x: [B, S, H] float, the layer input; with a `packing`, the packed rows only,
                [T, H] (the output too, unless `output_positions` are given).
            attention_bias: as in SelfAttention.
            output_positions: [B, F] int, the positions whose outputs are wanted; None:
                all. Every position still serves as a key and a value; only the queries,
                the residuals and the feed-forward network shrink to F rows.
            packing: the TokenPacking of a packed `x`; None: `x` is padded.
            training: a Python bool; apply dropout.
            dropout_seed: int [2]; see StatelessDropout.
        """
        drop = {"training": training, "dropout_seed": dropout_seed}
        if output_positions is not None:
            if packing is not None:
                queries = gather_packed(x, output_positions, packing)  # [B, F, H]
            else:
                queries = tf.gather(x, output_positions, batch_dims=1)  # [B, F, H]
            attention_output = self.attention(
                x, attention_bias, queries=queries, packing=packing, **drop
            )
            x = queries  # as the output
        else:
            # [B, S, H] or [T, H]
            attention_output = self.attention(x, attention_bias, packing=packing, **drop)
        x = self.attention_layer_norm(x + self.attention_dropout(attention_output, **drop))
        ffn_output = self.ffn_output(self.activation(self.intermediate(x)))  # [B,F,I] → [B,F,H]
        return self.ffn_layer_norm(x + self.ffn_dropout(ffn_output, **drop))


def attention_bias_from_mask(input_mask: tf.Tensor) -> tf.Tensor:
    """Turns `input_mask` [B, T] (1 = attend) into an additive score bias [B, 1, 1, T].

    The bias is 0 for real tokens and MASK_ADDER for padding, the same for every head
    and every query position; float32, as the softmax it is added before.
    """
    mask = tf.cast(input_mask[:, tf.newaxis, tf.newaxis, :], tf.float32)  # [B, 1, 1, T]
    return (1.0 - mask) * MASK_ADDER


class BertEncoder(keras.layers.Layer):
    """The BERT encoder: embeddings, `num_hidden_layers` transformer layers and the pooler."""

    def __init__(
        self,
        config: BertConfig,
        name: str = "encoder",
        dropout_masks: str = "philox",
        column_sums: str = "reduce",
        pack_tokens: bool = False,
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.config = config
        self.pack_tokens = pack_tokens
        dtype = self.dtype_policy
        self.embeddings = BertEmbeddings(
            config, dropout_masks, column_sums, name="embeddings", dtype=dtype
        )
        # Each layer is also an attribute: tf.train.Checkpoint does not see into the list
        # (Keras 3 tracks it only for Keras itself), and checkpoints must hold every weight.
        for i in range(config.num_hidden_layers):
            layer = TransformerLayer(
                config, i, dropout_masks, column_sums, name=f"layer_{i}", dtype=dtype
            )
            setattr(self, f"layer_{i}", layer)
        self.transformer_layers = [
            getattr(self, f"layer_{i}") for i in range(config.num_hidden_layers)
        ]
        self.pooler = _dense(
            config.hidden_size, config, "pooler", column_sums, activation="tanh", dtype=dtype
        )

    def build(self, input_shape: Any) -> None:
        self.embeddings.build(None)
        for layer in self.transformer_layers:
            layer.build(None)
        self.pooler.build((None, self.config.hidden_size))

    def call(
        self,
        token_ids: tf.Tensor,
        segment_ids: tf.Tensor,
        input_mask: tf.Tensor,
        *,
        output_positions: tf.Tensor | None = None,
        training: bool = False,
        dropout_seed: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Encodes a batch of sequences.

        Args:
            token_ids: [B, S] int, WordPiece ids.
            segment_ids: [B, S] int, 0 for sentence A, 1 for sentence B.
            input_mask: [B, S] int, 1 for real tokens, 0 for padding (never attended to).
            output_positions: [B, P] int, the positions whose outputs are wanted (the
                masked ones, in pretraining); None: all. With positions, the last layer
                computes only the rows that something reads (those P and the pooler's
                first token): the same values, with less work (see the comment below).
            training: a Python bool; apply dropout.
            dropout_seed: int32/int64 [2]; required when training with dropout rates > 0.

        Returns:
            (sequence_output, pooled_output [B, H]), in the compute dtype; sequence_output
            is [B, S, H], or [B, P, H] (the rows at `output_positions`) when they are given.

        With `pack_tokens` (a constructor argument) and `output_positions`, the layers
        compute on the real tokens only (see the comment below); shapes then vary with the
        batch's padding, which XLA does not compile.
        """
        max_length = self.config.max_position_embeddings
        if token_ids.shape[1] is not None and token_ids.shape[1] > max_length:
            raise ValueError(
                f"Sequences of length {token_ids.shape[1]} are longer than "
                f"max_position_embeddings={max_length} of the BERT config."
            )
        drop = {"training": training, "dropout_seed": dropout_seed}
        # Packed tokens: the projections, feed-forward networks, residuals, LayerNorms and
        # dropouts see only the T real tokens of the batch, rows [T, H] (and a few filler
        # rows, see TokenPacking); the attention scores alone are computed on the padded
        # [B, S] layout (the projections are unpacked there, and the context packed
        # again). Padding is never attended to and never read, so the values are those of
        # the padded computation, with about T / (B·S) of its work; the exceptions, a
        # sequence of padding only and a prediction at a padding position, must have
        # weight 0 (as the data's padding does). The dropout masks are drawn for the
        # packed shapes: other masks than a padded run's, from the same distribution.
        packing = None
        if self.pack_tokens and output_positions is not None:
            packing = token_packing(input_mask)
        x = self.embeddings(token_ids, segment_ids, packing=packing, **drop)  # [B, S, H]|[T, H]
        attention_bias = attention_bias_from_mask(input_mask)  # [B, 1, 1, T] float32
        *layers, last = self.transformer_layers
        for layer in layers:
            x = layer(x, attention_bias, packing=packing, **drop)  # [B, S, H] or [T, H]
        if output_positions is None:
            x = last(x, attention_bias, **drop)  # [B, S, H]
            return x, self.pooler(x[:, 0])  # pooled [B, H], from the first ([CLS]) token
        # Pretraining reads the last layer's output at P + 1 of S positions only. Every
        # position is still a key and a value there, but the queries, the attention
        # output projection, the residuals, LayerNorms and the feed-forward network need
        # only those rows: at S = 128 and P = 20 that saves 70% of the last layer's
        # products, forward and backward (18% of the layers' at 4 layers, 6% at 12).
        # The dropout masks of those rows are drawn for the [B, P + 1, H] shape: other
        # masks than a full layer's, from the same distribution.
        first = tf.zeros_like(output_positions[:, :1])  # [B, 1], the [CLS] token
        rows = tf.concat([first, output_positions], axis=1)  # [B, P + 1]
        x = last(x, attention_bias, output_positions=rows, packing=packing, **drop)
        return x[:, 1:], self.pooler(x[:, 0])  # [B, P, H], [B, H]


class MaskedLMHead(keras.layers.Layer):
    """Predicts the original token at each masked position.

    Its output weights are the word-embedding table (tied, as in the original), passed to
    `call`; only the transform and an output bias belong to this layer.
    """

    def __init__(
        self,
        config: BertConfig,
        name: str = "mlm_head",
        column_sums: str = "reduce",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.config = config
        dtype = self.dtype_policy
        self.transform = _dense(config.hidden_size, config, "transform", column_sums, dtype=dtype)
        self.activation = get_activation(config.hidden_act)
        self.layer_norm = _layer_norm("layer_norm", dtype, column_sums)

    def build(self, input_shape: Any) -> None:
        hidden_size = self.config.hidden_size
        self.transform.build((None, None, hidden_size))
        self.layer_norm.build((None, None, hidden_size))
        # Kept in float32 and added after the cast of the logits (no autocast).
        self.output_bias = self.add_weight(
            shape=(self.config.vocab_size,), initializer="zeros", name="output_bias", autocast=False
        )

    def call(self, masked_output: tf.Tensor, word_embeddings: tf.Tensor) -> tf.Tensor:
        """Masked-LM logits.

        Args:
            masked_output: [B, P, H], the encoder's output at the masked positions.
            word_embeddings: [V, H], the encoder's word-embedding table.

        Returns:
            [B, P, V] float32 logits.
        """
        x = self.layer_norm(self.activation(self.transform(masked_output)))  # [B, P, H]
        # One [B·P, H] × [H, V] product. A batched matmul of [B, P, H] with the 2-D table
        # would broadcast the table, and its gradient would build one [V, H] product per
        # sequence before summing them (B × the table's size of memory traffic: 500 MB a
        # step for BERT's vocabulary at hidden 128, batch 32).
        shape = tf.shape(x)
        flat = tf.reshape(x, [-1, self.config.hidden_size])  # [B·P, H]
        logits = tf.matmul(flat, word_embeddings, transpose_b=True)  # [B·P, V]
        logits = tf.reshape(logits, tf.concat([shape[:2], [-1]], axis=0))  # [B, P, V]
        # (The output bias keeps TensorFlow's gradient: XLA sums its [B·P, V] gradient
        # well, and a product with ones over V = 30,522 columns took 12× as long.)
        return tf.cast(logits, tf.float32) + self.output_bias


class NextSentenceHead(keras.layers.Layer):
    """Classifies the pooled output: is sentence B the real successor of A (0) or not (1)."""

    def __init__(self, config: BertConfig, name: str = "nsp_head", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.config = config

    def build(self, input_shape: Any) -> None:
        # [2, H]: the original's layout, the transpose of a Dense kernel.
        self.output_weights = self.add_weight(
            shape=(2, self.config.hidden_size),
            initializer=_initializer(self.config),
            name="output_weights",
        )
        self.output_bias = self.add_weight(
            shape=(2,), initializer="zeros", name="output_bias", autocast=False
        )

    def call(self, pooled_output: tf.Tensor) -> tf.Tensor:
        """Maps `pooled_output` [B, H] to float32 logits [B, 2]."""
        logits = tf.matmul(pooled_output, self.output_weights, transpose_b=True)  # [B, 2]
        return tf.cast(logits, tf.float32) + self.output_bias


class BertPretrainingModel(keras.Model):
    """The encoder with the masked-LM and next-sentence heads.

    Pass `dtype="mixed_bfloat16"` or `"mixed_float16"` (a Keras dtype policy) for mixed
    precision: the variables stay float32, the matrix products run in the half type,
    and LayerNorm, the attention softmax and the logits are computed in float32. Every
    sublayer takes the model's policy (not the global one). `dropout_masks` ("philox" or
    "hash") picks how every dropout site draws its masks (see StatelessDropout),
    `column_sums` ("reduce" or "matmul") how the backward pass sums bias and LayerNorm
    gradients over rows (see COLUMN_SUMS); neither changes what is computed beyond rounding
    (the masks: which units drop). Either way, half-precision gradients are summed in
    float32. `pack_tokens=True` computes the encoder on the real tokens only (see
    BertEncoder.call): the same values with less work where batches hold padding, but
    shapes that vary per batch (not for XLA) and other dropout masks.

    Attributes:
        config: the BertConfig.
        encoder: the BertEncoder (the part kept for fine-tuning).
        mlm_head: the MaskedLMHead.
        nsp_head: the NextSentenceHead.
    """

    def __init__(
        self,
        config: BertConfig,
        name: str = "bert_pretraining",
        dropout_masks: str = "philox",
        column_sums: str = "reduce",
        pack_tokens: bool = False,
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        self.config = config
        dtype = self.dtype_policy
        self.encoder = BertEncoder(
            config,
            dropout_masks=dropout_masks,
            column_sums=column_sums,
            pack_tokens=pack_tokens,
            dtype=dtype,
        )
        self.mlm_head = MaskedLMHead(config, column_sums=column_sums, dtype=dtype)
        self.nsp_head = NextSentenceHead(config, dtype=dtype)

    def call(
        self,
        features: Mapping[str, tf.Tensor],
        training: bool = False,
        dropout_seed: tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        """Runs the encoder and both heads.

        Args:
            features: a dict with "input_ids", "input_mask", "segment_ids" ([B, S] int) and
                "masked_lm_positions" ([B, P] int); other keys are ignored.
            training: a Python bool; apply dropout.
            dropout_seed: int32/int64 [2]; required when training with dropout rates > 0.
                The trainer derives it from (run seed, step, replica).

        Returns:
            {"mlm_logits": [B, P, V] float32, "nsp_logits": [B, 2] float32}.
        """
        masked_output, pooled_output = self.encoder(
            features["input_ids"],
            features["segment_ids"],
            features["input_mask"],
            output_positions=features["masked_lm_positions"],
            training=training,
            dropout_seed=dropout_seed,
        )  # [B, P, H], [B, H]
        word_embeddings = self.encoder.embeddings.word_embeddings
        mlm_logits = self.mlm_head(masked_output, word_embeddings)
        return {"mlm_logits": mlm_logits, "nsp_logits": self.nsp_head(pooled_output)}

    def build(self, input_shape: Any = None) -> None:
        self.encoder.build(None)
        self.mlm_head.build(None)
        self.nsp_head.build(None)

    def build_weights(self) -> None:
        """Creates every variable now, from the config alone (nothing is traced or run).

        Call it under the distribution strategy's scope, before the first traced step.
        The variables' shapes depend only on the config, not on the batch. Each layer's
        `build` creates its variables in the order a first call would (so with the same
        initial values): left to Keras, the model would be traced once more just to
        create them (0.1 s for the tests' two-layer model, about 0.4 s at BERT-base's
        sizes, on 2 CPU cores).
        """
        if not self.built:
            self.build(None)


# ---------------------------------------------------------------------------------------
# Losses and metrics, as sums and counts
# ---------------------------------------------------------------------------------------


@_one_xla_cluster
def _cross_entropy_parts(logits: tf.Tensor, ids: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """-log softmax(logits)[id], [argmax == id] and the cross-entropy's gradient with
    respect to the logits (softmax − one-hot), from one read of [..., V] float32 logits.
    An id outside [0, V) gives a NaN cross-entropy (as TensorFlow's kernel does on CPUs)."""
    vocab = tf.shape(logits)[-1]
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    exp = tf.exp(shifted)
    total = tf.reduce_sum(exp, axis=-1)
    target = tf.gather(shifted, ids[..., None], batch_dims=len(ids.shape))[..., 0]
    valid = (ids >= 0) & (ids < vocab)
    cross_entropy = tf.where(valid, tf.math.log(total) - target, float("nan"))
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.cast(tf.equal(predicted, ids), tf.float32)
    gradient = exp / total[..., None] - tf.one_hot(ids, vocab, dtype=logits.dtype)
    return cross_entropy, correct, gradient


def sparse_cross_entropy(logits: tf.Tensor, ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Softmax cross-entropy of float32 logits [..., V] against integer ids [...], and
    whether the argmax is the id (float32 1 or 0; the first of tied maxima counts).

    One XLA cluster (inlined where the step is compiled anyway) computes both and the
    gradient, which the backward pass only scales row by row. Forward and backward of
    BERT-small's masked-LM loss ([640, 30522] logits) on 2 cores of a Zen 4 CPU: 57-59
    ms by TensorFlow's fused kernel (`sparse_softmax_cross_entropy_with_logits`) and an
    argmax, 34-36 ms this way (inside an XLA step 35-37 against 27-28 ms). A log-softmax
    and a gather would scatter the gradient into zeros of the logits' size.
    """

    @tf.custom_gradient
    def cross_entropy(logits):
        loss, correct, gradient = _cross_entropy_parts(logits, ids)

        def grad(d_loss, d_correct):
            del d_correct  # a step function of the logits: no gradient
            return gradient * d_loss[..., None]

        return (loss, correct), grad

    return cross_entropy(logits)


def masked_lm_sums(
    mlm_logits: tf.Tensor, masked_lm_ids: tf.Tensor, masked_lm_weights: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Weighted masked-LM cross-entropy and accuracy, summed over the batch.

    The caller divides by the weight sum of the global batch (over all replicas).

    Args:
        mlm_logits: [B, P, V] float.
        masked_lm_ids: [B, P] int, the original tokens at the masked positions.
        masked_lm_weights: [B, P] float, 1 for real predictions, 0 for padding.

    Returns:
        float32 scalars: "loss_sum" (Σ weight·cross-entropy), "weight_sum" (Σ weight) and
        "correct_sum" (Σ weight·[argmax == id]).
    """
    logits = tf.cast(mlm_logits, tf.float32)
    weights = tf.cast(masked_lm_weights, tf.float32)
    ids = tf.cast(masked_lm_ids, tf.int32)
    cross_entropy, correct = sparse_cross_entropy(logits, ids)  # [B, P] each
    return {
        "loss_sum": tf.reduce_sum(weights * cross_entropy),
        "weight_sum": tf.reduce_sum(weights),
        "correct_sum": tf.reduce_sum(weights * correct),
    }


def next_sentence_sums(
    nsp_logits: tf.Tensor,
    next_sentence_labels: tf.Tensor,
    example_weights: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """Next-sentence cross-entropy and accuracy, summed over the batch.

    Args:
        nsp_logits: [B, 2] float.
        next_sentence_labels: [B] or [B, 1] int, 0 = B follows A, 1 = B is random.
        example_weights: [B] or [B, 1] float, 0 for padding examples (e.g. those that fill
            the last evaluation batch); None weighs every example 1.

    Returns:
        float32 scalars: "loss_sum" (Σ weight·cross-entropy), "count" (Σ weight, B when
        unweighted) and "correct_sum" (Σ weight·[argmax == label]).
    """
    logits = tf.cast(nsp_logits, tf.float32)
    labels = tf.reshape(tf.cast(next_sentence_labels, tf.int32), [-1])  # [B]
    if example_weights is None:
        weights = tf.ones_like(labels, tf.float32)
    else:
        weights = tf.reshape(tf.cast(example_weights, tf.float32), [-1])  # [B]
    cross_entropy, correct = sparse_cross_entropy(logits, labels)  # [B] each
    return {
        "loss_sum": tf.reduce_sum(weights * cross_entropy),
        "count": tf.reduce_sum(weights),
        "correct_sum": tf.reduce_sum(weights * correct),
    }


# ---------------------------------------------------------------------------------------
# Checkpoint names of the original release
# ---------------------------------------------------------------------------------------

# The one place where the original release's names appear. Keys are Keras variable paths
# below the BertPretrainingModel; a variable's full `.path` starts with the model's name.
_ORIGINAL_NAMES = {
    "encoder/embeddings/word_embeddings": "bert/embeddings/word_embeddings",
    "encoder/embeddings/position_embeddings": "bert/embeddings/position_embeddings",
    "encoder/embeddings/token_type_embeddings": "bert/embeddings/token_type_embeddings",
    "encoder/embeddings/layer_norm/gamma": "bert/embeddings/LayerNorm/gamma",
    "encoder/embeddings/layer_norm/beta": "bert/embeddings/LayerNorm/beta",
    "encoder/pooler/kernel": "bert/pooler/dense/kernel",
    "encoder/pooler/bias": "bert/pooler/dense/bias",
    "mlm_head/transform/kernel": "cls/predictions/transform/dense/kernel",
    "mlm_head/transform/bias": "cls/predictions/transform/dense/bias",
    "mlm_head/layer_norm/gamma": "cls/predictions/transform/LayerNorm/gamma",
    "mlm_head/layer_norm/beta": "cls/predictions/transform/LayerNorm/beta",
    "mlm_head/output_bias": "cls/predictions/output_bias",
    "nsp_head/output_weights": "cls/seq_relationship/output_weights",
    "nsp_head/output_bias": "cls/seq_relationship/output_bias",
}
# Within "encoder/layer_{i}/" (Keras) and "bert/encoder/layer_{i}/" (original).
_ORIGINAL_LAYER_NAMES = {
    "self_attention/query/kernel": "attention/self/query/kernel",
    "self_attention/query/bias": "attention/self/query/bias",
    "self_attention/key/kernel": "attention/self/key/kernel",
    "self_attention/key/bias": "attention/self/key/bias",
    "self_attention/value/kernel": "attention/self/value/kernel",
    "self_attention/value/bias": "attention/self/value/bias",
    "self_attention/output_projection/kernel": "attention/output/dense/kernel",
    "self_attention/output_projection/bias": "attention/output/dense/bias",
    "attention_layer_norm/gamma": "attention/output/LayerNorm/gamma",
    "attention_layer_norm/beta": "attention/output/LayerNorm/beta",
    "intermediate/kernel": "intermediate/dense/kernel",
    "intermediate/bias": "intermediate/dense/bias",
    "ffn_output/kernel": "output/dense/kernel",
    "ffn_output/bias": "output/dense/bias",
    "ffn_layer_norm/gamma": "output/LayerNorm/gamma",
    "ffn_layer_norm/beta": "output/LayerNorm/beta",
}
_KERAS_PATHS = {original: path for path, original in _ORIGINAL_NAMES.items()}
_KERAS_LAYER_PATHS = {original: path for path, original in _ORIGINAL_LAYER_NAMES.items()}


def original_variable_name(variable_or_path: keras.Variable | str) -> str:
    """The original release's checkpoint name of a variable of BertPretrainingModel.

    Args:
        variable_or_path: a Keras variable, or its `.path`
            (e.g. "bert_pretraining/encoder/layer_0/self_attention/query/kernel"); any
            prefix before "encoder/", "mlm_head/" or "nsp_head/" is ignored.

    Returns:
        The original name, e.g. "bert/encoder/layer_0/attention/self/query/kernel".

    Raises:
        ValueError: if the path is not one of the model's variables.
    """
    path = variable_or_path if isinstance(variable_or_path, str) else variable_or_path.path
    layer = re.search(r"(?:^|/)encoder/layer_(\d+)/(.+)$", path)
    if layer and layer.group(2) in _ORIGINAL_LAYER_NAMES:
        return f"bert/encoder/layer_{layer.group(1)}/{_ORIGINAL_LAYER_NAMES[layer.group(2)]}"
    for keras_path, original in _ORIGINAL_NAMES.items():
        if path == keras_path or path.endswith("/" + keras_path):
            return original
    raise ValueError(f"No original BERT checkpoint name for the Keras variable path {path!r}.")


def keras_variable_path(original_name: str) -> str:
    """The inverse of `original_variable_name`: the Keras path below the model.

    Args:
        original_name: e.g. "bert/encoder/layer_0/attention/self/query/kernel".

    Returns:
        The path relative to the BertPretrainingModel, e.g.
        "encoder/layer_0/self_attention/query/kernel".

    Raises:
        ValueError: if the name is not one of the original model's variables.
    """
    layer = re.fullmatch(r"bert/encoder/layer_(\d+)/(.+)", original_name)
    if layer and layer.group(2) in _KERAS_LAYER_PATHS:
        return f"encoder/layer_{layer.group(1)}/{_KERAS_LAYER_PATHS[layer.group(2)]}"
    if original_name in _KERAS_PATHS:
        return _KERAS_PATHS[original_name]
    raise ValueError(f"{original_name!r} is not a variable name of the original BERT model.")


def original_name_map(model: keras.Layer) -> dict[str, keras.Variable]:
    """Every variable of a built model, keyed by its original checkpoint name.

    Args:
        model: a built BertPretrainingModel (or BertEncoder, whose names are the "bert/"
            subset).

    Returns:
        original name → variable, one entry per variable.

    Raises:
        ValueError: if the model is not built, or a variable has no original name, or two
            variables share one.
    """
    if not model.weights:
        raise ValueError(f"Model '{model.name}' has no variables yet; call build_weights().")
    names: dict[str, keras.Variable] = {}
    for variable in model.weights:
        name = original_variable_name(variable)
        if name in names:
            raise ValueError(
                f"Variables {names[name].path!r} and {variable.path!r} both map to {name!r}."
            )
        names[name] = variable
    return names
