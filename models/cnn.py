"""The CNN: conv-norm-relu-pool blocks, dense-norm-relu, logits; every variable explicit."""

from __future__ import annotations

import tensorflow as tf

from normlab.core import registry
from normlab.models.config import ModelConfig
from normlab.models.layers import Conv2D, Dense
from normlab.models.norms import make_norm


class CNN(tf.Module):
    """The classifier; `model(x, training=...)` returns logits.

    Layers, in order: conv{i} [+ conv{i}_norm] -> relu -> 2x2 max-pool for each width, then
    dense1 [+ dense1_norm] -> relu, then logits. A norm on activations (batch, layer, group,
    RMS) follows every conv and the hidden dense layer, before ReLU; a norm that subtracts a
    mean makes the layer before it bias-free (beta takes that role). A kernel norm (weight
    norm) reparameterises every kernel, logits included. `--arch=course` is the exercise's
    starter net (one 5x5 conv of 30 channels, 100 hidden units, N(0, 0.1) init).

    Args:
        config: the architecture, norm and seed (ModelConfig, or a trainer Config).
        image_shape: (height, width, channels) of the input.
        num_classes: the number of logits.
        compute_dtype: the dtype of the activations (variables stay float32): float32, or
            bfloat16/float16 under mixed precision; the logits are float32.
    """

    def __init__(
        self,
        config: ModelConfig,
        image_shape: tuple[int, int, int] = (28, 28, 1),
        num_classes: int = 10,
        compute_dtype: tf.DType = tf.float32,
    ):
        config.validate()
        config = config.resolved()
        super().__init__(name="cnn")
        self.config = config
        self.compute_dtype = tf.as_dtype(compute_dtype)
        norm = registry.get(config.norm)
        course = config.arch == "course"
        kernel_size = 5 if course else 3
        on_kernels = norm is not None and norm.target == registry.KERNEL
        on_activations = norm is not None and norm.target == registry.ACTIVATIONS
        kernel_norm = norm.bind(norm.implementation(config.norm_impl)) if on_kernels else None
        hidden_bias = not (on_activations and norm.centers)

        def affine(index: int, name: str, bias: bool) -> dict:
            return dict(
                use_bias=bias,
                kernel_norm=kernel_norm,
                init="course" if course else "he",
                seed=tf.constant([config.seed, index], tf.int64),
                name=name,
            )

        def norm_module(channels: int, name: str):
            if not on_activations:
                return None
            return make_norm(
                norm,
                channels,
                impl=config.norm_impl,
                eps=config.norm_eps,
                groups=config.groups,
                momentum=config.bn_momentum,
                moving_average=config.bn_moving_average,
                backward=config.norm_backward,
                synchronized=config.sync_batch_norm,
                name=name,
            )

        self.convs, self.conv_norms = [], []
        (height, width, channels) = image_shape
        for i, out in enumerate(config.widths):
            name = f"conv{i + 1}"
            self.convs.append(Conv2D(kernel_size, channels, out, **affine(i, name, hidden_bias)))
            self.conv_norms.append(norm_module(out, f"{name}_norm"))
            channels, height, width = out, height // 2, width // 2
        n = len(config.widths)
        self.dense = Dense(
            height * width * channels, config.dense_units, **affine(n, "dense1", hidden_bias)
        )
        self.dense_norm = norm_module(config.dense_units, "dense1_norm")
        self.logits = Dense(config.dense_units, num_classes, **affine(n + 1, "logits", True))

    def named_layers(self) -> list[tuple[str, tf.Module]]:
        """Every layer with variables, in forward order, by the name used in summaries."""
        layers = []
        for conv, norm in zip(self.convs, self.conv_norms):
            layers += [(conv.name, conv)] + ([(norm.name, norm)] if norm else [])
        layers += [(self.dense.name, self.dense)]
        layers += [(self.dense_norm.name, self.dense_norm)] if self.dense_norm else []
        return layers + [(self.logits.name, self.logits)]

    def hidden_layer_names(self) -> list[str]:
        """The layers whose activations `forward` taps."""
        return [conv.name for conv in self.convs] + [self.dense.name]

    def forward(
        self, x: tf.Tensor, *, training: bool, tap: bool = False
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Logits, and (if tap) every hidden layer's output before and after its norm:
        {"<layer>/pre": tensor, "<layer>/post": tensor} (post = pre without a norm module)."""
        taps = {}

        def normalize(name, norm, h):
            out = h if norm is None else norm(h, training=training)
            if tap:
                taps[f"{name}/pre"], taps[f"{name}/post"] = h, out
            return out

        h = tf.cast(x, self.compute_dtype)
        for conv, norm in zip(self.convs, self.conv_norms):
            h = tf.nn.relu(normalize(conv.name, norm, conv(h)))
            h = tf.nn.max_pool2d(h, ksize=2, strides=2, padding="VALID")
        h = tf.reshape(h, [tf.shape(h)[0], -1])
        h = tf.nn.relu(normalize(self.dense.name, self.dense_norm, self.dense(h)))
        return tf.cast(self.logits(h), tf.float32), taps

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        return self.forward(x, training=training)[0]

    def initialize_from_data(self, x: tf.Tensor, init_scale: float = 1.0) -> None:
        """Weight norm's data-dependent init, layer by layer, on one batch (norm="weight")."""
        if self.logits.kernel_norm is None:
            raise ValueError("data-dependent init applies to a kernel norm (norm='weight') only")
        h = tf.cast(x, tf.float32)
        for conv in self.convs:
            h = tf.nn.max_pool2d(
                tf.nn.relu(conv.initialize_from_data(h, init_scale)), 2, 2, "VALID"
            )
        h = tf.reshape(h, [tf.shape(h)[0], -1])
        h = tf.nn.relu(self.dense.initialize_from_data(h, init_scale))
        self.logits.initialize_from_data(h, init_scale)

    def num_parameters(self) -> int:
        return int(sum(v.shape.num_elements() for v in self.trainable_variables))
