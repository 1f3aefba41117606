"""The LSTM's recurrent batch norm under tf.distribute: on 2 replicas (logical CPUs) the
trainer's TrainStep trains as on one device, statistics synchronized per time step, moving
statistics included; unsynchronized, each replica uses its own statistics."""

import json
import subprocess
import sys

import pytest

from tests.fixtures import ROOT

# Runs in a process of its own: the 2 logical CPU devices must be configured before the
# TensorFlow runtime starts, which pytest's process has already done.
_CHECK = r"""
import json
from normlab.trainer import distribute
distribute.configure_virtual_cpus(2)
import numpy as np
import tensorflow as tf
tf.get_logger().setLevel("ERROR")  # each run traces its own step: no retracing notes
from normlab.models import ModelConfig
from normlab.models.lstm import LSTM
from normlab.trainer.optim import make_optimizer
from normlab.trainer.steps import TrainStep, layer_variables

BATCH, ROWS = 32, 4
rng = np.random.default_rng(0)
images = rng.normal(size=(3 * BATCH, ROWS, 28, 1)).astype(np.float32)
images[1::2] += 0.5  # the two replicas' halves of each batch have different statistics
labels = rng.integers(0, 10, 3 * BATCH)

def train(strategy, impl, sync):
    with strategy.scope():
        config = ModelConfig(
            arch="lstm", norm="batch", norm_impl=impl, lstm_units=16, sync_batch_norm=sync
        )
        model = LSTM(config, image_shape=(ROWS, 28, 1))
        step = tf.Variable(0, dtype=tf.int64, trainable=False)
        variables = [v for _, _, v in layer_variables(model)]
        train_step = TrainStep(
            model, make_optimizer("sgd", variables, 0.9), step,
            learning_rate=lambda s: tf.constant(0.1), global_batch_size=BATCH,
            strategy=strategy,
        )
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)
    if strategy.num_replicas_in_sync > 1:
        options = tf.data.Options()
        policy = tf.data.experimental.AutoShardPolicy.DATA
        options.experimental_distribute.auto_shard_policy = policy
        dataset = strategy.experimental_distribute_dataset(dataset.with_options(options))
    for x, y in dataset:
        train_step(x, y)
    return {
        f"{name}/{v.name}": np.asarray(strategy.experimental_local_results(v)[0])
        for name, module in model.named_layers() for v in module.variables
    }

def max_diff(a, b, only=""):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a if only in k)

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
results = {"replicas": mirrored.num_replicas_in_sync}
for impl in ("custom", "builtin"):
    one = train(tf.distribute.get_strategy(), impl, True)
    two = train(mirrored, impl, True)
    unsynced = train(mirrored, impl, False)
    results[impl] = {
        "moving_rows": int(one["input_norm/moving_mean:0"].shape[0]),
        "moving_moved": max(
            float(np.max(np.abs(one[k] - (1.0 if "variance" in k else 0.0))))
            for k in one if "moving" in k
        ),
        "sync_max_diff": max_diff(one, two),
        "unsync_max_diff": max_diff(one, unsynced, "moving_variance"),
    }
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def measured():
    proc = subprocess.run(
        [sys.executable, "-c", _CHECK], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", ["custom", "builtin"])
def test_two_replicas_train_as_one_device(measured, impl):
    assert measured["replicas"] == 2
    result = measured[impl]
    assert result["moving_rows"] == 4 and result["moving_moved"] > 1e-3
    # Synchronized statistics over 2 x 16 examples are those of the 32: the same 3 steps up
    # to float32 rounding of the split sums, every weight and per-step moving statistic.
    assert result["sync_max_diff"] < 1e-5
    # Each replica's own statistics: the moving variances are the mean of the halves', which
    # differ in mean by 0.5, not the global batch's.
    assert result["unsync_max_diff"] > 1e-4
