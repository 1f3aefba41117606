"""The CNN and its layers: shapes, variables, modes, custom == builtin on the same weights."""

import numpy as np
import pytest
import tensorflow as tf

from normlab.core import registry
from tests.numerics import assert_close
from normlab.models import CNN, BatchNorm, ConfigError, ModelConfig

COMBOS = [
    (arch, norm, impl)
    for arch in ("default", "course")
    for norm in registry.NORM_CHOICES
    for impl in registry.IMPLS
]


def _x(n=6, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=(n, 28, 28, 1)), tf.float32)


@pytest.mark.parametrize("arch,norm,impl", COMBOS)
def test_shapes_and_variables(arch, norm, impl):
    model = CNN(ModelConfig(arch=arch, norm=norm, norm_impl=impl))
    logits, taps = model.forward(_x(), training=True, tap=True)
    assert logits.shape == (6, 10)
    assert set(taps) == {
        f"{layer}/{when}" for layer in model.hidden_layer_names() for when in ("pre", "post")
    }
    for layer in model.hidden_layer_names():
        assert taps[f"{layer}/pre"].shape == taps[f"{layer}/post"].shape
    names = {v.name.split(":")[0] for v in model.trainable_variables}
    entry = registry.get(norm)
    if entry is None:
        assert {"kernel", "bias"} == names
    elif entry.target == registry.KERNEL:
        assert {"v", "g", "bias"} == names  # every kernel reparameterised
        assert not any(v.name.startswith("kernel") for v in model.trainable_variables)
    else:
        params = {p.name for p in entry.params}
        assert {"kernel", "bias"} | params == names
        biases = sum(v.name.startswith("bias") for v in model.trainable_variables)
        # A norm that subtracts a mean makes the layer before it bias-free (beta's role).
        assert biases == (1 if entry.centers else len(model.hidden_layer_names()) + 1)
    if arch == "course":  # the exercise's net: 5x5x30 conv, 14*14*30 = 5880 -> 100 -> 10
        conv_kernel = model.convs[0].v if norm == "weight" else model.convs[0].kernel
        dense_kernel = model.dense.v if norm == "weight" else model.dense.kernel
        assert conv_kernel.shape == (5, 5, 1, 30)
        assert dense_kernel.shape == (5880, 100)


@pytest.mark.parametrize("norm", list(registry.NORMS))
def test_custom_and_builtin_models_agree_on_the_same_weights(norm):
    custom = CNN(ModelConfig(norm=norm, norm_impl="custom", seed=3))
    builtin = CNN(ModelConfig(norm=norm, norm_impl="builtin", seed=3))
    for a, b in zip(custom.variables, builtin.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # same init from the same seed
    x = _x(16)
    labels = tf.constant(np.arange(16) % 10)
    grads = []
    for model in (custom, builtin):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads.append((logits, tape.gradient(loss, model.trainable_variables)))
    # The float32 policy (64 ulp of the largest value; measured <= 2.4e-6, batch norm's dgamma).
    assert_close(grads[0][0], grads[1][0].numpy(), tf.float32, "logits")
    for ga, gb, v in zip(grads[0][1], grads[1][1], custom.trainable_variables):
        assert_close(ga, gb.numpy(), tf.float32, v.name)


def test_batch_norm_moving_statistics_change_only_in_training():
    bn = BatchNorm(3, momentum=0.9)
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (32, 3)), tf.float32)
    bn(x, training=False)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), 1.0)
    bn(x, training=True)
    xn = x.numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * xn.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * xn.var(0), rtol=1e-5)
    # Inference uses the moving statistics: (x - m) / sqrt(v + eps).
    y = bn(x, training=False).numpy()
    expected = (xn - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert not bn.moving_mean.trainable and bn.moving_mean.dtype == tf.float32


def test_weight_norm_starts_as_the_plain_network():
    plain = CNN(ModelConfig(norm="none", seed=5))
    wn = CNN(ModelConfig(norm="weight", seed=5))
    x = _x()
    np.testing.assert_allclose(
        wn(x, training=False), plain(x, training=False), rtol=1e-4, atol=1e-5
    )


def test_data_dependent_init_standardizes_every_layer():
    model = CNN(ModelConfig(norm="weight", seed=2))
    x = _x(64, seed=4)
    model.initialize_from_data(x)
    _, taps = model.forward(x, training=False, tap=True)
    for layer in model.hidden_layer_names():
        pre = taps[f"{layer}/pre"].numpy()
        assert abs(pre.mean()) < 1e-4
        assert abs(pre.std() - 1.0) < 1e-3
    logits = model(x, training=False).numpy()
    np.testing.assert_allclose(logits.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(logits.std(0), 1.0, atol=1e-3)


def test_group_count_is_a_divisor_of_each_layer():
    model = CNN(ModelConfig(arch="course", norm="group", groups=8))
    assert model.conv_norms[0].groups == 6  # 30 channels
    assert model.dense_norm.groups == 5  # 100 units


def test_bad_model_config():
    with pytest.raises(ConfigError, match="--norm=instance is not one of"):
        CNN(ModelConfig(norm="instance"))
    with pytest.raises(ConfigError, match="at most 4 conv blocks"):
        CNN(ModelConfig(widths=(8, 8, 8, 8, 8)))
    with pytest.raises(ConfigError, match="--widths does not apply to --arch=course"):
        CNN(ModelConfig(arch="course", widths=(16,)))
