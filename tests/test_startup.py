"""Start-up as a user sees it: the replica count of every strategy, a multi-worker cluster
whose other worker is missing (not started yet, or a mistyped host), Ctrl-C while TensorFlow
imports, a second training of a run in use, and the same command after a kill before the
first checkpoint."""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.fixtures import ROOT

FLAGS = [
    "--batch_size=32",
    "--validation_size=64",
    "--widths=8",
    "--dense_units=16",
    "--train_steps=2",
    "--eval_every=100",
    "--lr_schedule=constant",
]
# Bounds that detect a hang, not speed: TensorFlow's import takes a few seconds on a
# loaded machine before train.py says anything; the wait reacts to a signal within 0.1 s.
STARTUP_BOUND = 90
SIGNAL_BOUND = 15
_TICK = 0.1
# Runs the program (argv[1:]) as a terminal would: with SIGINT's default action even when
# these tests run where SIGINT is ignored (a background job, whose children inherit that).
_AS_FROM_A_TERMINAL = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def _distinct_free_ports(n):
    """n ports free on 127.0.0.1, all different: every socket stays bound until all are."""
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Program:
    """train.py in a subprocess, as started from a terminal; its stdout read line by line."""

    def __init__(self, *args, tf_config=None):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        if tf_config is not None:
            env["TF_CONFIG"] = json.dumps(tf_config)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _AS_FROM_A_TERMINAL, os.path.join(ROOT, "train.py"), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = []
        self.stderr = ""
        self._queue = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),  # a full pipe would block
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            self._queue.put(line)

    def _read_stderr(self):
        self.stderr = self.proc.stderr.read()

    def wait_for_line(self, text, timeout):
        """The first stdout line containing `text`; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=_TICK)
            except queue.Empty:
                if self.proc.poll() is not None and not self._readers[0].is_alive():
                    pytest.fail(f"ended before {text!r}: {self.lines} {self.finish(10)[2]}")
                continue
            self.lines.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} in {timeout} s; stdout: {self.lines}")

    def finish(self, timeout):
        """(exit code, stdout, stderr) once the program ends."""
        self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        assert "Traceback" not in self.stderr, self.stderr
        return self.proc.returncode, "".join(self.lines), self.stderr

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _cluster(index, *addresses):
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def _worker(model_dir, idx_dir, tf_config, *args):
    return Program(
        f"--model_dir={model_dir}",
        f"--data_dir={idx_dir}",
        "--strategy=multi_worker",
        "--collective_timeout=60",
        *FLAGS,
        *args,
        tf_config=tf_config,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.slow
def test_a_missing_worker_is_named_and_a_signal_ends_the_wait(tmp_path, idx_dir, signum):
    p0, p1 = _distinct_free_ports(2)
    worker0 = _worker(tmp_path / "run", idx_dir, _cluster(0, f"127.0.0.1:{p0}", f"127.0.0.1:{p1}"))
    try:
        worker0.wait_for_line(f"waiting for worker 1 at 127.0.0.1:{p1}", STARTUP_BOUND)
        worker0.proc.send_signal(signum)
        sent = time.monotonic()
        code, _, stderr = worker0.finish(SIGNAL_BOUND)
        assert time.monotonic() - sent < SIGNAL_BOUND
    finally:
        worker0.kill()
    assert code == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name} while waiting" in stderr
    assert "worker 1" in stderr
    assert not os.path.exists(tmp_path / "run")  # nothing was written


@pytest.mark.slow
def test_the_startup_timeout_names_the_workers_that_never_answered(tmp_path, idx_dir):
    p0, p1, p2 = _distinct_free_ports(3)
    cluster = _cluster(0, f"127.0.0.1:{p0}", f"127.0.0.1:{p1}", f"no-such-host.invalid:{p2}")
    worker0 = _worker(tmp_path / "run", idx_dir, cluster, "--startup_timeout=3")
    try:
        code, stdout, stderr = worker0.finish(STARTUP_BOUND)
    finally:
        worker0.kill()
    assert code == 1, stderr
    assert f"waiting for worker 2 at no-such-host.invalid:{p2} (host name does not" in stdout
    message = stderr.strip()
    assert message.startswith("train.py: error: --startup_timeout=3 s passed")
    assert "worker 1, worker 2 never answered" in message
    assert f"worker 1 at 127.0.0.1:{p1} (connection refused" in message
    assert f"worker 2 at no-such-host.invalid:{p2} (host name does not resolve" in message
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_a_worker_started_late_joins_and_both_train(tmp_path, idx_dir):
    p0, p1 = _distinct_free_ports(2)
    addresses = (f"127.0.0.1:{p0}", f"127.0.0.1:{p1}")
    model_dir = tmp_path / "run"
    worker0 = _worker(model_dir, idx_dir, _cluster(0, *addresses))
    worker1 = None
    try:
        worker0.wait_for_line(f"waiting for worker 1 at 127.0.0.1:{p1}", STARTUP_BOUND)
        worker1 = _worker(model_dir, idx_dir, _cluster(1, *addresses))
        worker0.wait_for_line("all 2 workers answered", STARTUP_BOUND)
        results = [worker0.finish(300), worker1.finish(300)]
    finally:
        for worker in (worker0, worker1):
            if worker is not None:
                worker.kill()
    for code, _, stderr in results:
        assert code == 0, stderr
    for index, (_, stdout, _) in enumerate(results):
        line = f"2 replicas (MultiWorkerMirroredStrategy, this worker {index} of 2, on CPU:0)"
        assert line in stdout.splitlines()
    with open(model_dir / "metrics.json") as fh:
        assert json.load(fh)["step"] == 2


@pytest.mark.slow
def test_the_replica_count_is_logged_for_every_strategy(tmp_path, idx_dir):
    expected = {  # MultiWorkerMirroredStrategy's: test_a_worker_started_late_joins...
        "1 replica (default strategy)": [],
        "1 replica (MirroredStrategy on CPU:0)": ["--strategy=mirrored"],
    }
    programs = {  # run side by side
        line: Program(f"--model_dir={tmp_path / str(i)}", f"--data_dir={idx_dir}", *FLAGS, *args)
        for i, (line, args) in enumerate(expected.items())
    }
    try:
        results = {line: program.finish(300) for line, program in programs.items()}
    finally:
        for program in programs.values():
            program.kill()
    for line, (code, stdout, stderr) in results.items():
        assert code == 0, stderr
        assert stdout.splitlines()[0] == line


def _importing_tensorflow(pid: int) -> bool:
    """Whether the process has loaded TensorFlow's first shared library (its import runs)."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return "tensorflow" in fh.read()
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_while_tensorflow_imports_prints_one_line(tmp_path):
    program = Program(f"--model_dir={tmp_path / 'run'}", *FLAGS)
    try:
        deadline = time.monotonic() + STARTUP_BOUND
        while not _importing_tensorflow(program.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        program.proc.send_signal(signal.SIGINT)
        code, stdout, stderr = program.finish(SIGNAL_BOUND)
    finally:
        program.kill()
    assert (code, stdout, stderr) == (130, "", "train.py: interrupted.\n")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_trains_again_with_the_same_command(
    tmp_path, idx_dir
):
    """Killed (SIGKILL) before its first checkpoint; meanwhile a second training of the same
    run is refused at once (exit 2, before loading anything); then the same command again
    starts from step 0, says so, and finishes, the earlier attempt's summaries kept aside."""
    model_dir = tmp_path / "run"
    # One checkpoint, at the end; every step writes summaries and histograms (slower steps).
    command = (f"--model_dir={model_dir}", f"--data_dir={idx_dir}", *FLAGS, "--train_steps=40",
               "--checkpoint_every=40", "--log_every=1", "--summary_every=1",
               "--histogram_every=1")  # fmt: skip
    first = Program(*command)
    second = None
    try:
        first.wait_for_line("step 1/40", STARTUP_BOUND)
        first.proc.send_signal(signal.SIGSTOP)  # held before its checkpoint, holding the lock
        second = Program(*command)
        code, stdout, stderr = second.finish(STARTUP_BOUND)
        assert code == 2 and stdout == "", stderr
        assert stderr.startswith(f"train.py: error: {model_dir} is in use by another training "
                                 f"(pid {first.proc.pid} on ")  # fmt: skip
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(SIGNAL_BOUND)
    finally:
        for program in (first, second):
            if program is not None:
                program.kill()
    assert not os.path.exists(model_dir / "checkpoints" / "checkpoint")  # none saved yet
    assert os.listdir(model_dir / "train")
    again = Program(*command)
    try:
        code, stdout, stderr = again.finish(300)
    finally:
        again.kill()
    assert code == 0, stderr
    aside = model_dir / "earlier-attempts" / "1-before-first-checkpoint"
    assert (
        "starting again from step 0: the earlier attempt stopped before its first checkpoint "
        f"(what it left, train/, moved to {aside})"
    ) in stdout.splitlines()
    assert os.listdir(aside / "train")
    with open(model_dir / "metrics.json") as fh:
        assert json.load(fh)["step"] == 40
