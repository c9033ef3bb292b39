"""Learning-rate schedules, AdamW, LAMB and gradient clipping for BERT pretraining.

The defaults are the original BERT release's algorithms: a linear warmup into a linear
decay to zero, and Adam with decoupled weight decay and *no* bias correction
("AdamWeightDecayOptimizer"). Keeping them exact lets a run here be compared step for step
with one made with the original code. For large global batches there is LAMB (You et
al., 2019) with a polynomial decay, as in NVIDIA's BERT recipe.

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
    peak_learning_rate: float, num_warmup_steps: int, num_train_steps: int, power: float = 1.0
) -> None:
    if not peak_learning_rate > 0:
        raise ValueError(f"peak_learning_rate must be > 0, got {peak_learning_rate!r}.")
    if not num_train_steps > 0:
        raise ValueError(f"num_train_steps must be > 0, got {num_train_steps!r}.")
    if not num_warmup_steps >= 0:
        raise ValueError(f"num_warmup_steps must be >= 0, got {num_warmup_steps!r}.")
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power!r}.")


def learning_rate(
    step: int,
    *,
    peak_learning_rate: float,
    num_warmup_steps: int,
    num_train_steps: int,
    power: float = 1.0,
) -> float:
    """The learning rate after `step` updates: linear warm-up, then polynomial decay.

    peak · (1 - min(step, num_train_steps) / num_train_steps) ** power, overridden during
    the first `num_warmup_steps` steps by a linear warm-up from 0. The decay is measured
    from step 0, not from the end of warm-up, so the first post-warm-up rate is
    `peak * (1 - num_warmup_steps / num_train_steps) ** power`. power 1 is the original
    release's linear decay; NVIDIA's LAMB recipe uses 0.5.

    Args:
        step: number of updates already applied; the first update uses step 0 (hence a
            rate of 0 when there is a warm-up, as in the original).
        peak_learning_rate: the rate warm-up climbs towards and decay starts from.
        num_warmup_steps: length of the warm-up; 0 for none.
        num_train_steps: step at which the rate reaches 0.
        power: exponent of the decay, > 0.

    Returns:
        The learning rate, a Python float.
    """
    _check_schedule_args(peak_learning_rate, num_warmup_steps, num_train_steps, power)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step!r}.")
    if num_warmup_steps > 0 and step < num_warmup_steps:
        return peak_learning_rate * step / num_warmup_steps
    remaining = 1.0 - min(step, num_train_steps) / num_train_steps
    return peak_learning_rate * (remaining if power == 1.0 else remaining**power)


class WarmupPolynomialDecay:
    """`learning_rate` for a step tensor, to be called inside a `tf.function`.

    Computed in float64 with the same operations in the same order as `learning_rate`,
    then rounded to float32, so that it equals `np.float32(learning_rate(step, ...))`.
    """

    def __init__(
        self,
        *,
        peak_learning_rate: float,
        num_warmup_steps: int,
        num_train_steps: int,
        power: float = 1.0,
    ):
        _check_schedule_args(peak_learning_rate, num_warmup_steps, num_train_steps, power)
        self.peak_learning_rate = float(peak_learning_rate)
        self.num_warmup_steps = int(num_warmup_steps)
        self.num_train_steps = int(num_train_steps)
        self.power = float(power)

    def __call__(self, step: tf.Tensor | int) -> tf.Tensor:
        """Returns the learning rate after `step` updates, a float32 scalar tensor.

        Args:
            step: scalar integer (or float) tensor, the number of updates already applied.
        """
        step = tf.cast(step, tf.float64)
        peak = tf.constant(self.peak_learning_rate, tf.float64)
        total = tf.constant(float(self.num_train_steps), tf.float64)
        remaining = 1.0 - tf.minimum(step, total) / total
        if self.power != 1.0:
            remaining = tf.pow(remaining, self.power)
        rate = peak * remaining
        if self.num_warmup_steps > 0:
            warmup = tf.constant(float(self.num_warmup_steps), tf.float64)
            rate = tf.where(step < warmup, peak * step / warmup, rate)
        return tf.cast(rate, tf.float32)

    def get_config(self) -> dict:
        """The constructor's arguments; `WarmupPolynomialDecay(**config)` rebuilds it."""
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "num_warmup_steps": self.num_warmup_steps,
            "num_train_steps": self.num_train_steps,
            "power": self.power,
        }


# ---------------------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------------------


def _as_tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (or the tf.Variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class _AdamFamily(tf.Module):
    """What AdamW and LAMB share: moment slots, decay flags, the per-variable contract.

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
        name: str,
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
            name: the module's name.
        """
        super().__init__(name=name)
        variables = [_as_tf_variable(v) for v in variables]
        names = list(names)
        if len(variables) != len(names):
            raise ValueError(
                f"{type(self).__name__} needs one name per variable; got {len(variables)} "
                f"variables and {len(names)} names."
            )
        for variable, var_name in zip(variables, names):
            if variable.dtype != tf.float32:
                raise ValueError(
                    f"{type(self).__name__} keeps float32 slots and updates float32 "
                    f"variables; variable {var_name!r} has dtype {variable.dtype.name}."
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
        self.decay_flags = tuple(self._should_decay(var_name) for var_name in names)
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

    def slots(self, index: int) -> tuple[tf.Variable, tf.Variable]:
        """The slot variables (m, v) of variable `index`."""
        return self.m[index], self.v[index]

    def decays_weight(self, index: int) -> bool:
        """Whether variable `index` is weight-decayed."""
        return self.decay_flags[index]

    def update(
        self, index: int, variable, gradient, learning_rate, count=None, slots=None, apply=None
    ) -> tf.Operation | None:
        """Applies one update to variable `index` and its slots.

        Reads and assigns `variable` and `slots` as given. When the variable has a copy on
        each of several devices, call this once per copy, each time with that copy as
        `variable`, the slots' copies on the same device as `slots` (or, inside
        `strategy.extended.update`, `slots=None`, where the slot variables resolve to
        the local copies), and the same already-reduced gradient on every device.

        Args:
            index: position of the variable in the constructor's list.
            variable: the variable (or one device's copy of it) to update.
            gradient: float32 tensor shaped like the variable (IndexedSlices are densified).
            learning_rate: scalar, Python float or float32 tensor.
            count: the 1-based number of this update (float or tensor); needed by
                optimizers with bias correction (LAMB), ignored by AdamW.
            slots: (m, v) variables to use instead of `self.slots(index)`.
            apply: None, or a bool scalar tensor: where false, the variable and its slots
                keep their values (a skipped step), without a branch: the gradient and
                the learning rate become 0, each moment's decay 1 and its gradient
                weight 0, so m, v and the variable come out unchanged (the state is
                finite) and a compiled update stays one loop per variable. (Under XLA a
                `tf.cond` around the update became selects that doubled its time.)
                Where true, the update is the one without `apply`.

        Returns:
            The grouped assignment op (None when executing eagerly).
        """
        variable = _as_tf_variable(variable)
        m, v = slots if slots is not None else self.slots(index)
        gradient = tf.convert_to_tensor(gradient, dtype=tf.float32)
        learning_rate = tf.convert_to_tensor(learning_rate, dtype=tf.float32)
        # Each moment's (decay, gradient weight); 1 - beta in Python's double precision.
        moments = ((self.beta_1, 1.0 - self.beta_1), (self.beta_2, 1.0 - self.beta_2))
        if apply is not None:
            apply = tf.convert_to_tensor(apply, tf.bool)
            gradient = tf.where(apply, gradient, 0.0)
            learning_rate = tf.where(apply, learning_rate, 0.0)
            moments = tuple(
                (
                    tf.where(apply, tf.constant(decay), 1.0),
                    tf.where(apply, tf.constant(weight), 0.0),
                )
                for decay, weight in moments
            )
        return self._apply(index, variable, m, v, gradient, learning_rate, count, moments)

    def _apply(self, index: int, variable, m, v, gradient, learning_rate, count, moments):
        """`update` once its arguments are tensors and variables: the moments, then the
        step of `_step`, as plain TensorFlow operations."""
        (decay_1, weight_1), (decay_2, weight_2) = moments
        next_m = decay_1 * m + weight_1 * gradient
        next_v = decay_2 * v + weight_2 * tf.square(gradient)
        step = self._step(index, variable, next_m, next_v, count)
        next_variable = variable - learning_rate * step
        return tf.group(m.assign(next_m), v.assign(next_v), variable.assign(next_variable))

    def _step(self, index: int, variable, next_m, next_v, count) -> tf.Tensor:
        """The update direction (before the learning rate) from the new moments."""
        raise NotImplementedError

    def apply_gradients(self, gradients: Sequence, learning_rate, count=None):
        """Updates every variable with its gradient, on a single device.

        Args:
            gradients: one gradient per variable, in the constructor's order; a variable
                whose gradient is None is left alone (as in the original).
            learning_rate: scalar, Python float or float32 tensor.
            count: the 1-based number of this update (see `update`).

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
            self.update(index, variable, gradient, learning_rate, count)
            for index, (variable, gradient) in enumerate(zip(variables, gradients))
            if gradient is not None
        ]
        return tf.group(*ops)


class AdamWeightDecay(_AdamFamily):
    """Adam with decoupled weight decay and no bias correction, as in the original BERT.

    For a variable p with gradient g, one update is::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        update = m / (sqrt(v) + epsilon)
        if decays_weight(p): update += weight_decay_rate * p
        p = p - learning_rate * update

    Unlike `keras.optimizers.AdamW` there is no bias correction of m and v, and the decay
    is scaled by the learning rate exactly as above; this is what BERT checkpoints were
    trained with. See `_AdamFamily` for the slots and the per-variable contract.
    """

    def __init__(self, variables: Sequence, names: Sequence[str], *, fused: bool = False, **kwargs):
        """See `_AdamFamily`; `fused`: update through TensorFlow's Adam kernel (`_apply`)."""
        super().__init__(variables, names, name="adam_weight_decay", **kwargs)
        self.fused = fused

    def _apply(self, index: int, variable, m, v, gradient, learning_rate, count, moments):
        """`_AdamFamily._apply`; with `fused`, in TensorFlow's Adam kernel.

        `ResourceApplyAdam` with both beta powers 0 turns its bias correction off (its
        step size lr·sqrt(1 - 0)/(1 - 0) is the learning rate) and computes
        m += (g - m)(1 - beta_1), v += (g² - v)(1 - beta_2), p -= lr·m/(sqrt(v) + epsilon)
        in one pass over p, m, v and g. A decayed variable first takes p -= lr·λ·p (one
        more pass); the Adam step does not read p, so the result is the original's
        p - lr·(step + λ·p). Without XLA that replaces about fifteen elementwise
        operations, each a pass over the variable: BERT-small's update of 29M parameters
        took 72-79 ms against 168-182 on 2 CPU cores (`benchmarks/bench_optimizer.py`);
        under XLA both forms compile to one loop and run alike, so the Trainer fuses only
        without XLA.

        The kernel computes 1 - beta in float32 from float32(beta): 1 - float32(0.999) =
        0.00099998713 where the original multiplies by float32(0.001), and 1 - float32(0.9)
        = 0.100000024. Its v is 1.3e-5 smaller relative, m 2.2e-7 larger, so its Adam step
        m/(sqrt(v) + epsilon) is up to 6.7e-6 larger (where sqrt(v) >> epsilon; the decay
        term is unchanged). Nothing else differs beyond float32 rounding.
        """
        if not self.fused:
            return super()._apply(index, variable, m, v, gradient, learning_rate, count, moments)
        decay = []
        if self.decay_flags[index]:
            decay = [variable.assign_sub(variable * (learning_rate * self.weight_decay_rate))]
        with tf.control_dependencies(decay):
            return tf.raw_ops.ResourceApplyAdam(
                var=variable.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=tf.constant(0.0),
                beta2_power=tf.constant(0.0),
                lr=learning_rate,
                beta1=tf.convert_to_tensor(moments[0][0], tf.float32),  # 1 when skipping
                beta2=tf.convert_to_tensor(moments[1][0], tf.float32),
                epsilon=tf.constant(self.epsilon),
                grad=gradient,
            )

    def _step(self, index, variable, next_m, next_v, count):
        update = next_m / (tf.sqrt(next_v) + self.epsilon)
        if self.decay_flags[index]:
            # Decoupled weight decay (Loshchilov & Hutter): added to the Adam step rather
            # than to the loss, so it does not pass through m and v.
            update += self.weight_decay_rate * variable
        return update


class Lamb(_AdamFamily):
    """LAMB: layer-wise adaptive moments (You et al., 2019, "Large Batch Optimization for
    Deep Learning: Training BERT in 76 minutes", algorithm 2), as NVIDIA trains BERT.

    For a variable p with gradient g, after t updates (count = t, 1-based)::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        m_hat = m / (1 - beta_1 ** t);  v_hat = v / (1 - beta_2 ** t)   # bias correction
        update = m_hat / (sqrt(v_hat) + epsilon)
        if adapts(p):
            update += weight_decay_rate * p
            update *= trust ratio ||p|| / ||update||   (1 when either norm is 0)
        p = p - learning_rate * update

    LayerNorm and bias variables (`exclude_from_weight_decay`) get neither the weight
    decay nor the trust ratio, as in NVIDIA's recipe; the per-tensor norms are those of
    the whole variable (each device holds a full copy). Defaults: NVIDIA's recipe
    (weight decay 0.01, epsilon 1e-6).
    """

    def __init__(self, variables: Sequence, names: Sequence[str], **kwargs):
        super().__init__(variables, names, name="lamb", **kwargs)

    def _step(self, index, variable, next_m, next_v, count):
        if count is None:
            raise ValueError("Lamb.update needs `count`, the 1-based number of the update")
        # 1 - beta ** t in float64: for beta_2 = 0.999 and small t it is ~1e-3, and
        # forming it in float32 would cancel away ~5 significant bits.
        count = tf.cast(count, tf.float64)
        m_correction = tf.cast(
            1.0 - tf.pow(tf.constant(self.beta_1, tf.float64), count), tf.float32
        )
        v_correction = tf.cast(
            1.0 - tf.pow(tf.constant(self.beta_2, tf.float64), count), tf.float32
        )
        m_hat = next_m / m_correction
        v_hat = next_v / v_correction
        update = m_hat / (tf.sqrt(v_hat) + self.epsilon)
        if not self.decay_flags[index]:
            return update
        update += self.weight_decay_rate * variable
        weight_norm = tf.norm(variable)
        update_norm = tf.norm(update)
        trust_ratio = tf.where(
            (weight_norm > 0.0) & (update_norm > 0.0), weight_norm / update_norm, 1.0
        )
        return trust_ratio * update


OPTIMIZERS = {"adamw": AdamWeightDecay, "lamb": Lamb}


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
