"""The CNN: conv-norm-relu-pool blocks, dense-norm-relu, logits; every variable explicit."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from normlab.models.layers import Conv2D, Dense
from normlab.models.norms import BatchNorm, GroupNorm, LayerNorm, largest_divisor_at_most

ARCHS = ("default", "course")
NORMS = ("none", "batch", "layer", "weight", "group")
WN_INITS = ("norm", "data")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's architecture and initial weights.

    Attributes:
        arch: "default" (3x3 convs of `widths` channels, He init) or "course" (the exercise's
            starter net: one 5x5 conv of 30 channels, a 100-unit hidden layer, N(0, 0.1) init;
            `widths`, `dense_units` and the kernel size are then fixed).
        norm: where "batch", "layer" or "group": a norm module after every conv and the hidden
            dense layer, before ReLU (their biases are dropped: beta plays that role);
            "weight": every kernel, logits included, reparameterised as g * v / ||v||.
        impl: "custom" (core/) or "builtin" (TensorFlow's own).
        groups: group norm's group count: per layer, the largest divisor of its channels
            not above this.
        momentum, eps: batch norm's moving-average momentum; eps of every norm.
        sync: under tf.distribute, batch norm uses the global batch's statistics (no effect
            on one device; layer, group and weight norm need no synchronization).
        backward: the custom norms' gradient: "closed_form" (fast, hand-derived) or
            "autodiff" (TensorFlow differentiates the forward; the reference).
    """

    arch: str = "default"
    norm: str = "batch"
    impl: str = "custom"
    widths: tuple[int, ...] = (32, 64)
    dense_units: int = 128
    groups: int = 8
    momentum: float = 0.99
    eps: float = 1e-3
    image_shape: tuple[int, int, int] = (28, 28, 1)
    num_classes: int = 10
    seed: int = 0
    sync: bool = False
    backward: str = "closed_form"

    def resolved(self) -> "ModelConfig":
        """The config with the course architecture's fixed sizes filled in."""
        if self.arch == "course":
            return dataclasses.replace(self, widths=(30,), dense_units=100)
        return self

    def validate(self) -> None:
        for field, value, choices in (
            ("arch", self.arch, ARCHS),
            ("norm", self.norm, NORMS),
            ("impl", self.impl, ("custom", "builtin")),
            ("backward", self.backward, ("closed_form", "autodiff")),
        ):
            if value not in choices:
                raise ValueError(f"{field} must be one of {', '.join(choices)}; got {value!r}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        if len(self.widths) > 4:
            raise ValueError(f"at most 4 conv blocks (28 pixels halve to 1), got {self.widths}")
        for field in ("dense_units", "groups", "num_classes"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.eps <= 0.0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


class CNN(tf.Module):
    """The classifier; `model(x, training=...)` returns logits.

    Layers, in order: conv{i} [+ conv{i}_norm] -> relu -> 2x2 max-pool for each width, then
    dense1 [+ dense1_norm] -> relu, then logits. `forward(..., collect_stats=True)` also returns
    the mean and std of every hidden layer's output before ("pre") and after ("post") its norm.
    """

    def __init__(self, config: ModelConfig):
        config = config.resolved()
        config.validate()
        super().__init__(name="cnn")
        self.config = config
        course = config.arch == "course"
        kernel_size = 5 if course else 3
        init = "course" if course else "he"
        wn = config.norm == "weight"
        normed = config.norm in ("batch", "layer", "group")
        seed = config.seed

        def layer_kwargs(index: int, name: str, bias: bool) -> dict:
            return dict(
                use_bias=bias,
                weight_norm=wn,
                impl=config.impl,
                init=init,
                seed=tf.constant([seed, index], tf.int64),
                name=name,
            )

        self.convs, self.conv_norms = [], []
        channels, (height, width, _) = config.image_shape[-1], config.image_shape
        for i, out in enumerate(config.widths):
            name = f"conv{i + 1}"
            self.convs.append(
                Conv2D(kernel_size, channels, out, **layer_kwargs(i, name, bias=not normed))
            )
            self.conv_norms.append(self._make_norm(out, f"{name}_norm"))
            channels, height, width = out, height // 2, width // 2
        flat = height * width * channels
        n = len(config.widths)
        self.dense = Dense(flat, config.dense_units, **layer_kwargs(n, "dense1", bias=not normed))
        self.dense_norm = self._make_norm(config.dense_units, "dense1_norm")
        self.logits = Dense(
            config.dense_units, config.num_classes, **layer_kwargs(n + 1, "logits", bias=True)
        )

    def _make_norm(self, channels: int, name: str):
        c = self.config
        if c.norm == "batch":
            return BatchNorm(
                channels,
                impl=c.impl,
                momentum=c.momentum,
                eps=c.eps,
                sync=c.sync,
                backward=c.backward,
                name=name,
            )
        if c.norm == "layer":
            return LayerNorm(channels, impl=c.impl, eps=c.eps, backward=c.backward, name=name)
        if c.norm == "group":
            groups = largest_divisor_at_most(channels, c.groups)
            return GroupNorm(
                channels, groups, impl=c.impl, eps=c.eps, backward=c.backward, name=name
            )
        return None

    def named_layers(self) -> list[tuple[str, tf.Module]]:
        """Every layer with variables, in forward order, by the name used in summaries."""
        layers = []
        for conv, norm in zip(self.convs, self.conv_norms):
            layers += [(conv.name, conv)] + ([(norm.name, norm)] if norm else [])
        layers += [(self.dense.name, self.dense)]
        layers += [(self.dense_norm.name, self.dense_norm)] if self.dense_norm else []
        return layers + [(self.logits.name, self.logits)]

    def hidden_layer_names(self) -> list[str]:
        """The layers whose activation statistics `forward` collects."""
        return [conv.name for conv in self.convs] + [self.dense.name]

    def forward(
        self, x: tf.Tensor, *, training: bool, collect_stats: bool = False
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Logits, and (if collect_stats) {"<layer>/pre_mean": ..., "<layer>/post_std": ...}."""
        stats = {}

        def normalize(name, norm, h):
            out = h if norm is None else norm(h, training=training)
            if collect_stats:
                for when, t in (("pre", h), ("post", out)):
                    mean, variance = tf.nn.moments(
                        tf.cast(t, tf.float32), axes=list(range(t.shape.rank))
                    )
                    stats[f"{name}/{when}_mean"] = mean
                    stats[f"{name}/{when}_std"] = tf.sqrt(variance)
            return out

        h = x
        for conv, norm in zip(self.convs, self.conv_norms):
            h = tf.nn.relu(normalize(conv.name, norm, conv(h)))
            h = tf.nn.max_pool2d(h, ksize=2, strides=2, padding="VALID")
        h = tf.reshape(h, [tf.shape(h)[0], -1])
        h = tf.nn.relu(normalize(self.dense.name, self.dense_norm, self.dense(h)))
        return self.logits(h), stats

    def __call__(self, x: tf.Tensor, *, training: bool) -> tf.Tensor:
        return self.forward(x, training=training)[0]

    def initialize_from_data(self, x: tf.Tensor, init_scale: float = 1.0) -> None:
        """Weight norm's data-dependent init, layer by layer, on one batch (norm="weight")."""
        if self.config.norm != "weight":
            raise ValueError("data-dependent init applies to norm='weight' only")
        h = x
        for conv in self.convs:
            h = tf.nn.max_pool2d(
                tf.nn.relu(conv.initialize_from_data(h, init_scale)), 2, 2, "VALID"
            )
        h = tf.reshape(h, [tf.shape(h)[0], -1])
        h = tf.nn.relu(self.dense.initialize_from_data(h, init_scale))
        self.logits.initialize_from_data(h, init_scale)

    def num_parameters(self) -> int:
        return int(sum(v.shape.num_elements() for v in self.trainable_variables))
