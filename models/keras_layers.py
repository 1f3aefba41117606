"""Keras 3 layers over normlab's core: drop-in replacements for Keras' normalization layers.

`BatchNormalization`, `LayerNormalization`, `GroupNormalization` and `RMSNormalization` take
the constructor arguments of the Keras layers of the same names, with the same defaults, and
create the same weights in the same order (so `get_weights()` / `set_weights()` move weights
between Keras' layer and normlab's), in `build` with `add_weight`: a tf.Module inside a Keras
layer is not tracked, so Keras would neither train nor save its variables. Under the
`mixed_float16` / `mixed_bfloat16` policies the weights are float32 and read as float32 (no
autocast); core computes the statistics in float32, and the output is cast to the layer's
compute dtype, as Keras' layers do. Each class docstring says which core function computes it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from normlab import core
from normlab.models._keras_base import (
    PACKAGE,
    Norm,
    axis_argument,
    canonical_axes,
    check_epsilon,
    per_example,
)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchNormalization(Norm):
    """keras.layers.BatchNormalization computed by normlab's core.

    Training (`training=True` and the layer trainable, as in Keras): y uses the batch's mean
    and biased variance over every axis but `axis` (core.batch_norm_and_moments, the closed
    form), and the float32 moving statistics move:
    `moving = moving * momentum + batch * (1 - momentum)` (core.moving_average_update).
    With `moving_average="bias_corrected"` (normlab's; not a Keras argument) they move by
    core.bias_corrected_update instead, Adam's correction with t = moving_count + 1 (the first
    update takes the batch's statistics), and a fifth weight, moving_count (int64, the number
    of updates), follows moving_variance; the default "plain" keeps Keras' four weights.
    Otherwise y uses the moving statistics (core.batch_norm_inference), which do not change.
    models.recompute_batch_norm_statistics replaces them by precise population statistics.
    Keras' rule that a non-trainable BatchNormalization runs in inference mode is kept, so
    fine-tuning recipes behave as with Keras' layer. A channel axis other than the last is
    transposed last and back (core takes [N, ..., C]).

    `synchronized=True`: under tf.distribute the statistics are those of the global batch,
    from core.sync_batch_norm_and_moments (all-reduced corrected two-pass sums, accurate at
    large offsets where Keras' one-pass E[x^2] - E[x]^2 is not); the moving statistics are
    then the same on every replica (aggregation ONLY_FIRST_REPLICA; MEAN when unsynchronized).

    Args: those of keras.layers.BatchNormalization (axis, momentum, epsilon, center, scale,
    the initializers, regularizers and constraints, synchronized), same defaults, plus
    moving_average ("plain" or "bias_corrected"). momentum must be in [0, 1). Batch
    renormalization (`renorm=True`) and masks are not implemented: they raise ValueError
    naming Keras' layer, which has them.

    Weights: gamma, beta, moving_mean, moving_variance, each [C] (C = input_shape[axis]),
    and with moving_average="bias_corrected" moving_count (a scalar).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        renorm=False,
        renorm_clipping=None,
        renorm_momentum=0.99,
        synchronized=False,
        moving_average="plain",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if moving_average not in core.MOVING_AVERAGES:
            raise ValueError(
                f"BatchNormalization: moving_average must be one of "
                f"{', '.join(core.MOVING_AVERAGES)}, got {moving_average!r}."
            )
        if renorm:
            raise ValueError(
                "normlab's BatchNormalization does not implement batch renormalization "
                "(renorm=True); use keras.layers.BatchNormalization for it."
            )
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"BatchNormalization: axis must be an int, got {axis!r}.")
        if isinstance(momentum, bool) or not 0.0 <= float(momentum) < 1.0:
            raise ValueError(
                f"BatchNormalization: momentum must be in [0, 1) (0.99 keeps 99% of the "
                f"moving statistics at each step), got {momentum!r}."
            )
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = check_epsilon(epsilon, "BatchNormalization")
        self.synchronized = bool(synchronized)
        self.moving_average = moving_average
        self.collector = None  # models.population: a list collecting batch statistics
        self._affine_init(
            center,
            scale,
            (beta_initializer, beta_regularizer, beta_constraint),
            (gamma_initializer, gamma_regularizer, gamma_constraint),
        )
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.supports_masking = True  # a mask is accepted only to refuse it clearly (call)

    def build(self, input_shape):
        rank = len(input_shape)
        channel_axis = canonical_axes(self.axis, rank, "BatchNormalization")[0]
        channels = input_shape[channel_axis]
        if channels is None:
            raise ValueError(
                f"BatchNormalization: the channel axis {self.axis} of input shape "
                f"{tuple(input_shape)} must be known."
            )
        self._add_affine((channels,))
        aggregation = "only_first_replica" if self.synchronized else "mean"
        for name, initializer in [
            ("moving_mean", self.moving_mean_initializer),
            ("moving_variance", self.moving_variance_initializer),
        ]:
            weight = self.add_weight(
                shape=(channels,),
                name=name,
                initializer=initializer,
                trainable=False,
                autocast=False,
                aggregation=aggregation,
            )
            setattr(self, name, weight)
        self.moving_count = None
        if self.moving_average == "bias_corrected":
            self.moving_count = self.add_weight(
                shape=(),
                dtype="int64",
                name="moving_count",
                initializer="zeros",
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: channels})
        # core takes [N, ..., C]: another channel axis is moved last and back.
        order = [a for a in range(rank) if a != channel_axis] + [channel_axis]
        self._to_last = None if channel_axis == rank - 1 else order
        self._from_last = None if self._to_last is None else [order.index(a) for a in range(rank)]

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError(
                "normlab's BatchNormalization does not take a mask; use "
                "keras.layers.BatchNormalization for masked statistics."
            )
        x = inputs if self._to_last is None else tf.transpose(inputs, self._to_last)
        gamma, beta = self._affine([x.shape[-1]])
        if training and self.trainable:
            batch_norm = (
                core.sync_batch_norm_and_moments
                if self.synchronized
                else core.batch_norm_and_moments
            )
            y, mean, variance = batch_norm(x, gamma, beta, self.epsilon)
            # The moving averages are bookkeeping, not part of the differentiated function.
            self._update_moving(tf.stop_gradient(mean), tf.stop_gradient(variance), x)
        else:
            y = core.batch_norm_inference(
                x, self.moving_mean, self.moving_variance, gamma, beta, self.epsilon
            )
        y = y if self._from_last is None else tf.transpose(y, self._from_last)
        return tf.cast(y, self.compute_dtype)

    def _update_moving(self, mean, variance, x) -> None:
        """The moving statistics' update (or, while collecting, the batch's statistics with
        the number of values per channel appended to `collector`)."""
        if self.collector is not None:
            self.collector.append((mean, variance, tf.reduce_prod(tf.shape(x)[:-1])))
            return
        count = None
        if self.moving_count is not None:
            count = tf.convert_to_tensor(self.moving_count) + 1
        for moving, batch in [(self.moving_mean, mean), (self.moving_variance, variance)]:
            if count is None:
                update = core.moving_average_update(moving, batch, self.momentum)
            else:
                update = core.bias_corrected_update(moving, batch, self.momentum, count)
            moving.assign(update)
        if count is not None:
            self.moving_count.assign(count)

    def get_config(self):
        config = {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            **self._affine_config(),
            "moving_mean_initializer": keras.initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": keras.initializers.serialize(
                self.moving_variance_initializer
            ),
            "synchronized": self.synchronized,
            "renorm": False,
            "renorm_clipping": None,
            "renorm_momentum": 0.99,
        }
        if self.moving_average != "plain":  # Keras' own config has no such key
            config["moving_average"] = self.moving_average
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerNormalization(Norm):
    """keras.layers.LayerNormalization computed by normlab's core.

    Per example, over the axes `axis` (an int or a list; default -1, the last axis):

        y = (x - mean) * rsqrt(var + epsilon) * gamma + beta     (biased variance)

    gamma and beta have the shape of the normalized axes, as in Keras. One trailing axis (the
    default): core.layer_norm on x viewed as [-1, 1, C]; several trailing axes (e.g. every
    non-batch axis): core.layer_norm with unit scale on x viewed as [-1, size, 1], then gamma
    and beta element-wise; other axes: core.moments / core.normalize (see per_example).

    Args: those of keras.layers.LayerNormalization (axis, epsilon, center, scale,
    initializers, regularizers, constraints), same defaults. Keras' deprecated
    `rms_scaling=True` raises ValueError pointing to RMSNormalization.

    Weights: gamma, beta.
    """

    def __init__(
        self,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        if kwargs.pop("rms_scaling", False):
            raise ValueError(
                "LayerNormalization: rms_scaling=True (deprecated in Keras) is not "
                "implemented; use RMSNormalization."
            )
        super().__init__(**kwargs)
        self.axis = axis_argument(axis, "LayerNormalization")
        self.epsilon = check_epsilon(epsilon, "LayerNormalization")
        self._affine_init(
            center,
            scale,
            (beta_initializer, beta_regularizer, beta_constraint),
            (gamma_initializer, gamma_regularizer, gamma_constraint),
        )
        self.supports_masking = True  # per-example statistics: a mask passes through
        self.autocast = False

    def build(self, input_shape):
        self._axes = canonical_axes(self.axis, len(input_shape), "LayerNormalization")
        self._param_shape = tuple(input_shape[a] for a in self._axes)
        self._add_affine(self._param_shape)

    def call(self, inputs):
        gamma, beta = self._affine(self._param_shape)
        y = per_example(inputs, self._axes, gamma, beta, self.epsilon)
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "epsilon": self.epsilon,
            "rms_scaling": False,
            **self._affine_config(),
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupNormalization(Norm):
    """keras.layers.GroupNormalization computed by normlab's core.

    The channels (axis `axis`, default -1) are split into `groups` groups of consecutive
    channels; per example and group, the statistics are over the group's channels and every
    other non-batch axis. groups=-1 is instance norm (one group per channel). Channels last:
    core.group_norm (closed form); another channel axis: core.moments / core.normalize on the
    grouped view.

    Args: those of keras.layers.GroupNormalization (groups=32, axis, epsilon, center, scale,
    initializers, regularizers, constraints), same defaults and the same errors for groups
    that do not divide the channels.

    Weights: gamma, beta, each [C].
    """

    def __init__(
        self,
        groups=32,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        if isinstance(groups, bool) or not isinstance(groups, int) or groups in (0,) or groups < -1:
            raise ValueError(
                "GroupNormalization: groups must be a positive int, or -1 for instance "
                f"normalization, got {groups!r}."
            )
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"GroupNormalization: axis must be an int, got {axis!r}.")
        self.groups = groups
        self.axis = axis
        self.epsilon = check_epsilon(epsilon, "GroupNormalization")
        self._affine_init(
            center,
            scale,
            (beta_initializer, beta_regularizer, beta_constraint),
            (gamma_initializer, gamma_regularizer, gamma_constraint),
        )
        self.supports_masking = True
        self.autocast = False

    def build(self, input_shape):
        rank = len(input_shape)
        self._channel_axis = canonical_axes(self.axis, rank, "GroupNormalization")[0]
        channels = input_shape[self._channel_axis]
        if channels is None or self._channel_axis == 0:
            raise ValueError(
                f"GroupNormalization: the channel axis {self.axis} of input shape "
                f"{tuple(input_shape)} must be a known, non-batch axis."
            )
        if self.groups == -1:
            self.groups = channels
        if channels % self.groups:
            raise ValueError(
                f"GroupNormalization: groups ({self.groups}) must divide the {channels} channels."
            )
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={self.axis: channels})
        self._add_affine((channels,))

    def call(self, inputs):
        gamma, beta = self._affine([inputs.shape[self._channel_axis]])
        rank, axis = inputs.shape.rank, self._channel_axis
        if axis == rank - 1:
            y = core.group_norm(inputs, gamma, beta, self.groups, self.epsilon)
        else:  # [..., C, ...] viewed as [..., G, C/G, ...]; reduce all but batch and group
            channels = inputs.shape[axis]
            split = [self.groups, channels // self.groups]
            shape = tf.concat([tf.shape(inputs)[:axis], split, tf.shape(inputs)[axis + 1 :]], 0)
            grouped = tf.reshape(inputs, shape)
            reduced = [a for a in range(1, rank + 1) if a != axis]
            mean, variance = core.moments(grouped, reduced, keepdims=True)
            gamma, beta = (
                tf.reshape(p, [1] * axis + split + [1] * (rank - axis - 1)) for p in (gamma, beta)
            )
            y = core.normalize(grouped, mean, variance, gamma, beta, self.epsilon)
            y = tf.reshape(y, tf.shape(inputs))
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "groups": self.groups,
            "axis": self.axis,
            "epsilon": self.epsilon,
            **self._affine_config(),
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class RMSNormalization(keras.layers.Layer):
    """keras.layers.RMSNormalization computed by normlab's core.

    Per example, over the axes `axis` (an int or a list; default -1):

        y = x * rsqrt(mean(x^2) + epsilon) * scale

    with the mean of squares in float32. Over trailing axes this is core.rms_norm; otherwise
    the same formula with core.normalize.

    Args: axis=-1, epsilon=1e-6, as keras.layers.RMSNormalization.

    Weights: scale, shaped like the normalized axes (float32 under mixed precision, read as
    float32 where Keras' layer reads it in the compute dtype).
    """

    def __init__(self, axis=-1, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis_argument(axis, "RMSNormalization")
        self.epsilon = check_epsilon(epsilon, "RMSNormalization")

    def build(self, input_shape):
        self._axes = canonical_axes(self.axis, len(input_shape), "RMSNormalization")
        shape = tuple(input_shape[a] for a in self._axes)
        self.scale = self.add_weight(name="scale", shape=shape, initializer="ones", autocast=False)

    def call(self, x):
        y = per_example(x, self._axes, self.scale, None, self.epsilon, rms=True)
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon}
