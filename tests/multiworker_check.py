"""One worker of a 2-process MultiWorkerMirroredStrategy on 127.0.0.1: sync BN across processes.

    python -m tests.multiworker_check --index I --ports P0,P1 --json PATH

tests/test_distributed.py starts two of these (I = 0, 1) and compares what they write: the
statistics and gradients of synchronized batch norm, each worker holding its own uneven slice
(40 and 24 of 64 examples) of the same global batch, and the moving statistics of a
`models.BatchNorm` with `core.sync_batch_norm_and_moments` after one training step. Only
loopback sockets are used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import tensorflow as tf

from normlab import core, models

EPS = 1e-3
SPLIT = 40  # worker 0 holds examples [0, 40), worker 1 [40, 64)
MOMENTUM = 0.9


def global_batch():
    """The same global batch in every worker: x [64, 4, 4, 6], its cotangent dy, gamma, beta."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.7, 1.9, (64, 4, 4, 6))
    x[SPLIT:] += 0.5
    offset = (rng.normal(0.0, 1.0, (64, 4, 4, 6)) + 1e4).astype(np.float32)
    offset[SPLIT:] += 0.5
    return {
        "x": x,
        "dy": rng.normal(size=x.shape),
        "gamma": rng.normal(1.0, 0.3, 6),
        "beta": rng.normal(0.0, 0.3, 6),
        "offset": offset,
    }


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--ports", required=True, help="two comma-separated loopback ports")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    workers = [f"127.0.0.1:{p}" for p in args.ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": args.index}}
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=60)
    )
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync

    data = global_batch()
    mine = slice(0, SPLIT) if args.index == 0 else slice(SPLIT, None)
    x, dy = tf.constant(data["x"][mine]), tf.constant(data["dy"][mine])  # float64
    gamma, beta = tf.constant(data["gamma"]), tf.constant(data["beta"])
    offset = tf.constant(data["offset"][mine])
    with strategy.scope():
        bn = models.BatchNorm(
            6,
            momentum=MOMENTUM,
            train_fn=core.sync_batch_norm_and_moments,
            synchronized=True,
        )

    def replica_fn(x, dy, offset):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            y, mean, var = core.sync_batch_norm_and_moments(x, gamma, beta, EPS)
            objective = tf.reduce_sum(y * dy)
        dx, dgamma, dbeta = tape.gradient(objective, [x, gamma, beta])
        _, offset_var = core.cross_replica_moments(offset, [0, 1, 2])
        bn(tf.cast(x, tf.float32), training=True)
        return mean, var, dx, dgamma, dbeta, offset_var

    results = tf.function(lambda *a: strategy.run(replica_fn, args=a))(x, dy, offset)
    local = [strategy.experimental_local_results(r)[0].numpy().tolist() for r in results]
    names = ("mean", "var", "dx", "dgamma", "dbeta", "offset_var")
    out = dict(zip(names, local))
    out["moving_mean"] = bn.moving_mean.numpy().tolist()
    out["moving_variance"] = bn.moving_variance.numpy().tolist()
    with open(args.json, "w") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
