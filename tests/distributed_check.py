"""Synchronized batch norm on 2 MirroredStrategy replicas: what test_distributed checks.

    python -m tests.distributed_check [--json PATH]

Runs in a process of its own: the two replicas are two logical CPU devices, which must be
configured before the TensorFlow runtime starts, so this cannot share pytest's process (other
tests start the runtime first). It prints a table of measurements (max differences, relative
errors) and writes them as JSON for tests/test_distributed.py, which holds the tolerances, and
for test_keras_training.py and test_lstm_distributed.py (model.fit and the LSTM's TrainStep on
the same 2 replicas, measured here so that the suite starts one such process, not three).

Every comparison is between the same inputs and weights on 2 replicas and on one device (or
NumPy float64 on the global batch): the global batch is split 32 / 32 unless said otherwise,
and the second half is shifted by +0.5 so the halves' statistics really differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import tensorflow as tf

from normlab import core, models
from normlab.core import builtin_sync
from normlab.core import reference as ref

SUM = tf.distribute.ReduceOp.SUM
EPS = 1e-3
GLOBAL_BATCH = 64
LEARNING_RATE = 0.1


def configure_devices(count: int = 2) -> None:
    """Splits the CPU into `count` logical devices, one per replica.

    Must run before anything creates a tensor: once the runtime has started it refuses (importing
    TensorFlow, Keras and normlab does not start it).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )
    tf.get_logger().setLevel("ERROR")  # each check traces its own tf.function: no retrace notes


def halves(a):
    """The global batch's two per-replica slices."""
    return a[:32], a[32:]


def reps(a):
    """The same value on both replicas."""
    return a, a


def _max_rel(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-300))


def _max_abs(actual, expected) -> float:
    return float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))


class Harness:
    """The strategy, and a way to run a function on each replica with its own slice."""

    def __init__(self):
        self.strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert self.strategy.num_replicas_in_sync == 2

    def distribute(self, slices):
        """A PerReplica value: slices[i] (NumPy or tensor) on replica i."""
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(slices[ctx.replica_id_in_sync_group])
        )

    def run(self, fn, *slices_per_arg):
        """fn on each replica under one tf.function; returns [replica] -> NumPy structure."""
        args = [self.distribute(s) for s in slices_per_arg]
        outputs = tf.function(lambda *a: self.strategy.run(fn, args=a))(*args)
        leaves = [self.strategy.experimental_local_results(t) for t in tf.nest.flatten(outputs)]
        return [
            tf.nest.pack_sequence_as(outputs, [np.asarray(leaf[i]) for leaf in leaves])
            for i in range(self.strategy.num_replicas_in_sync)
        ]


def check_moments(h: Harness) -> dict:
    """cross_replica_moments on 2 replicas vs NumPy float64 on the concatenated slices."""
    rng = np.random.default_rng(0)
    out = {}
    cases = {
        "even": (rng.normal(0.7, 1.9, (32, 5, 5, 6)), rng.normal(1.2, 1.9, (32, 5, 5, 6))),
        "uneven_40_24": (rng.normal(0.7, 1.9, (40, 3, 3, 6)), rng.normal(3.0, 0.5, (24, 3, 3, 6))),
        "empty_replica": (np.zeros((0, 3, 3, 6)), rng.normal(0.5, 2.0, (16, 3, 3, 6))),
        "one_value_per_replica": (rng.normal(size=(1, 6)), rng.normal(size=(1, 6))),
    }
    for name, (a, b) in cases.items():
        a, b = a.astype(np.float32), b.astype(np.float32)
        axes = list(range(a.ndim - 1))
        res = h.run(lambda x, axes=axes: core.cross_replica_moments(x, axes), (a, b))
        whole = np.concatenate([a, b]).astype(np.float64)
        out[f"moments/{name}/mean_rel"] = _max_rel(res[0][0], whole.mean(axis=tuple(axes)))
        out[f"moments/{name}/var_rel"] = _max_rel(res[0][1], whole.var(axis=tuple(axes)))
        # Every replica holds the very same statistics, bit for bit.
        out[f"moments/{name}/replicas_differ"] = float(
            np.any(res[0][0] != res[1][0]) or np.any(res[0][1] != res[1][1])
        )
    # keepdims and negative axes, on float64 slices (float64 statistics).
    a, b = rng.normal(size=(8, 4, 3)), rng.normal(2.0, 1.0, (8, 4, 3))
    res = h.run(lambda x: core.cross_replica_moments(x, [0, -2], keepdims=True), (a, b))
    whole = np.concatenate([a, b])
    out["moments/float64_keepdims/var_rel"] = _max_rel(
        res[1][1], whole.var(axis=(0, 1), keepdims=True)
    )
    out["moments/float64_keepdims/dtype_is_float64"] = float(res[1][1].dtype == np.float64)
    # Half precision in: float32 statistics out, finite where float16 x^2 would overflow.
    a = rng.normal(300.0, 50.0, (16, 6)).astype(np.float16)
    b = rng.normal(310.0, 50.0, (16, 6)).astype(np.float16)
    res = h.run(lambda x: core.cross_replica_moments(x, [0]), (a, b))
    whole = np.concatenate([a, b]).astype(np.float64)
    out["moments/float16/mean_rel"] = _max_rel(res[0][0], whole.mean(axis=0))
    out["moments/float16/var_rel"] = _max_rel(res[0][1], whole.var(axis=0))
    out["moments/float16/stats_are_float32"] = float(res[0][1].dtype == np.float32)
    return out


def _bn_grads(fn, dtype):
    """fn(x, gamma, beta) -> (y, mean, var) per replica, and d sum(y * dy) / d(x, gamma, beta)."""

    def replica_fn(x, dy, gamma, beta):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y, mean, var = fn(x, gamma, beta)
            objective = tf.reduce_sum(tf.cast(y, tf.float64) * tf.cast(dy, tf.float64))
        return (y, mean, var, *tape.gradient(objective, [x, gamma, beta]))

    return replica_fn


def _sync_bn(x, gamma, beta):
    return core.sync_batch_norm_and_moments(x, gamma, beta, EPS)


def _keras_sync_bn(x, gamma, beta):
    return builtin_sync.batch_norm_and_moments_keras_sync(x, gamma, beta, EPS)


def check_gradients(h: Harness) -> dict:
    """Sync BN's forward and gradients on 2 replicas vs one device and NumPy on the whole batch.

    Each replica differentiates sum(y_r * dy_r); the all-reduce's gradient makes replica r's
    dx_r that of the global sum(y * dy), and gamma/beta's gradients sum over the replicas.
    Cases: (implementation, dtype, examples on replica 0 of the 64).
    """
    rng = np.random.default_rng(1)
    out = {}
    cases = (
        ("custom", np.float32, 32),
        ("keras", np.float32, 32),
        ("custom", np.float64, 32),
        ("custom", np.float64, 40),  # uneven: 40 / 24
        ("custom", np.float32, 0),  # replica 0 gets nothing
    )
    for name, dtype, split in cases:
        x = rng.normal(0.7, 1.9, (GLOBAL_BATCH, 4, 4, 6)).astype(dtype)
        x[split:] += 0.5
        dy = rng.normal(size=x.shape).astype(dtype)
        gamma = rng.normal(1.0, 0.3, 6).astype(dtype)
        beta = rng.normal(0.0, 0.3, 6).astype(dtype)
        fn = _sync_bn if name == "custom" else _keras_sync_bn

        def split_(a, split=split):
            return a[:split], a[split:]

        res = h.run(_bn_grads(fn, dtype), split_(x), split_(dy), reps(gamma), reps(beta))
        y = np.concatenate([res[0][0], res[1][0]])
        dx = np.concatenate([res[0][3], res[1][3]])
        dgamma, dbeta = res[0][4] + res[1][4], res[0][5] + res[1][5]
        key = f"grads/{name}/{np.dtype(dtype).name}_split{split}"
        rdx, rdgamma, rdbeta = ref.batch_norm_grads(x, gamma, EPS, dy)
        out[f"{key}/y_rel"] = _max_rel(y, ref.batch_norm(x, gamma, beta, EPS))
        out[f"{key}/dx_rel"] = _max_rel(dx, rdx)
        out[f"{key}/dgamma_rel"] = _max_rel(dgamma, rdgamma)
        out[f"{key}/dbeta_rel"] = _max_rel(dbeta, rdbeta)
        out[f"{key}/var_rel"] = _max_rel(res[0][2], x.astype(np.float64).var(axis=(0, 1, 2)))
        if (name, dtype, split) == ("custom", np.float32, 32):
            # The same float32 batch on one device: core.batch_norm, its default backward.
            xs, gs, bs = (tf.constant(a) for a in (x, gamma, beta))
            with tf.GradientTape() as tape:
                tape.watch([xs, gs, bs])
                y1 = core.batch_norm(xs, gs, bs, EPS)
                objective = tf.reduce_sum(tf.cast(y1, tf.float64) * dy.astype(np.float64))
            dx1, dg1, db1 = tape.gradient(objective, [xs, gs, bs])
            key = "grads/custom_vs_one_device/float32_split32"
            out[f"{key}/y_rel"] = _max_rel(y, y1)
            out[f"{key}/dx_rel"] = _max_rel(dx, dx1)
            out[f"{key}/dgamma_rel"] = _max_rel(dgamma, dg1)
            out[f"{key}/dbeta_rel"] = _max_rel(dbeta, db1)
    return out


def _chan_moments(x, axes):
    """Chan, Golub & LeVeque's combination of per-replica (n_i, m_i, M2_i); comparison only.

        mean = sum_i n_i m_i / n;   M2 = sum_i [n_i v_i + n_i (m_i - mean)^2];   var = M2 / n

    with (m_i, v_i) = core.moments(x_i): exact in exact arithmetic, but the float32 m_i are off
    by up to ulp(|mean|) / 2, which enters M2 at first order through m_i - mean.
    """
    context = tf.distribute.get_replica_context()
    m, v = core.moments(x, axes, keepdims=True)
    n = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), m.dtype)
    total, weighted = context.all_reduce(SUM, (n, n * m))
    mean = weighted / total
    m2 = context.all_reduce(SUM, n * v + n * tf.square(m - mean))
    return tf.squeeze(mean, axes), tf.squeeze(m2 / total, axes)


def check_offset(h: Harness) -> dict:
    """x + 1e4 in float32 over 2 replicas: our variance vs Keras' one-pass synchronized one.

    Also Chan's per-replica combination, and core.moments on the whole batch on one device.
    """
    rng = np.random.default_rng(2)
    x = (rng.normal(0.0, 1.0, (GLOBAL_BATCH, 8, 8, 4)) + 1e4).astype(np.float32)
    x[32:] += 0.5
    exact = x.astype(np.float64)  # the float32 values exactly
    var = exact.var(axis=(0, 1, 2))
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    out = {}
    for name, fn in (
        ("custom", core.sync_batch_norm_and_moments),
        ("keras", builtin_sync.batch_norm_and_moments_keras_sync),
    ):
        res = h.run(lambda a, fn=fn: fn(a, ones, zeros, EPS), halves(x))
        out[f"offset/{name}/var_rel"] = _max_rel(res[0][2], var)
        y = np.concatenate([res[0][0], res[1][0]])
        out[f"offset/{name}/y_abs"] = _max_abs(y, ref.batch_norm(exact, 1.0, 0.0, EPS))
    res = h.run(lambda a: _chan_moments(a, [0, 1, 2]), halves(x))
    out["offset/chan/var_rel"] = _max_rel(res[0][1], var)
    out["offset/one_device/var_rel"] = _max_rel(core.moments(tf.constant(x), [0, 1, 2])[1], var)
    return out


def _cnn(impl: str, sync: bool) -> models.CNN:
    """The small CNN (8-channel conv, 16 hidden units) with batch norm, optionally synchronized
    (the model's sync_batch_norm setting, which picks the cross-replica statistics)."""
    return models.CNN(
        models.ModelConfig(
            norm="batch", norm_impl=impl, widths=(8,), dense_units=16, sync_batch_norm=sync
        )
    )


def _norm_state(model) -> dict:
    return {
        name: (layer.moving_mean, layer.moving_variance)
        for name, layer in model.named_layers()
        if isinstance(layer, models.BatchNorm)
    }


def _one_device_step(model, x, labels):
    """One SGD step on one device: mean cross-entropy over the whole batch."""

    @tf.function
    def step(x, labels):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(LEARNING_RATE * g)
        return loss, grads

    return step(tf.constant(x), tf.constant(labels))


def _replicated_step(h: Harness, model, x, labels):
    """One SGD step on 2 replicas, the way a data-parallel trainer does it.

    Each replica's loss is its sum of per-example losses divided by the *global* batch size;
    the replicas' gradients are summed (all-reduce SUM) and applied once, in cross-replica
    context, to the mirrored weights.
    """
    strategy = h.strategy

    def replica_fn(x, labels):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            loss = tf.reduce_sum(per_example) / GLOBAL_BATCH
        return loss, tape.gradient(loss, model.trainable_variables)

    @tf.function
    def step(x, labels):
        loss, grads = strategy.run(replica_fn, args=(x, labels))
        loss = strategy.reduce(SUM, loss, axis=None)
        grads = [strategy.reduce(SUM, g, axis=None) for g in grads]
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(LEARNING_RATE * g)
        return loss, grads

    return step(h.distribute((x[:32], x[32:])), h.distribute((labels[:32], labels[32:])))


def _images(seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (GLOBAL_BATCH, 28, 28, 1)).astype(np.float32)
    x[32:] += 0.5
    return x, (np.arange(GLOBAL_BATCH) % 10).astype(np.int32)


def _compare_models(a, b, loss_a, grads_a, loss_b, grads_b, key) -> dict:
    """Loss, gradient, updated-weight and moving-statistic differences of model a against b."""
    out = {f"{key}/loss_abs": abs(float(loss_a) - float(loss_b))}
    out[f"{key}/grads_rel"] = max(_max_rel(ga, gb) for ga, gb in zip(grads_a, grads_b))
    out[f"{key}/weights_abs"] = max(
        _max_abs(va, vb) for va, vb in zip(a.trainable_variables, b.trainable_variables)
    )
    state_a, state_b = _norm_state(a), _norm_state(b)
    out[f"{key}/moving_abs"] = max(
        _max_abs(sa, sb) for n in state_a for sa, sb in zip(state_a[n], state_b[n])
    )
    return out


def check_training_step(h: Harness) -> dict:
    """One step of the CNN with sync BN on 2 replicas == one step on one device (64 examples)."""
    x, labels = _images()
    out = {}
    single = _cnn("custom", sync=False)
    # The per-half statistics the first norm sees, from the initial weights (before the step).
    h1 = [
        single.convs[0](tf.constant(half)).numpy().astype(np.float64) for half in (x[:32], x[32:])
    ]
    loss1, grads1 = _one_device_step(single, x, labels)
    out["step/one_device/loss"] = float(loss1)

    replicated = {}
    for impl, sync in (("custom", True), ("builtin", True), ("custom", False)):
        with h.strategy.scope():
            model = _cnn(impl, sync)
        for va, vb in zip(model.variables, _cnn("custom", False).variables):
            assert np.array_equal(va.numpy(), vb.numpy())  # same initial weights
        loss, grads = _replicated_step(h, model, x, labels)
        replicated[(impl, sync)] = (model, loss, grads)
        key = f"step/{impl}_{'sync' if sync else 'local'}"
        out.update(_compare_models(model, single, loss, grads, loss1, grads1, key))
        # The replicas' copies of every moving statistic are identical, bit for bit.
        out[f"{key}/moving_copies_differ"] = float(
            any(
                not np.array_equal(v.values[0].numpy(), v.values[1].numpy())
                for pair in _norm_state(model).values()
                for v in pair
            )
        )
    m = single.config.bn_momentum
    # Unsynchronized: the first norm's moving variance is the mean of the halves' updates,
    # not the update towards the global batch's variance.
    local = replicated[("custom", False)][0].conv_norms[0]
    per_half = np.mean([hh.var(axis=(0, 1, 2)) for hh in h1], axis=0)
    whole = np.concatenate(h1).var(axis=(0, 1, 2))
    out["step/custom_local/moving_var_vs_mean_of_replicas_abs"] = _max_abs(
        local.moving_variance, m * 1.0 + (1 - m) * per_half
    )
    out["step/custom_local/moving_var_vs_global_abs"] = _max_abs(
        local.moving_variance, m * 1.0 + (1 - m) * whole
    )
    synced = replicated[("custom", True)][0].conv_norms[0]
    out["step/custom_sync/moving_var_vs_global_abs"] = _max_abs(
        synced.moving_variance, m * 1.0 + (1 - m) * whole
    )
    # Built-in (Keras synchronized) vs custom synchronized, both on 2 replicas.
    (mb, lb, gb), (mc, lc, gc) = replicated[("builtin", True)], replicated[("custom", True)]
    out.update(_compare_models(mb, mc, lb, gb, lc, gc, "step/builtin_vs_custom_sync"))
    return out


def check_contexts(h: Harness) -> dict:
    """Outside strategy.run (cross-replica context), x is the whole batch: local moments."""
    rng = np.random.default_rng(4)
    x = tf.constant(rng.normal(1.0, 2.0, (16, 3, 3, 4)), tf.float32)
    expected = core.moments(x, [0, 1, 2])
    with h.strategy.scope():
        got = core.cross_replica_moments(x, [0, 1, 2])
        y, _, _ = core.sync_batch_norm_and_moments(x, tf.ones([4]), tf.zeros([4]))
    return {
        "contexts/cross_replica_equals_moments": float(
            all(np.array_equal(a, b) for a, b in zip(got, expected))
        ),
        "contexts/cross_replica_bn_abs": _max_abs(
            y, core.batch_norm(x, tf.ones([4]), tf.zeros([4]))
        ),
    }


def check_keras_fit(h: Harness) -> dict:
    """normlab's Keras batch norm in model.fit on the 2 replicas: tests/keras_mirrored_check.py."""
    from tests.keras_mirrored_check import check_keras_fit as check

    return check(h.strategy)


def check_lstm(h: Harness) -> dict:
    """The LSTM's recurrent batch norm in the trainer's TrainStep on the 2 replicas:
    tests/lstm_mirrored_check.py."""
    from tests.lstm_mirrored_check import check_lstm as check

    return check(h.strategy)


CHECKS = (
    check_moments,
    check_gradients,
    check_offset,
    check_training_step,
    check_contexts,
    check_keras_fit,
    check_lstm,
)


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    configure_devices(2)
    h = Harness()
    results = {}
    for check in CHECKS:
        start = time.perf_counter()
        results.update(check(h))
        results[f"seconds/{check.__name__}"] = time.perf_counter() - start
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.3g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
