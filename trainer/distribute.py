"""Choosing the tf.distribute strategy, and which worker writes the run directory.

default:      one device (TensorFlow's default strategy: no distribution).
mirrored:     MirroredStrategy over this machine's visible devices (GPUs, or --virtual_cpus
              logical CPUs); the global batch is split evenly over the replicas.
multi_worker: MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable;
              every worker runs the same command; only the chief writes the run directory.
              Before TensorFlow forms the cluster, each worker waits in Python until every
              other worker answers at its address (`wait_for_workers` says why).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Self

import tensorflow as tf

from normlab.trainer.errors import RunError, UsageError

STRATEGIES = ("default", "mirrored", "multi_worker")

_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)

# The start-up wait for the other workers: each address is probed (a TCP connect) every
# _PROBE_EVERY seconds, a probe gives up after _PROBE_TIMEOUT, and the workers not answering
# are named at once and then every _REPORT_EVERY seconds.
_PROBE_EVERY = 1.0
_PROBE_TIMEOUT = 2.0
_REPORT_EVERY = 15.0
# How often the waiting main thread looks for a signal and for probes to answer.
_TICK = 0.1


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
    name: str,
    virtual_cpus: int = 0,
    collective_timeout: float = 0,
    *,
    startup_timeout: float = 0,
    log: Callable[[str], None] = print,
) -> tf.distribute.Strategy:
    """The strategy called `name`, logged as "N replicas (kind ...)"; a clear error otherwise.

    Args:
      name: One of STRATEGIES.
      virtual_cpus: Logical CPU devices to split the CPU into (0: leave it alone).
      collective_timeout: multi_worker: seconds an all-reduce may wait for a lost worker
        (0: no limit).
      startup_timeout: multi_worker: seconds to wait for the other workers to answer before
        a RunError naming those that never did (0: no limit). See wait_for_workers.
      log: Where the replica count and the waiting lines go.

    Raises:
      UsageError: a bad name or TF_CONFIG.
      RunError: multi_worker: the other workers did not answer in time, or a signal ended
        the wait (exit code 128 + signal).
    """
    configure_virtual_cpus(virtual_cpus)
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "multi_worker":
        strategy = _multi_worker(collective_timeout, startup_timeout, log)
    else:
        raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    log(_describe(strategy, name))
    return strategy


def _describe(strategy: tf.distribute.Strategy, name: str) -> str:
    """E.g. "1 replica (default strategy)", "2 replicas (MirroredStrategy on CPU:0, CPU:1)"."""
    count = strategy.num_replicas_in_sync
    replicas = f"{count} replica{'' if count == 1 else 's'}"
    if name == "default":
        return f"{replicas} (default strategy)"
    kind = {"mirrored": "MirroredStrategy", "multi_worker": "MultiWorkerMirroredStrategy"}[name]
    devices = ", ".join(d.rsplit("device:", 1)[-1] for d in strategy.extended.worker_devices)
    index = worker_index(strategy)
    where = "" if index is None else f", this worker {index} of {_cluster_size(strategy)},"
    return f"{replicas} ({kind}{where} on {devices})"


def _cluster_size(strategy) -> int:
    jobs = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, ())) for job in ("chief", "worker"))


def _multi_worker(collective_timeout, startup_timeout, log):
    cluster, task_type, task_index = _read_tf_config()
    peers = [
        _Peer(f"{job} {i}", address)
        for job in ("chief", "worker")
        for i, address in enumerate(cluster.get(job, ()))
        if (job, i) != (task_type, task_index)
    ]
    if task_type in ("chief", "worker") and peers:
        wait_for_workers(cluster[task_type][task_index], peers, startup_timeout, log)
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=collective_timeout or None
    )
    # The constructor holds the GIL until the cluster has formed (see wait_for_workers), so
    # Python's SIGINT handler could only run afterwards; with the default action Ctrl-C ends
    # the process at once (shell status 130). A thread blocked in C++ cannot be cancelled or
    # unwound: ending the process is the way. SIGTERM gets TensorFlow's preemption handler,
    # which swallows it, until the constructor returns; restoring the previous handlers then
    # makes SIGTERM end the process again until training handles it.
    with _handled(signal.SIG_DFL, signal.SIGINT, signal.SIGTERM):
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if strategy.num_replicas_in_sync < len(cluster.get("worker", ())):
        raise UsageError(
            f"TF_CONFIG lists {len(cluster['worker'])} workers but only "
            f"{strategy.num_replicas_in_sync} replicas joined"
        )
    return strategy


def _read_tf_config() -> tuple[dict, str, int]:
    """(cluster, task type, task index) from TF_CONFIG, or a UsageError saying what is wrong."""
    if "TF_CONFIG" not in os.environ:
        raise UsageError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable "
            f"describing the cluster and this worker, e.g. {_TF_CONFIG_EXAMPLE}"
        )
    try:
        config = json.loads(os.environ["TF_CONFIG"])
        cluster, task_type = config["cluster"], config["task"]["type"]
        task_index = int(config["task"]["index"])
        if task_index < 0:
            raise IndexError(f"task index {task_index} < 0")
        cluster[task_type][task_index]
        for address in cluster.get("chief", []) + cluster.get("worker", []):
            host, _, port = address.rpartition(":")
            if not host or not 0 < int(port) < 65536:
                raise ValueError(f"{address!r} is not host:port")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise UsageError(
            f"TF_CONFIG is not valid ({type(e).__name__}: {e}); expected e.g. {_TF_CONFIG_EXAMPLE}"
        ) from None
    return cluster, task_type, task_index


def wait_for_workers(
    own_address: str, peers: list[_Peer], timeout: float, log: Callable[[str], None]
) -> None:
    """Returns when every peer answers at its address; says meanwhile which ones it waits for.

    Why in Python, before TensorFlow: MultiWorkerMirroredStrategy's constructor blocks until
    every worker has joined, inside one C++ call (TFE_EnableCollectiveOps) that holds the
    GIL. While it blocks no Python runs: nothing is printed, no time-out is checked, a SIGINT
    handler never runs, and TensorFlow installs a SIGTERM handler of its own (a preemption
    notice) that swallows SIGTERM; so a missing worker would mean a silent process that only
    SIGKILL ends. Running the constructor in a thread does not help: it holds the GIL all
    the same, and a thread blocked in C++ cannot be cancelled. Here the main thread stays in
    Python: "waiting for worker i at host:port" is logged at once and every _REPORT_EVERY
    seconds, SIGINT/SIGTERM raise StartupInterrupted within a _TICK, and after `timeout`
    seconds (0: never) a RunError names the workers that never answered.

    While it waits, this worker accepts connections on its own port, so that the others see
    it as started; the port is released just before TensorFlow's server binds it.

    Args:
      own_address: This worker's host:port in TF_CONFIG.
      peers: The other workers.
      timeout: Seconds before giving up (0: wait indefinitely).
      log: Where the waiting lines go.
    """
    started = time.monotonic()
    next_report = started
    received = []  # signals, recorded by the handler and acted on by the loop
    record = _handled(lambda signum, frame: received.append(signum), signal.SIGINT, signal.SIGTERM)
    with _Listener(own_address) as listener, record:

        def sleep(seconds):
            """Sleeps in _TICKs, answering the others' probes; raises at a signal."""
            end = time.monotonic() + seconds
            while True:
                listener.answer()
                if received:
                    waiting = ", ".join(p.name for p in peers if not p.answered) or "none"
                    raise StartupInterrupted(
                        f"stopped by {signal.Signals(received[0]).name} while waiting for "
                        f"the other workers (not answering: {waiting}); nothing was started "
                        "or written.",
                        received[0],
                    )
                left = end - time.monotonic()
                if left <= 0:
                    return
                time.sleep(min(_TICK, left))

        while True:
            round_start = time.monotonic()
            for peer in peers:
                peer.probe()
            while any(p.probing for p in peers) and (
                time.monotonic() - round_start < _PROBE_TIMEOUT
            ):
                sleep(_TICK)
            waiting = [p for p in peers if not p.answered]
            if not waiting:
                break
            now = time.monotonic()
            if timeout and now - started >= timeout:
                raise RunError(_timeout_message(waiting, timeout))
            if now >= next_report:
                for peer in waiting:
                    log(f"waiting for {peer.name} at {peer.address} ({peer.reason}) ...")
                next_report = now + _REPORT_EVERY
            sleep(round_start + _PROBE_EVERY - time.monotonic())
    log(f"all {len(peers) + 1} workers answered; forming the cluster")


def _timeout_message(waiting: list[_Peer], timeout: float) -> str:
    names = ", ".join(p.name for p in waiting)
    verb = "did not answer" if any(p.ever for p in waiting) else "never answered"
    details = "; ".join(
        f"{p.name} at {p.address} ({'answered earlier, then ' if p.ever else ''}{p.reason})"
        for p in waiting
    )
    return (
        f"--startup_timeout={timeout:g} s passed and {names} {verb}: {details}. Start "
        "train.py there with the same TF_CONFIG cluster and that task index, or correct the "
        "address in TF_CONFIG; nothing was written."
    )


class StartupInterrupted(RunError):
    """SIGINT/SIGTERM ended the wait for the other workers; exit code 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class _Peer:
    """Another worker, probed by TCP connects to its address, each in a daemon thread.

    A thread because name resolution (of a mistyped host, say) cannot be interrupted or
    bounded: the waiting loop only reads the latest result and never waits for a probe
    longer than _PROBE_TIMEOUT.
    """

    def __init__(self, name: str, address: str):
        self.name = name
        self.address = address
        host, _, port = address.rpartition(":")
        self._target = (host.strip("[]"), int(port))
        self.answered = False  # the latest finished probe connected
        self.ever = False  # some probe connected
        self.reason = "no answer yet"
        self._thread: threading.Thread | None = None

    @property
    def probing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def probe(self) -> None:
        """Starts a probe unless one is still running."""
        if not self.probing:
            self._thread = threading.Thread(target=self._probe, name=self.name, daemon=True)
            self._thread.start()

    def _probe(self) -> None:
        try:
            with socket.create_connection(self._target, timeout=_PROBE_TIMEOUT):
                pass
        except OSError as e:
            self.answered, self.reason = False, _reason(e)
        else:
            self.answered, self.ever, self.reason = True, True, "answered"


def _reason(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"host name does not resolve: {error.strerror}"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: not started yet?"
    if isinstance(error, TimeoutError):
        return f"no answer within {_PROBE_TIMEOUT:g} s"
    return error.strerror or type(error).__name__


class _Listener:
    """This worker's port, open while it waits so that the other workers' probes connect.

    Connections are accepted and reset at once (SO_LINGER 0: no TIME_WAIT is left on the
    port). On exit the port is closed, for TensorFlow's server to bind it.
    """

    def __init__(self, address: str):
        self._port = int(address.rpartition(":")[2])
        self._address = address
        self._socket: socket.socket | None = None

    def __enter__(self) -> Self:
        dualstack = socket.has_dualstack_ipv6()
        try:
            self._socket = socket.create_server(
                ("", self._port),
                family=socket.AF_INET6 if dualstack else socket.AF_INET,
                dualstack_ipv6=dualstack,
            )
        except OSError as e:
            raise UsageError(
                f"this worker's address in TF_CONFIG, {self._address}, cannot be used: port "
                f"{self._port} on this machine: {e.strerror}. Another process holds it (a "
                "worker still running?): stop it, or choose another port in TF_CONFIG."
            ) from None
        self._socket.setblocking(False)
        return self

    def answer(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()

    def __exit__(self, *exc) -> bool:
        self._socket.close()
        return False


@contextlib.contextmanager
def _handled(handler, *signums: int) -> Iterator[None]:
    """Within the block, `handler` handles `signums` (only the main thread can set them).

    A signal the process was started with ignored (a background job's SIGINT) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = [s for s in signums if signal.getsignal(s) != signal.SIG_IGN]
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


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
