"""The LSTM classifier: an image's rows as a sequence, logits from the last hidden state."""

from __future__ import annotations

import math
import numbers

import tensorflow as tf

from normlab import core
from normlab.core import registry
from normlab.models.config import ModelConfig
from normlab.models.layers import Dense
from normlab.models.norms import make_norm
from normlab.models.recurrent_norms import recurrent_batch_norm

# Initial forget-gate bias: 1.0 keeps the cell's memory at the start of training (Gers,
# Schmidhuber & Cummins 2000; Jozefowicz, Zaremba & Sutskever 2015), as Keras' unit_forget_bias.
FORGET_BIAS = 1.0
# The layers' names, in forward order (summaries' and checkpoints' names).
LAYERS = ("input", "input_norm", "recurrent", "recurrent_norm", "gates", "cell_norm", "logits")
# The activations `forward` taps, each at the last time step, before and after its norm.
TAPPED = ("input", "recurrent", "cell")
# What each time step of the cell computes, by the names `time_steps` and `cell` use.
STEP_ACTIVATIONS = ("recurrent/pre", "recurrent/post", "cell/pre", "cell/post", "hidden")


class LSTM(tf.Module):
    """A one-layer LSTM over an image's rows; `model(x, training=...)` returns logits.

    An image [N, H, W, C] is read as H time steps of W*C features. With gates in Keras' order
    (i, f, g, o), each of `config.lstm_units` = U units, and h_0 = c_0 = 0:

        z_t = N_h(W_h h_{t-1}) + N_x(W_x x_t) + b                      [N, 4U]
        c_t = sigmoid(f_t) * c_{t-1} + sigmoid(i_t) * tanh(g_t)
        h_t = sigmoid(o_t) * tanh(N_c(c_t))
        logits = h_H W_y + b_y

    The norms N_h, N_x, N_c come from the registry entry `config.norm`:

    * none: identities (the plain LSTM).
    * per-example norms (layer, group, RMS): one make_norm module per placement, each with its
      own gain and bias: with layer norm this is the LN-LSTM of Ba, Kiros & Hinton (2016,
      appendix), statistics per example and time step.
    * a norm with moving statistics (batch): models.recurrent_norms.RecurrentBatchNorm per
      placement, the BN-LSTM of Cooijmans et al. (2016): statistics and moving averages per
      time step, gains initialised to 0.1, no beta on N_h and N_x (b is their bias).
    * a kernel norm (weight): N_* are identities and every kernel, W_x [W*C, 4U], W_h [U, 4U]
      and the logits', is g * v / ||v|| with one g per output unit, as the CNN reparameterises
      every kernel (Salimans & Kingma 2016).

    W_x and W_h have no bias: b, a module of its own ("gates"), is the one bias of the gates
    (the normalized terms' biases before a norm that subtracts a mean would be void anyway).
    `--norm_impl=builtin` runs TensorFlow's built-ins inside the same cell, with the same
    initial weights.

    Initial weights, as Keras' LSTM and Dense (keras.layers.LSTM's defaults): W_x and the
    logits' kernel Glorot uniform, W_h orthogonal (Saxe et al. 2014), b 0 except the forget
    gate's 1.0 (FORGET_BIAS), all drawn statelessly from (config.seed, layer index), so the
    custom and built-in models start bitwise identical.

    W_x x_t is computed for every step in one matmul and, for norms whose statistics are per
    example or per step, normalized in one call: the same statistics as step by step. The
    time loop is unrolled in Python over the static number of rows (the trainer compiles
    without autograph).

    Args:
        config: a ModelConfig (or trainer Config) with arch "lstm".
        image_shape: (H, W, C) of the training images; H is the trained sequence length
            (recurrent batch norm keeps statistics for H steps; inference may be given more
            rows, which use the last step's).
        num_classes: the number of logits.
        compute_dtype: the activations' dtype: float32, bfloat16/float16 under mixed precision
            (or float64); variables stay float32, logits are float32.
    """

    def __init__(
        self,
        config: ModelConfig,
        image_shape: tuple[int, int, int] = (28, 28, 1),
        num_classes: int = 10,
        compute_dtype: tf.DType = tf.float32,
    ):
        config.validate()
        if config.arch != "lstm":
            raise ValueError(f"config.arch must be 'lstm' for the LSTM, got {config.arch!r}")
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or not all(_positive_int(d) for d in image_shape):
            raise ValueError(
                f"image_shape must be (height, width, channels), positive ints, got {image_shape}"
            )
        image_shape = tuple(int(d) for d in image_shape)
        if not _positive_int(num_classes):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        super().__init__(name="lstm")
        self.config = config
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.image_shape = image_shape
        steps, width, channels = image_shape
        self.features, self.units = width * channels, config.lstm_units
        units = self.units
        norm = registry.get(config.norm)
        on_kernels = norm is not None and norm.target == registry.KERNEL
        on_activations = norm is not None and norm.target == registry.ACTIVATIONS
        self._per_step = on_activations and norm.moving_statistics
        kernel_norm = norm.bind(norm.implementation(config.norm_impl)) if on_kernels else None

        def kernel(index: int, name: str, shape: list[int], initial, bias: bool) -> Dense:
            seed = tf.constant([config.seed, index], tf.int64)
            layer = Dense(*shape, use_bias=bias, kernel_norm=kernel_norm, seed=seed, name=name)
            _set_kernel(layer, initial(shape, seed))
            return layer

        def norm_module(channels_: int, name: str, center: bool):
            if not on_activations:
                return None
            settings = dict(
                impl=config.norm_impl,
                eps=config.norm_eps,
                momentum=config.bn_momentum,
                moving_average=config.bn_moving_average,
                backward=config.norm_backward,
                synchronized=config.sync_batch_norm,
                name=name,
            )
            if norm.moving_statistics:
                return recurrent_batch_norm(
                    norm, channels_, steps, center=center, gain=config.recurrent_gain, **settings
                )
            return make_norm(norm, channels_, groups=config.groups, **settings)

        self.input = kernel(0, "input", [self.features, 4 * units], glorot_uniform, False)
        self.input_norm = norm_module(4 * units, "input_norm", center=False)
        self.recurrent = kernel(1, "recurrent", [units, 4 * units], orthogonal, False)
        self.recurrent_norm = norm_module(4 * units, "recurrent_norm", center=False)
        self.gates = GateBias(units, name="gates")
        self.cell_norm = norm_module(units, "cell_norm", center=True)
        self.logits = kernel(2, "logits", [units, num_classes], glorot_uniform, True)

    def named_layers(self) -> list[tuple[str, tf.Module]]:
        """Every module with variables, in forward order, by its name (disjoint variables)."""
        modules = [(name, getattr(self, name)) for name in LAYERS]
        return [(name, module) for name, module in modules if module is not None]

    def hidden_layer_names(self) -> list[str]:
        """What `forward` taps: "input" (W_x x_t), "recurrent" (W_h h_{t-1}), "cell" (c_t)."""
        return list(TAPPED)

    def forward(
        self, x: tf.Tensor, *, training: bool, tap: bool = False
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Logits [N, classes] float32, and (if tap) {"<layer>/pre", "<layer>/post"} for each
        of `hidden_layer_names()` at the last time step, before and after its norm (post = pre
        without a norm)."""
        logits, trace = self._unroll(x, training=training)
        taps = {}
        if tap:
            for name in TAPPED:
                for when in ("pre", "post"):
                    taps[f"{name}/{when}"] = trace[f"{name}/{when}"][-1]
        return logits, taps

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        return self.forward(x, training=training)[0]

    def time_steps(self, x: tf.Tensor, *, training: bool) -> dict[str, tf.Tensor]:
        """Every time step's activations, for comparing implementations step by step:
        {"<layer>/pre", "<layer>/post": [N, H, units] for each tapped layer, "hidden": h_t
        [N, H, U], "logits": [N, classes]}. In training the moving statistics move, as in any
        training-mode call."""
        logits, trace = self._unroll(x, training=training)
        steps = {name: tf.stack(values, axis=1) for name, values in trace.items()}
        return {**steps, "logits": logits}

    def num_parameters(self) -> int:
        return int(sum(v.shape.num_elements() for v in self.trainable_variables))

    def _unroll(self, x: tf.Tensor, *, training: bool) -> tuple[tf.Tensor, dict[str, list]]:
        """Logits and every step's activations, {name: [per-step tensors]}."""
        x = tf.convert_to_tensor(x)
        if x.shape.rank != 4 or not x.shape[1:].is_fully_defined():
            raise ValueError(f"x must be [N, H, W, C] with static H, W, C, got {x.shape}")
        if x.shape[2] * x.shape[3] != self.features:
            raise ValueError(
                f"x has {x.shape[2]} x {x.shape[3]} features per row, the model "
                f"{self.image_shape[1]} x {self.image_shape[2]} = {self.features}; got {x.shape}"
            )
        dtype, steps, units = self.compute_dtype, x.shape[1], self.units
        rows = tf.reshape(tf.cast(x, dtype), [-1, self.features])
        projected = tf.reshape(self.input(rows), [-1, steps, 4 * units])
        normalized = self._normalize_sequence(projected, training)
        trace = {
            "input/pre": tf.unstack(projected, axis=1),
            "input/post": tf.unstack(normalized, axis=1),
            **{name: [] for name in STEP_ACTIVATIONS},
        }
        w_h, b = self._recurrent_weights()
        state = (tf.zeros([tf.shape(x)[0], units], dtype),) * 2
        statistics = {}
        for t, inputs in enumerate(trace["input/post"]):
            state, activations, step_statistics = self._cell(inputs, state, t, training, w_h, b)
            for name, value in activations.items():
                trace[name].append(value)
            for name, stats in step_statistics.items():
                statistics.setdefault(name, []).append(stats)
        for name, stats in statistics.items():
            # Training with per-step moving statistics: one update per sequence.
            getattr(self, name).update(
                *(tf.concat(s, axis=0) for s in zip(*stats)), examples=tf.shape(x)[0]
            )
        h = state[0]
        return tf.cast(self.logits(h), tf.float32), trace

    def _normalize_sequence(self, projected: tf.Tensor, training: bool) -> tf.Tensor:
        """N_x over every step at once: [N, T, 4U]."""
        module = self.input_norm
        if module is None:
            return projected
        if self._per_step:
            return module(projected, training=training)
        # Per-example statistics: one row per (example, step), as step by step.
        flat = tf.reshape(projected, [-1, projected.shape[-1]])
        return tf.reshape(module(flat, training=training), tf.shape(projected))

    def cell(
        self, inputs: tf.Tensor, state: tuple[tf.Tensor, tf.Tensor], step: int, *, training: bool
    ) -> tuple[tuple[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
        """One time step, for comparing implementations step by step on the same state.

        Args:
            inputs: N_x(W_x x_t) [N, 4U], the normalized input term of step `step`
                (`time_steps(...)["input/post"][:, step]`).
            state: (h_{t-1}, c_{t-1}), each [N, U] in the compute dtype.
            step: t, which selects recurrent batch norm's statistics.
            training: the norms' mode. Moving statistics are not updated here: that is done
                once per sequence by `forward`.

        Returns:
            ((h_t, c_t), {"recurrent/pre", "recurrent/post", "cell/pre", "cell/post",
            "hidden"}): the step's activations, as `time_steps` stacks them.
        """
        w_h, b = self._recurrent_weights()
        state, activations, _ = self._cell(inputs, state, step, training, w_h, b)
        return state, activations

    def _recurrent_weights(self) -> tuple[tf.Tensor, tf.Tensor]:
        """W_h (weight-normed if so) and b in the compute dtype, once per sequence."""
        dtype = self.compute_dtype
        return tf.cast(self.recurrent.effective_kernel(), dtype), tf.cast(self.gates.bias, dtype)

    def _cell(self, inputs, state, step, training, w_h, b):
        """The LSTM step: the new state, its activations, and (training with per-step moving
        statistics) each norm's batch statistics {module name: (mean, variance)}."""
        h, c = state
        statistics = {}

        def normalize(name: str, value: tf.Tensor) -> tf.Tensor:
            module = getattr(self, name)
            if module is None:
                return value
            if not self._per_step:
                return module(value, training=training)
            y, stats = module.normalize(value, step, training=training)
            if stats is not None:
                statistics[name] = stats
            return y

        hw = tf.matmul(h, w_h)
        hw_normalized = normalize("recurrent_norm", hw)
        i, f, g, o = tf.split(hw_normalized + inputs + b, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        c_normalized = normalize("cell_norm", c)
        h = tf.sigmoid(o) * tf.tanh(c_normalized)
        activations = {
            "recurrent/pre": hw,
            "recurrent/post": hw_normalized,
            "cell/pre": c,
            "cell/post": c_normalized,
            "hidden": h,
        }
        return (h, c), activations, statistics


class GateBias(tf.Module):
    """b, the gates' bias [4U] in the order (i, f, g, o): 0, except FORGET_BIAS on f."""

    def __init__(self, units: int, *, name: str | None = None):
        super().__init__(name=name)
        initial = [0.0] * units + [FORGET_BIAS] * units + [0.0] * (2 * units)
        self.bias = tf.Variable(tf.constant(initial, tf.float32), name="bias")


def glorot_uniform(shape: list[int], seed: tf.Tensor) -> tf.Tensor:
    """U(-l, l), l = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010); stateless."""
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return tf.random.stateless_uniform(shape, seed=seed, minval=-limit, maxval=limit)


def orthogonal(shape: list[int], seed: tf.Tensor) -> tf.Tensor:
    """A matrix with orthonormal rows or columns (whichever are fewer), as Keras' Orthogonal:
    Q of the QR decomposition of a stateless normal matrix, signs fixed by R's diagonal so the
    distribution is uniform (Saxe, McClelland & Ganguli 2014)."""
    rows, cols = shape
    normal = tf.random.stateless_normal([max(rows, cols), min(rows, cols)], seed=seed)
    q, r = tf.linalg.qr(normal)
    q = q * tf.sign(tf.linalg.diag_part(r))
    return tf.transpose(q) if rows < cols else q


def _set_kernel(layer: Dense, initial: tf.Tensor) -> None:
    """Gives a Dense layer the kernel `initial` (weight norm: v = initial, g = ||v||)."""
    if layer.kernel_norm is None:
        layer.kernel.assign(initial)
    else:
        layer.v.assign(initial)
        layer.g.assign(core.kernel_norm(initial))


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
