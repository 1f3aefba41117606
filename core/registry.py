"""The table of normalizations: one entry per norm, read by every consumer.

models/ builds its modules from an entry, train.py's `--norm` choices are its names, and
core.parity, bench/, report/ and the tests iterate over it. Adding a norm is one entry here
(plus its function in core/ and, if TensorFlow has one, its built-in in core/builtin.py);
nothing else branches on norm names (BUILD_NOTES.md, "How to add a norm").

An entry says:
* what the norm normalizes: activations (batch, layer, group, RMS) or a layer's kernel (weight);
* its parameters and their initial values (gamma 1, beta 0; weight norm's g = ||v||);
* whether it keeps moving statistics (batch norm: models/ then gives it a module with moving
  averages and an inference mode) and whether it subtracts a mean (then a bias before it is
  redundant, so the layer before drops its bias);
* normlab's implementation and TensorFlow's built-ins with the same signature, the first of
  which is what `--norm_impl=builtin` uses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from normlab import core
from normlab.core import builtin, builtin_sync, reference

ACTIVATIONS = "activations"
KERNEL = "kernel"


@dataclasses.dataclass(frozen=True)
class Param:
    """A learned parameter of a norm, one value per channel (or per output unit).

    Attributes:
        name: the argument's and the variable's name ("gamma", "beta", "g").
        initial: its initial value; None for weight norm's g, which starts at ||v|| so the
            network starts as the same function as without the norm.
    """

    name: str
    initial: float | None


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One implementation of a norm. All of a norm's implementations take the same arguments.

    Attributes:
        label: how tables name it: "normlab", or the built-in's name ("fused_batch_norm").
        apply: training-mode output, `apply(x, *params, eps=..., [groups=...])` (weight norm:
            `apply(v, g)`).
        with_moments: (norms with moving statistics) `(x, gamma, beta, eps) -> (y, mean,
            variance)`: the batch statistics it used, to update the moving averages.
        synchronized: as `with_moments`, with the statistics of the global batch under
            tf.distribute (several replicas).
        inference: (norms with moving statistics) `(x, mean, variance, gamma, beta, eps) -> y`.
        closed_form: apply, with_moments and synchronized take `backward=` ("closed_form" or
            "autodiff"; core/closed_form.py).
        float64: supports float64 input (fused_batch_norm has no float64 kernel).
    """

    label: str
    apply: Callable
    with_moments: Callable | None = None
    synchronized: Callable | None = None
    inference: Callable | None = None
    closed_form: bool = False
    float64: bool = True


@dataclasses.dataclass(frozen=True)
class Norm:
    """One normalization: what it normalizes, its parameters, its implementations.

    Attributes:
        name: the `--norm` value and the key of NORMS.
        title: its name in prose ("batch norm").
        paper: where it comes from.
        target: ACTIVATIONS (a module after a layer) or KERNEL (a reparameterised kernel).
        params: its learned parameters, in the order the functions take them.
        custom: normlab's implementation (core/).
        builtins: TensorFlow's implementations; builtins[0] is the model's `builtin` impl.
        reference: the independent NumPy float64 function of the same arguments
            (core/reference.py), the yardstick of tests and report.
        eps: the default eps (inside the root), as in its Keras layer.
        moving_statistics: normalizes with batch statistics in training and moving averages
            of them in inference.
        centers: subtracts a mean, so a bias added just before it has no effect.
        grouped: takes a `groups` argument.
    """

    name: str
    title: str
    paper: str
    target: str
    params: tuple[Param, ...]
    custom: Implementation
    builtins: tuple[Implementation, ...]
    reference: Callable
    eps: float = 1e-3
    moving_statistics: bool = False
    centers: bool = False
    grouped: bool = False

    @property
    def implementations(self) -> tuple[Implementation, ...]:
        return (self.custom, *self.builtins)

    def implementation(self, impl: str) -> Implementation:
        """normlab's implementation for impl="custom", the model's built-in for "builtin"."""
        if impl == "custom":
            return self.custom
        if impl == "builtin":
            return self.builtins[0]
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")

    def bind(
        self,
        implementation: Implementation | Callable,
        *,
        eps: float | None = None,
        groups: int | None = None,
        backward: str | None = None,
    ) -> Callable:
        """`implementation.apply` with its settings bound: a function of (x, *params).

        `implementation` may also be a plain function of the same arguments (the NumPy
        `reference`). eps defaults to the norm's own; groups is required for grouped norms;
        backward applies to implementations with a closed form and is ignored by the others
        (built-ins, and norms whose gradient is plain autodiff).
        """
        kwargs = {}
        if self.target == ACTIVATIONS:
            kwargs["eps"] = self.eps if eps is None else eps
        if self.grouped:
            if groups is None:
                raise ValueError(f"{self.name} norm needs a group count")
            kwargs["groups"] = groups
        if not isinstance(implementation, Implementation):
            return functools.partial(implementation, **kwargs)
        if backward is not None and implementation.closed_form:
            kwargs["backward"] = backward
        return functools.partial(implementation.apply, **kwargs)


_GAMMA, _BETA = Param("gamma", 1.0), Param("beta", 0.0)

NORMS: dict[str, Norm] = {
    norm.name: norm
    for norm in (
        Norm(
            name="batch",
            title="batch norm",
            paper="Ioffe & Szegedy 2015",
            target=ACTIVATIONS,
            params=(_GAMMA, _BETA),
            custom=Implementation(
                "normlab",
                core.batch_norm,
                with_moments=core.batch_norm_and_moments,
                synchronized=core.sync_batch_norm_and_moments,
                inference=core.batch_norm_inference,
                closed_form=True,
            ),
            builtins=(
                Implementation(
                    "fused_batch_norm",
                    builtin.fused_batch_norm,
                    with_moments=builtin.fused_batch_norm_and_moments,
                    synchronized=builtin_sync.batch_norm_and_moments_keras_sync,
                    inference=builtin.batch_norm_inference_nn,
                    float64=False,
                ),
                Implementation(
                    "tf.nn.batch_normalization",
                    builtin.batch_norm_nn,
                    with_moments=builtin.batch_norm_and_moments_nn,
                    synchronized=builtin_sync.batch_norm_and_moments_keras_sync,
                    inference=builtin.batch_norm_inference_nn,
                ),
            ),
            reference=reference.batch_norm,
            moving_statistics=True,
            centers=True,
        ),
        Norm(
            name="layer",
            title="layer norm",
            paper="Ba, Kiros & Hinton 2016",
            target=ACTIVATIONS,
            params=(_GAMMA, _BETA),
            custom=Implementation("normlab", core.layer_norm, closed_form=True),
            builtins=(
                Implementation("keras LayerNormalization", builtin.layer_norm_keras),
                Implementation("keras GroupNormalization(1)", builtin.layer_norm_keras_group),
            ),
            reference=reference.layer_norm,
            centers=True,
        ),
        Norm(
            name="group",
            title="group norm",
            paper="Wu & He 2018",
            target=ACTIVATIONS,
            params=(_GAMMA, _BETA),
            custom=Implementation("normlab", core.group_norm, closed_form=True),
            builtins=(Implementation("keras GroupNormalization", builtin.group_norm_keras),),
            reference=reference.group_norm,
            centers=True,
            grouped=True,
        ),
        Norm(
            name="rms",
            title="RMS norm",
            paper="Zhang & Sennrich 2019",
            target=ACTIVATIONS,
            params=(_GAMMA,),
            custom=Implementation("normlab", core.rms_norm, closed_form=True),
            builtins=(Implementation("keras RMSNormalization", builtin.rms_norm_keras),),
            reference=reference.rms_norm,
            eps=1e-6,
        ),
        Norm(
            name="weight",
            title="weight norm",
            paper="Salimans & Kingma 2016",
            target=KERNEL,
            params=(Param("g", None),),
            custom=Implementation("normlab", core.weight_norm),
            builtins=(Implementation("tf.nn.l2_normalize * g", builtin.weight_norm_l2),),
            reference=reference.weight_norm,
        ),
    )
}

# The `--norm` values: no normalization, then every entry of NORMS.
NONE = "none"
NORM_CHOICES = (NONE, *NORMS)
IMPLS = ("custom", "builtin")


def get(name: str) -> Norm | None:
    """The entry called `name`; None for "none"; ValueError naming the choices otherwise."""
    if name == NONE:
        return None
    if name not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORM_CHOICES)}; got {name!r}")
    return NORMS[name]
