"""Bad input gets a TypeError/ValueError from Python that names the argument, before any kernel."""

import numpy as np
import pytest
import tensorflow as tf

from normlab import core
from normlab.core import registry

X = tf.zeros([4, 3, 3, 6])
G = tf.ones([6])
B = tf.zeros([6])


@pytest.mark.parametrize(
    "bad",
    [
        tf.zeros([4, 6], tf.int32),
        np.zeros([4, 6], np.int64),
        tf.constant([["a"] * 6] * 4),
        [[1, 2], [3, 4]],
        tf.zeros([4, 6], tf.bool),
    ],
    ids=["tf-int32", "np-int64", "string", "list-int", "bool"],
)
def _custom(norm: registry.Norm):
    """normlab's function of (x, *params), as the registry binds it (2 groups if grouped)."""
    return norm.bind(norm.custom, groups=2)


def _params(norm: registry.Norm, channels: int = 6) -> list[tf.Tensor]:
    return [tf.ones([channels]) for _ in norm.params]


def _input_name(norm: registry.Norm) -> str:
    return "v" if norm.target == registry.KERNEL else "x"


@pytest.mark.parametrize(
    "bad",
    [
        tf.zeros([4, 6], tf.int32),
        np.zeros([4, 6], np.int64),
        tf.constant([["a"] * 6] * 4),
        [[1, 2], [3, 4]],
        tf.zeros([4, 6], tf.bool),
    ],
    ids=["tf-int32", "np-int64", "string", "list-int", "bool"],
)
@pytest.mark.parametrize("name", list(registry.NORMS))
def test_non_float_input_is_a_type_error(name, bad):
    norm = registry.NORMS[name]
    with pytest.raises(TypeError, match="floating-point"):
        _custom(norm)(bad, *_params(norm))


@pytest.mark.parametrize("name", list(registry.NORMS))
def test_rank_below_two(name):
    norm = registry.NORMS[name]
    with pytest.raises(ValueError, match=f"{_input_name(norm)} must have rank >= 2"):
        _custom(norm)(tf.zeros([6]), *_params(norm))


@pytest.mark.parametrize(
    "fn,arg",
    [
        (lambda: core.batch_norm(X, tf.ones([5]), B), "gamma"),
        (lambda: core.batch_norm(X, G, tf.zeros([6, 1])), "beta"),
        (lambda: core.batch_norm_inference(X, tf.zeros([3]), G, G, B), "mean"),
        (lambda: core.layer_norm(X, tf.ones([3, 3, 5]), B), "gamma"),
        (lambda: core.group_norm(X, tf.ones([3]), B, 2), "gamma"),
        (lambda: core.rms_norm(X, tf.ones([7])), "gamma"),
        (lambda: core.weight_norm(tf.zeros([3, 3, 6, 4]), tf.ones([6])), "g"),
    ],
)
def test_parameter_shape_mismatch(fn, arg):
    with pytest.raises(ValueError, match=f"{arg} has shape"):
        fn()


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan"), "1e-3", None, True])
def test_eps_must_be_positive(eps):
    with pytest.raises(ValueError, match="eps must be"):
        core.batch_norm(X, G, B, eps)
    with pytest.raises(ValueError, match="eps must be"):
        core.layer_norm(X, G, B, eps)


@pytest.mark.parametrize("groups", [4, 0, -2, 2.0, 7])
def test_groups_must_divide_channels(groups):
    with pytest.raises(ValueError, match="groups must be a positive divisor of the 6 channels"):
        core.group_norm(X, G, B, groups)


def test_errors_are_raised_while_tracing_not_by_a_kernel():
    """Inside tf.function the same Python error is raised at trace time."""
    fn = tf.function(lambda x: core.batch_norm(x, tf.ones([5]), tf.zeros([5])))
    with pytest.raises(ValueError, match="gamma has shape"):
        fn(X)
