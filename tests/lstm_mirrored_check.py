"""The LSTM's recurrent batch norm trained by the trainer's TrainStep on 2 MirroredStrategy
replicas: what test_lstm_distributed checks.

    python -m tests.lstm_mirrored_check [--json PATH]

Runs in a process of its own (the 2 logical CPU devices must be configured before the
TensorFlow runtime starts); tests/distributed_check.py runs `check_lstm` in its process with
the other 2-replica measurements, so the suite starts that process once. The same LSTM with the
same initial weights trains 3 steps of a global batch of 32 on one device, on 2 replicas with
synchronized statistics and on 2 replicas without; the two halves of every batch differ in
mean by 0.5, so unsynchronized statistics must show.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import tensorflow as tf

BATCH, ROWS, UNITS = 32, 4, 16


def _train(strategy, impl: str, sync: bool, images, labels) -> dict:
    """Every layer variable (replica 0's copy) after 3 TrainSteps of the LSTM."""
    from normlab.models import ModelConfig
    from normlab.models.lstm import LSTM
    from normlab.trainer.optim import make_optimizer
    from normlab.trainer.steps import TrainStep, layer_variables

    with strategy.scope():
        config = ModelConfig(
            arch="lstm", norm="batch", norm_impl=impl, lstm_units=UNITS, sync_batch_norm=sync
        )
        model = LSTM(config, image_shape=(ROWS, 28, 1))
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
        variables = [v for _, _, v in layer_variables(model)]
        train_step = TrainStep(
            model,
            make_optimizer("sgd", variables, 0.9),
            step,
            learning_rate=lambda s: tf.constant(0.1),
            global_batch_size=BATCH,
            strategy=strategy,
        )
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)
    if strategy.num_replicas_in_sync > 1:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        dataset = strategy.experimental_distribute_dataset(dataset.with_options(options))
    for x, y in dataset:
        train_step(x, y)
    return {
        f"{name}/{v.name}": np.asarray(strategy.experimental_local_results(v)[0])
        for name, module in model.named_layers()
        for v in module.variables
    }


def _max_diff(a: dict, b: dict, only: str = "") -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a if only in k)


def check_lstm(mirrored: tf.distribute.Strategy) -> dict:
    """The measurements, keyed lstm/<impl>/<what>; `mirrored` has 2 replicas."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3 * BATCH, ROWS, 28, 1)).astype(np.float32)
    images[1::2] += 0.5  # the two replicas' halves of each batch have different statistics
    labels = rng.integers(0, 10, 3 * BATCH)
    results = {"lstm/replicas": float(mirrored.num_replicas_in_sync)}
    for impl in ("custom", "builtin"):
        one = _train(tf.distribute.get_strategy(), impl, True, images, labels)
        two = _train(mirrored, impl, True, images, labels)
        unsynced = _train(mirrored, impl, False, images, labels)
        results[f"lstm/{impl}/moving_rows"] = float(one["input_norm/moving_mean:0"].shape[0])
        results[f"lstm/{impl}/moving_moved"] = max(
            float(np.max(np.abs(one[k] - (1.0 if "variance" in k else 0.0))))
            for k in one
            if "moving" in k
        )
        results[f"lstm/{impl}/sync_max_diff"] = _max_diff(one, two)
        results[f"lstm/{impl}/unsync_max_diff"] = _max_diff(one, unsynced, "moving_variance")
    return results


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    from normlab.trainer import distribute

    distribute.configure_virtual_cpus(2)
    tf.get_logger().setLevel("ERROR")  # each run traces its own step: no retracing notes
    results = check_lstm(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    for key, value in results.items():
        print(f"{key:<36}{value:.3g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
