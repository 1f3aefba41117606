"""Input checks shared by the normalization functions: clear errors before any kernel runs."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import tensorflow as tf

# Dtypes the functions accept for activations and kernels.
FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _is_tensor_like(value: Any) -> bool:
    """Whether `value` converts to a tensor by itself: tf.Tensor, tf.Variable (resource and
    distributed/mirrored ones included), keras.Variable, or any object with `__tf_tensor__`.

    Such values must go through tf.convert_to_tensor, never np.asarray: np.asarray reads a
    variable's current value as a constant, so in eager mode the gradient to it is silently
    None and inside tf.function it fails (`numpy()` needs eager execution).
    """
    return (
        tf.is_tensor(value)
        or isinstance(value, (tf.Variable, tf.distribute.DistributedValues))
        or hasattr(value, "__tf_tensor__")
    )


def _float_type_error(name: str, dtype_name: str) -> TypeError:
    return TypeError(
        f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
        f"got {dtype_name}. Cast it first, e.g. tf.cast({name}, tf.float32)."
    )


def as_float_tensor(value: Any, name: str, min_rank: int = 0) -> tf.Tensor:
    """Converts `value` to a floating-point tensor, or raises a clear error.

    Tensor-like values (tf.Tensor, tf.Variable, keras.Variable, mirrored variables, anything
    with `__tf_tensor__`) are converted with tf.convert_to_tensor, which stays in the graph:
    gradients reach the variable, eagerly and inside tf.function. A keras.Variable read under
    a mixed-precision autocast scope arrives in the scope's compute dtype, as Keras layers
    read it. Only what is not tensor-like (NumPy arrays, nested lists, Python numbers) goes
    through np.asarray.

    Args:
        value: a tensor-like value as above, NumPy array, nested Python list or number.
        name: the argument's name, used in error messages.
        min_rank: the smallest rank accepted.

    Returns:
        A tensor of one of FLOAT_DTYPES (the input's own dtype is kept).

    Raises:
        TypeError: the value is not floating point (integers, strings, bools), or is a
            sparse or ragged tensor.
        ValueError: the rank is unknown or below `min_rank`.
    """
    if _is_tensor_like(value):
        if isinstance(value, (tf.SparseTensor, tf.RaggedTensor)):
            raise TypeError(
                f"{name} must be a dense tensor, got a {type(value).__name__}. Convert it "
                f"first, e.g. {name}.to_tensor() or tf.sparse.to_dense({name})."
            )
        try:
            tensor = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as error:  # e.g. a KerasTensor, a PerReplica value
            raise TypeError(f"{name} cannot be converted to a tensor: {error}") from None
        if tensor.dtype not in FLOAT_DTYPES:
            raise _float_type_error(name, tensor.dtype.name)
    else:
        array = np.asarray(value)
        try:
            dtype = tf.as_dtype(array.dtype)
        except TypeError:  # object arrays, float128: nothing TensorFlow holds
            dtype = None
        if dtype not in FLOAT_DTYPES:
            raise _float_type_error(name, str(array.dtype))
        tensor = tf.convert_to_tensor(array)
    rank = tensor.shape.rank
    if rank is None:
        raise ValueError(
            f"{name} must have a known rank; give the tf.function an input_signature "
            "with a fixed number of dimensions."
        )
    if rank < min_rank:
        raise ValueError(
            f"{name} must have rank >= {min_rank}, got shape {tensor.shape}. "
            f"Normalization needs a batch axis and a channel axis, e.g. [N, C] or "
            f"[N, H, W, C]."
        )
    return tensor


def check_eps(eps: Any, name: str = "eps") -> float:
    """Returns `eps` as a float if it is a finite number > 0, else raises ValueError naming it."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"{name} must be a positive Python number, got {eps!r}.")
    eps = float(eps)
    if not np.isfinite(eps) or eps <= 0.0:
        raise ValueError(
            f"{name} must be > 0 (it keeps the division finite when the variance is "
            f"0), got {eps!r}. Typical values: 1e-3 (Keras), 1e-5 (PyTorch)."
        )
    return eps


def check_param(param: tf.Tensor, name: str, allowed: list[tf.TensorShape], what: str) -> None:
    """Raises ValueError unless `param`'s static shape is one of `allowed`.

    Dimensions unknown at trace time are not checked.
    """
    shape = param.shape
    for candidate in allowed:
        if shape.rank == candidate.rank and shape.is_compatible_with(candidate):
            return
    wanted = " or ".join(str(s.as_list()) for s in allowed)
    raise ValueError(f"{name} has shape {shape.as_list()}, expected {wanted} ({what}).")


def stats_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype statistics are computed in: float64 for float64 input, float32 otherwise.

    float16 overflows in E[x^2] for |x| ~ 300 and bfloat16 keeps 8 bits of mantissa, so both are
    upcast; the output is cast back to the input's dtype.
    """
    return tf.float64 if dtype == tf.float64 else tf.float32
