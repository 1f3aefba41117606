"""core/ against TensorFlow's own implementations, and the parity table's machinery."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from normlab import core
from normlab.core import builtin, parity, registry
from normlab.trainer import cli
from tests.fixtures import ROOT
from tests.numerics import tolerance


def _shape(case):
    return (3, 3, 8, 6) if case.norm == "weight" else (16, 6, 6, 8)


# Every case in every dtype its built-in supports (fused_batch_norm has no float64 kernel).
CASES_AND_DTYPES = [
    pytest.param(case, dtype, id=f"{case.norm}-{case.builtin_name}-{dtype.name}")
    for case in parity.CASES
    for dtype in (tf.float16, tf.bfloat16, tf.float32, tf.float64)
    if parity.supported(case, dtype)
]


@pytest.mark.parametrize("case,dtype", CASES_AND_DTYPES)
def test_custom_matches_builtin_forward_and_gradients(case, dtype):
    result = parity.compare(case, parity.make_inputs(case, _shape(case), dtype))
    # Both compute in float32 (float64) and round once to dtype: each output is within u of
    # the exact value, so the two within 2u of each other; tolerance() allows that and more.
    assert result.forward_rel <= tolerance(dtype), result
    for name, rel in result.grad_rel.items():
        # Gradients of x/v are in dtype; those of the float32 parameters in float32.
        grad_dtype = (
            dtype if name in ("x", "v") else (tf.float64 if dtype == tf.float64 else tf.float32)
        )
        assert rel <= tolerance(grad_dtype), (name, result)


def test_parity_detects_a_wrong_eps():
    """The comparison is not vacuous: a custom function with another eps fails it."""
    case = parity.Case(
        "batch",
        "nn",
        lambda x, g, b: core.batch_norm(x, g, b, 1e-1),
        builtin.batch_norm_nn,
        ("gamma", "beta"),
    )
    inputs = parity.make_inputs(case, (16, 4), tf.float32)
    inputs["x"] = inputs["x"] * 0.1  # small variance, so eps matters
    result = parity.compare(case, inputs)
    assert result.forward_rel > 1e-3 and result.grad_rel["x"] > 1e-3


def test_fused_moments_are_biased_after_conversion():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(5, 3, 3, 4)), tf.float32)
    _, mean, var = builtin.fused_batch_norm_and_moments(x, tf.ones([4]), tf.zeros([4]))
    _, cmean, cvar = core.batch_norm_and_moments(x, tf.ones([4]), tf.zeros([4]))
    np.testing.assert_allclose(mean, cmean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, cvar, rtol=1e-5)
    # The raw op returns the unbiased variance: n/(n-1) times larger.
    _, _, raw = tf.compat.v1.nn.fused_batch_norm(x, tf.ones([4]), tf.zeros([4]), is_training=True)
    np.testing.assert_allclose(raw, np.asarray(cvar) * 45 / 44, rtol=1e-5)


def test_layer_norm_equals_group_norm_with_one_group_and_instance_norm():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(4, 5, 5, 6)), tf.float64)
    gamma = tf.constant(rng.normal(1, 0.3, 6), tf.float64)
    beta = tf.constant(rng.normal(0, 0.3, 6), tf.float64)
    np.testing.assert_allclose(
        core.group_norm(x, gamma, beta, 1), core.layer_norm(x, gamma, beta), rtol=1e-12, atol=1e-12
    )
    # groups = C: instance norm, per example and channel over space.
    xn = np.asarray(x)
    mean, var = xn.mean(axis=(1, 2), keepdims=True), xn.var(axis=(1, 2), keepdims=True)
    expected = (xn - mean) / np.sqrt(var + 1e-3) * np.asarray(gamma) + np.asarray(beta)
    np.testing.assert_allclose(core.group_norm(x, gamma, beta, 6), expected, rtol=1e-12, atol=1e-12)


def test_builtin_inference_form_matches_custom():
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(8, 3, 3, 4)), tf.float32)
    mean, var = tf.constant(rng.normal(size=4), tf.float32), tf.constant([1.0, 2.0, 0.5, 3.0])
    gamma, beta = tf.constant(rng.normal(1, 0.3, 4), tf.float32), tf.zeros([4])
    np.testing.assert_allclose(
        core.batch_norm_inference(x, mean, var, gamma, beta),
        builtin.batch_norm_inference_nn(x, mean, var, gamma, beta),
        rtol=1e-5,
        atol=1e-6,
    )


def test_keras_references_work_inside_tf_function():
    """The Keras layers are built outside the trace, so a tf.function can call them twice."""
    rng = np.random.default_rng(3)
    gamma, beta = tf.ones([4]), tf.zeros([4])
    fn = tf.function(lambda x: builtin.group_norm_keras(x, gamma, beta, 2))
    for n in (2, 5):  # two traces
        x = tf.constant(rng.normal(size=(n, 3, 3, 4)), tf.float32)
        np.testing.assert_allclose(fn(x), core.group_norm(x, gamma, beta, 2), atol=1e-5)


@pytest.mark.slow
def test_parity_program_prints_every_norm_and_built_in():
    """parity.py, as a user runs it: a row per registry norm x built-in, nothing on stderr.
    It runs float16 ops, at which TensorFlow's C++ logs an ERROR-level notice on CPUs without
    AVX512-FP16; a user must see the table, not that line (so TF_CPP_MIN_LOG_LEVEL is unset)."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "parity.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    for norm in registry.NORMS.values():
        for implementation in norm.builtins:
            assert re.search(
                rf"^{norm.name} +{re.escape(implementation.label)}", result.stdout, re.M
            ), (
                norm.name,
                implementation.label,
            )
    assert "float16" in result.stdout


def test_parity_flags_bad_flag_exits_2_naming_help(capsys):
    """parity.py's flag parsing (its own FlagValues, in this process): a bad flag is one line
    naming the help command, exit 2."""
    values = flags.FlagValues()
    flags.DEFINE_boolean("markdown", False, "Markdown.", flag_values=values)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags_or_exit(["parity.py", "--bogus"], "parity.py", "Doc.", ["markdown"], values)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Run parity.py --help for every flag." in err, err
