"""Independent NumPy float64 references for the normalizations, forward and backward.

Written from the papers' formulas with NumPy only (no TensorFlow), so they share no code with
the rest of core/: the yardstick the tests hold core's functions and TensorFlow's built-ins to,
and that the report uses to tell whose rounding a custom-vs-built-in difference is. The
backward pass is the closed form, derived by hand, not autodiff. Each function takes the same
arguments as its core counterpart (registry entries bind them alike).
"""

from __future__ import annotations

import numpy as np


def _normalize(x, axes, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # NumPy's var is the biased one (ddof=0)
    return (x - mean) / np.sqrt(var + eps), var


def _normalize_backward(x, axes, eps, dxhat):
    """d/dx of xhat = (x - mean) / sqrt(var + eps), contracted with dxhat.

    With n the number of reduced elements and r = 1 / sqrt(var + eps):
        dx = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    """
    xhat, var = _normalize(x, axes, eps)
    r = 1.0 / np.sqrt(var + eps)
    return r * (
        dxhat
        - dxhat.mean(axis=axes, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
    )


def batch_norm(x, gamma, beta, eps):
    axes = tuple(range(np.ndim(x) - 1))
    return _normalize(x, axes, eps)[0] * gamma + beta


def layer_norm(x, gamma, beta, eps):
    axes = tuple(range(1, np.ndim(x)))
    return _normalize(x, axes, eps)[0] * gamma + beta


def _grouped(x, groups):
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))


def _group_axes(ndim):
    # Of the grouped array (one more axis): all spatial axes and the within-group axis.
    return tuple(range(1, ndim - 1)) + (ndim,)


def group_norm(x, gamma, beta, groups, eps):
    xhat = _normalize(_grouped(x, groups), _group_axes(np.ndim(x)), eps)[0]
    return xhat.reshape(np.shape(x)) * gamma + beta


def rms_norm(x, gamma, eps):
    x = np.asarray(x, np.float64)
    ms = np.mean(x * x, axis=tuple(range(1, x.ndim)), keepdims=True)
    return x / np.sqrt(ms + eps) * gamma


def rms_norm_grads(x, gamma, eps, dy):
    """(dx, dgamma) of sum(rms_norm(x) * dy) for per-channel gamma. With r = 1/sqrt(ms + eps)
    and dr/dx_j = -r^3 x_j / m (m values per example): dx = r (g - x r^2 mean(g x)), g = dy gamma.
    """
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    axes = tuple(range(1, x.ndim))
    r = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps)
    g = dy * gamma
    dx = r * g - x * r**3 * np.mean(g * x, axis=axes, keepdims=True)
    return dx, (dy * x * r).sum(axis=tuple(range(x.ndim - 1)))


def weight_norm(v, g):
    v = np.asarray(v, np.float64)
    norm = np.sqrt(np.sum(v * v, axis=tuple(range(v.ndim - 1))))
    return v / norm * g


def batch_norm_grads(x, gamma, eps, dy):
    """(dx, dgamma, dbeta) of sum(batch_norm(x) * dy)."""
    axes = tuple(range(np.ndim(x) - 1))
    xhat = _normalize(x, axes, eps)[0]
    return (
        _normalize_backward(x, axes, eps, dy * gamma),
        (dy * xhat).sum(axis=axes),
        dy.sum(axis=axes),
    )


def layer_norm_grads(x, gamma, eps, dy):
    """(dx, dgamma, dbeta) of sum(layer_norm(x) * dy) for per-channel gamma."""
    axes = tuple(range(1, np.ndim(x)))
    xhat = _normalize(x, axes, eps)[0]
    param_axes = tuple(range(np.ndim(x) - 1))
    return (
        _normalize_backward(x, axes, eps, dy * gamma),
        (dy * xhat).sum(axis=param_axes),
        dy.sum(axis=param_axes),
    )


def group_norm_grads(x, gamma, groups, eps, dy):
    """(dx, dgamma, dbeta) of sum(group_norm(x) * dy)."""
    axes = _group_axes(np.ndim(x))
    xg = _grouped(x, groups)
    xhat = _normalize(xg, axes, eps)[0].reshape(np.shape(x))
    dxhat = _grouped(dy * gamma, groups)
    dx = _normalize_backward(xg, axes, eps, dxhat).reshape(np.shape(x))
    param_axes = tuple(range(np.ndim(x) - 1))
    return dx, (dy * xhat).sum(axis=param_axes), dy.sum(axis=param_axes)


def weight_norm_grads(v, g, dw):
    """(dv, dg) of sum(weight_norm(v, g) * dw).

    With u = v / ||v||: dg = sum(dw * u), dv = g / ||v|| * (dw - u * sum(dw * u)).
    """
    v = np.asarray(v, np.float64)
    axes = tuple(range(v.ndim - 1))
    norm = np.sqrt(np.sum(v * v, axis=axes))
    u = v / norm
    dg = np.sum(dw * u, axis=axes)
    return g / norm * (dw - u * dg), dg


def moving_average(batch_values, momentum, initial):
    """The plain moving average after each batch: m_t = momentum * m_{t-1} + (1 - momentum) x_t,
    m_0 = initial. Returns [m_1, ..., m_T]."""
    m, out = np.asarray(initial, np.float64), []
    for x in batch_values:
        m = momentum * m + (1.0 - momentum) * np.asarray(x, np.float64)
        out.append(m)
    return out


def bias_corrected_moving_average(batch_values, momentum):
    """Adam's bias-corrected average after each batch, as Kingma & Ba write it: a zero-started
    accumulator m_t = momentum * m_{t-1} + (1 - momentum) x_t, divided by 1 - momentum^t.
    Returns [m_1 / (1 - momentum), ..., m_T / (1 - momentum^T)]."""
    accumulated = moving_average(batch_values, momentum, 0.0)
    return [m / (1.0 - momentum ** (t + 1)) for t, m in enumerate(accumulated)]


def population_statistics(batches, axes):
    """(mean, biased variance) over `axes` of every value of every batch: NumPy's mean and var
    of the batches concatenated along axis 0 (axes must include 0)."""
    values = np.concatenate([np.asarray(b, np.float64) for b in batches], axis=0)
    return values.mean(axis=axes), values.var(axis=axes)


def averaged_batch_statistics(batches, axes):
    """Precise BN's estimate from per-batch statistics, for batches of equal size: the average
    of the batch means, and the average of the batch variances plus the variance of the batch
    means (the law of total variance; equals population_statistics for equal sizes)."""
    means = np.stack([np.asarray(b, np.float64).mean(axis=axes) for b in batches])
    variances = np.stack([np.asarray(b, np.float64).var(axis=axes) for b in batches])
    return means.mean(axis=0), variances.mean(axis=0) + means.var(axis=0)
