"""WeightNormalization: a Keras 3 wrapper that weight-normalizes a Dense or Conv2D layer."""

from __future__ import annotations

import keras
import tensorflow as tf

from normlab import core
from normlab.models._keras_base import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightNormalization(keras.layers.Wrapper):
    """Weight normalization (Salimans & Kingma 2016) of a Dense or Conv2D layer's kernel.

    The wrapped layer's kernel becomes the direction v, and a new weight g holds one length
    per output unit; the layer computes with w = g * v / ||v|| (core.weight_norm, the norm over
    every axis but the last), so ||w[..., j]|| = g[j]. Everything else (bias, activation,
    strides, padding, ...) is the wrapped layer's own: it is called with w in place of its
    kernel (keras.StatelessScope), and gradients reach v and g through core.weight_norm.

    Initialisation: g = ||v|| (data_init=False, the default), so the wrapped layer starts as
    the same function as without weight norm; or, with data_init=True, the paper's
    data-dependent init on the first batch the layer sees in training: g and the bias are
    set (core.data_dependent_init) so that the pre-activations x . v / ||v|| * g + b of that
    batch have mean 0 and variance 1 per unit. A saved model keeps the fact that this was
    done (the non-trainable weight `initialized`), so training resumes without redoing it.
    The data-dependent init reads one replica's batch and assigns in place, so it is refused
    under a tf.distribute strategy with several replicas: initialise on one device first and
    copy the weights (set_weights).

    Args:
        layer: a keras.layers.Dense or keras.layers.Conv2D (built or not), without LoRA or
            quantization; with data_init=True it must use a bias.
        data_init: the data-dependent initialisation instead of g = ||v||.
        **kwargs: base layer arguments (name, dtype, ...).

    Weights: the wrapped layer's (kernel = v, bias), then g [units], then `initialized` (a
    non-trainable scalar) with data_init=True. The weights are read as float32 under
    mixed precision (w is formed in float32); the wrapped layer casts w to its compute dtype.
    """

    def __init__(self, layer, data_init: bool = False, **kwargs):
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            raise TypeError(
                "WeightNormalization wraps a keras.layers.Dense or keras.layers.Conv2D, got "
                f"{type(layer).__name__}."
            )
        if data_init and not layer.use_bias:
            raise ValueError(
                "WeightNormalization(data_init=True) sets the bias of the wrapped layer: "
                f"create {layer.name} with use_bias=True."
            )
        super().__init__(layer, **kwargs)
        self.data_init = bool(data_init)
        self.autocast = False  # v and g are read in float32; the wrapped layer casts w

    def build(self, input_shape=None):
        super().build(input_shape)
        kernel = self.layer.kernel
        if not isinstance(kernel, keras.Variable):
            raise ValueError(
                f"WeightNormalization needs {self.layer.name}'s kernel as a plain variable; "
                "disable LoRA and quantization on the wrapped layer."
            )
        self.g = self.add_weight(
            name="g",
            shape=(kernel.shape[-1],),
            # ||v|| of the kernel as initialised, so that w starts equal to it.
            initializer=lambda shape, dtype: tf.cast(core.kernel_norm(kernel), dtype),
            autocast=False,
        )
        if self.data_init:
            self.initialized = self.add_weight(
                name="initialized",
                shape=(),
                dtype="bool",
                initializer="zeros",
                trainable=False,
                aggregation="only_first_replica",
            )

    @property
    def v(self) -> keras.Variable:
        """The direction: the wrapped layer's kernel (a property, so Keras tracks it once)."""
        return self.layer.kernel

    def _preactivations(self, x, kernel):
        """x . kernel: the wrapped layer's linear map, without bias and activation."""
        if isinstance(self.layer, keras.layers.Dense):
            return keras.ops.matmul(x, kernel)
        return self.layer.convolution_op(x, kernel)

    def _initialize_from(self, x) -> None:
        """The paper's data-dependent init of g and the bias on the batch x."""
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync > 1:
            raise ValueError(
                "WeightNormalization(data_init=True) initialises from one batch on one "
                "device; under a tf.distribute strategy with several replicas, initialise the "
                "model on one device first and copy its weights (set_weights)."
            )
        x = tf.cast(x, self.v.dtype)
        direction = core.weight_norm(self.v, tf.ones_like(self.g))
        g, b = core.data_dependent_init(tf.stop_gradient(self._preactivations(x, direction)))
        self.g.assign(tf.cast(g, self.g.dtype))
        self.layer.bias.assign(tf.cast(b, self.layer.bias.dtype))
        self.initialized.assign(True)

    def call(self, inputs, training=None):
        if self.data_init and training:
            if tf.executing_eagerly():
                if not self.initialized.numpy():
                    self._initialize_from(inputs)
            else:

                def initialize():
                    self._initialize_from(inputs)
                    return tf.constant(True)

                tf.cond(
                    tf.convert_to_tensor(self.initialized), lambda: tf.constant(True), initialize
                )
        w = core.weight_norm(self.v, self.g)
        with keras.StatelessScope(state_mapping=[(self.v, w)]):
            return self.layer(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "data_init": self.data_init}
