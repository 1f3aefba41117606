"""Choosing the tf.distribute strategy, and which worker writes the run directory.

default:      one device (TensorFlow's default strategy: no distribution).
mirrored:     MirroredStrategy over this machine's visible devices (GPUs, or --virtual_cpus
              logical CPUs); the global batch is split evenly over the replicas.
multi_worker: MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable;
              every worker runs the same command; only the chief writes the run directory.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from normlab.trainer.errors import UsageError

STRATEGIES = ("default", "mirrored", "multi_worker")

_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)


def configure_virtual_cpus(count: int) -> None:
    """Splits the CPU into `count` logical devices (0: leave it alone). Must precede any op."""
    if count <= 0:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:
        raise UsageError(
            f"--virtual_cpus={count} must be set before TensorFlow starts executing; it works "
            "from train.py, not after other TensorFlow work in the same process."
        ) from None


def make_strategy(
    name: str, virtual_cpus: int = 0, collective_timeout: float = 0
) -> tf.distribute.Strategy:
    """The strategy called `name`; a clear UsageError when it cannot be set up."""
    configure_virtual_cpus(virtual_cpus)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable "
                f"describing the cluster and this worker, e.g. {_TF_CONFIG_EXAMPLE}"
            )
        try:
            cluster = json.loads(os.environ["TF_CONFIG"])
            workers = cluster["cluster"]["worker"]
            cluster["task"]["index"]
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(
                f"TF_CONFIG is not valid ({type(e).__name__}: {e}); expected e.g. "
                f"{_TF_CONFIG_EXAMPLE}"
            ) from None
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=collective_timeout or None
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        if strategy.num_replicas_in_sync < len(workers):
            raise UsageError(
                f"TF_CONFIG lists {len(workers)} workers but only "
                f"{strategy.num_replicas_in_sync} replicas joined"
            )
        return strategy
    raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")


def worker_index(strategy: tf.distribute.Strategy) -> int | None:
    """This worker's index in a multi-worker cluster, None otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None
    return int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief writes checkpoints, summaries, flags and metrics: worker 0 (or "chief")."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and int(resolver.task_id) == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )
