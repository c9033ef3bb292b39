"""Learning-rate schedule, AdamW and gradient clipping for BERT pretraining.

The algorithms are those of the original BERT release: a linear warmup into a linear
decay to zero, and Adam with decoupled weight decay and *no* bias correction
("AdamWeightDecayOptimizer"). Keeping them exact lets a run here be compared step for step
with one made with the original code.

Nothing in this module knows how many devices train the model. The optimizer updates one
variable at a time through `AdamWeightDecay.update`, which the trainer may call once per
device copy of a variable; see that method for the contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

# Substrings of variable names that are not weight-decayed: LayerNorm scales and offsets,
# and every bias, as in the original release.
DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY = ("LayerNorm", "layer_norm", "bias")


# ---------------------------------------------------------------------------------------
# Learning-rate schedule
# ---------------------------------------------------------------------------------------


def _check_schedule_args(
    peak_learning_rate: float, num_warmup_steps: int, num_train_steps: int
) -> None:
    if not peak_learning_rate > 0:
        raise ValueError(f"peak_learning_rate must be > 0, got {peak_learning_rate!r}.")
    if not num_train_steps > 0:
        raise ValueError(f"num_train_steps must be > 0, got {num_train_steps!r}.")
    if not num_warmup_steps >= 0:
        raise ValueError(f"num_warmup_steps must be >= 0, got {num_warmup_steps!r}.")


def learning_rate(
    step: int, *, peak_learning_rate: float, num_warmup_steps: int, num_train_steps: int
) -> float:
    """The original release's learning rate after `step` updates.

    A linear decay from `peak_learning_rate` at step 0 to 0 at `num_train_steps` (it
    stays 0 after), overridden during the first `num_warmup_steps` steps by a linear
    warmup from 0. The decay is measured from step 0, not from the end of warmup, so the
    first post-warmup rate is `peak * (1 - num_warmup_steps / num_train_steps)`.

    Args:
        step: number of updates already applied; the first update uses step 0 (hence a
            rate of 0 when there is a warmup, as in the original).
        peak_learning_rate: the rate warmup climbs towards and decay starts from.
        num_warmup_steps: length of the warmup; 0 for none.
        num_train_steps: step at which the rate reaches 0.

    Returns:
        The learning rate, a Python float.
    """
    _check_schedule_args(peak_learning_rate, num_warmup_steps, num_train_steps)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step!r}.")
    if num_warmup_steps > 0 and step < num_warmup_steps:
        return peak_learning_rate * step / num_warmup_steps
    return peak_learning_rate * (1.0 - min(step, num_train_steps) / num_train_steps)


class LinearWarmupLinearDecay:
    """`learning_rate` for a step tensor, to be called inside a `tf.function`.

    Computed in float64 with the same operations in the same order as `learning_rate`,
    then rounded to float32, so that it equals `np.float32(learning_rate(step, ...))`.
    """

    def __init__(self, *, peak_learning_rate: float, num_warmup_steps: int, num_train_steps: int):
        _check_schedule_args(peak_learning_rate, num_warmup_steps, num_train_steps)
        self.peak_learning_rate = float(peak_learning_rate)
        self.num_warmup_steps = int(num_warmup_steps)
        self.num_train_steps = int(num_train_steps)

    def __call__(self, step: tf.Tensor | int) -> tf.Tensor:
        """Returns the learning rate after `step` updates, a float32 scalar tensor.

        Args:
            step: scalar integer (or float) tensor, the number of updates already applied.
        """
        step = tf.cast(step, tf.float64)
        peak = tf.constant(self.peak_learning_rate, tf.float64)
        total = tf.constant(float(self.num_train_steps), tf.float64)
        rate = peak * (1.0 - tf.minimum(step, total) / total)
        if self.num_warmup_steps > 0:
            warmup = tf.constant(float(self.num_warmup_steps), tf.float64)
            rate = tf.where(step < warmup, peak * step / warmup, rate)
        return tf.cast(rate, tf.float32)

    def get_config(self) -> dict:
        """The constructor's arguments; `LinearWarmupLinearDecay(**config)` rebuilds it."""
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "num_warmup_steps": self.num_warmup_steps,
            "num_train_steps": self.num_train_steps,
        }


# ---------------------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------------------


def _as_tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (or the tf.Variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class AdamWeightDecay(tf.Module):
    """Adam with decoupled weight decay and no bias correction, as in the original BERT.

    For a variable p with gradient g, one update is::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        update = m / (sqrt(v) + epsilon)
        if decays_weight(p): update += weight_decay_rate * p
        p = p - learning_rate * update

    Unlike `keras.optimizers.AdamW` there is no bias correction of m and v, and the decay
    is scaled by the learning rate exactly as above; this is what BERT checkpoints were
    trained with.

    The slots m and v are created when the optimizer is constructed, as float32 zeros
    shaped like each variable. Construct it where the model's variables were created (in
    the same scope) and outside any `tf.function`, so that the slots are placed like the
    variables. It is a `tf.Module`: `tf.train.Checkpoint(optimizer=opt)` saves and
    restores the slots (`opt.m`, `opt.v`); it does not track the model's variables, which
    belong to the model's own checkpoint entry.

    Attributes:
        m: first-moment slot variables, one per model variable, in order.
        v: second-moment slot variables, one per model variable, in order.
        names: the variable names given to the constructor.
        decay_flags: per variable, whether it is weight-decayed.
    """

    def __init__(
        self,
        variables: Sequence,
        names: Sequence[str],
        *,
        weight_decay_rate: float = 0.01,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-6,
        exclude_from_weight_decay: Sequence[str] = DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY,
    ):
        """Creates the slots for `variables`.

        Args:
            variables: the trainable variables, `tf.Variable` or `keras.Variable`, float32.
            names: one name per variable, matched against `exclude_from_weight_decay`;
                the trainer passes the original release's names
                (e.g. "bert/encoder/layer_0/attention/output/LayerNorm/gamma").
            weight_decay_rate: decoupled weight-decay coefficient; 0 disables decay.
            beta_1: decay rate of the first-moment estimate, in [0, 1).
            beta_2: decay rate of the second-moment estimate, in [0, 1).
            epsilon: added to sqrt(v) for numerical stability, > 0.
            exclude_from_weight_decay: a variable whose name contains any of these
                substrings is not weight-decayed.
        """
        super().__init__(name="adam_weight_decay")
        variables = [_as_tf_variable(v) for v in variables]
        names = list(names)
        if len(variables) != len(names):
            raise ValueError(
                f"AdamWeightDecay needs one name per variable; got {len(variables)} "
                f"variables and {len(names)} names."
            )
        for variable, name in zip(variables, names):
            if variable.dtype != tf.float32:
                raise ValueError(
                    f"AdamWeightDecay keeps float32 slots and updates float32 variables; "
                    f"variable {name!r} has dtype {variable.dtype.name}."
                )
        if not weight_decay_rate >= 0:
            raise ValueError(f"weight_decay_rate must be >= 0, got {weight_decay_rate!r}.")
        for arg, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= value < 1:
                raise ValueError(f"{arg} must be in [0, 1), got {value!r}.")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}.")
        if isinstance(exclude_from_weight_decay, str):
            raise TypeError(
                "exclude_from_weight_decay must be a sequence of substrings, not the single "
                f"string {exclude_from_weight_decay!r}; wrap it in a tuple."
            )

        self.weight_decay_rate = float(weight_decay_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.exclude_from_weight_decay = tuple(exclude_from_weight_decay)
        self.names = tuple(names)
        self.decay_flags = tuple(self._should_decay(name) for name in names)
        # References, not the variables: tf.Module would otherwise track the model's
        # variables under the optimizer, giving them a second (and shorter, so preferred)
        # path in checkpoints.
        self._variable_refs = tuple(v.ref() for v in variables)
        # Slot names follow the original release ("<variable>/adam_m"), which keeps the
        # mapping to its checkpoints obvious.
        self.m = [
            tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False, name=f"{n}/adam_m")
            for v, n in zip(variables, names)
        ]
        self.v = [
            tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False, name=f"{n}/adam_v")
            for v, n in zip(variables, names)
        ]

    def _should_decay(self, name: str) -> bool:
        if self.weight_decay_rate == 0:
            return False
        return not any(pattern in name for pattern in self.exclude_from_weight_decay)

    @property
    def model_variables(self) -> tuple[tf.Variable, ...]:
        """The variables being optimized, as tf.Variables (Keras variables unwrapped)."""
        return tuple(ref.deref() for ref in self._variable_refs)

    def decays_weight(self, index: int) -> bool:
        """Whether variable `index` is weight-decayed."""
        return self.decay_flags[index]

    def update(self, index: int, variable, gradient, learning_rate):
        """Applies one AdamW update to variable `index` and its slots.

        Reads and assigns `variable` as given and the slots `self.m[index]`,
        `self.v[index]`. When the variable has a copy on each of several devices, call this
        once per copy, each time with that copy as `variable` and in a context where the
        slots resolve to their copies on the same device, and with the same
        already-averaged gradient on every device.

        Args:
            index: position of the variable in the constructor's list.
            variable: the variable (or one device's copy of it) to update.
            gradient: float32 tensor shaped like the variable (IndexedSlices are densified).
            learning_rate: scalar, Python float or float32 tensor.

        Returns:
            The grouped assignment op (None when executing eagerly).
        """
        variable = _as_tf_variable(variable)
        m, v = self.m[index], self.v[index]
        gradient = tf.convert_to_tensor(gradient, dtype=tf.float32)
        learning_rate = tf.convert_to_tensor(learning_rate, dtype=tf.float32)

        next_m = self.beta_1 * m + (1.0 - self.beta_1) * gradient
        next_v = self.beta_2 * v + (1.0 - self.beta_2) * tf.square(gradient)
        update = next_m / (tf.sqrt(next_v) + self.epsilon)
        if self.decay_flags[index]:
            # Decoupled weight decay (Loshchilov & Hutter): added to the Adam step rather
            # than to the loss, so it does not pass through m and v.
            update += self.weight_decay_rate * variable
        next_variable = variable - learning_rate * update
        return tf.group(m.assign(next_m), v.assign(next_v), variable.assign(next_variable))

    def apply_gradients(self, gradients: Sequence, learning_rate):
        """Updates every variable with its gradient, on a single device.

        Args:
            gradients: one gradient per variable, in the constructor's order; a variable
                whose gradient is None is left alone (as in the original).
            learning_rate: scalar, Python float or float32 tensor.

        Returns:
            The grouped assignment op (None when executing eagerly).
        """
        gradients = list(gradients)
        variables = self.model_variables
        if len(gradients) != len(variables):
            raise ValueError(
                f"apply_gradients got {len(gradients)} gradients for {len(variables)} "
                "variables; pass one per variable (None to skip one)."
            )
        ops = [
            self.update(index, variable, gradient, learning_rate)
            for index, (variable, gradient) in enumerate(zip(variables, gradients))
            if gradient is not None
        ]
        return tf.group(*ops)


# ---------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------


def clip_by_global_norm(
    gradients: Sequence, clip_norm: float = 1.0
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Scales the gradients down so that their joint L2 norm is at most `clip_norm`.

    Apply it to the gradient averaged over all replicas, as the original release did
    with its single gradient; clipping each replica's partial gradient instead would
    give a different (and replica-count dependent) update.

    Args:
        gradients: list of tensors (None entries are passed through).
        clip_norm: the largest allowed global norm, > 0.

    Returns:
        (clipped gradients, global norm before clipping as a float32 scalar tensor).
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}.")
    clipped, global_norm = tf.clip_by_global_norm(list(gradients), clip_norm)
    return clipped, global_norm
