"""Where and with what a measurement was made: processor, cores, memory, versions, commit.

The report and every benchmark name the CPU model beside their numbers, because speed ratios
differ between CPUs (an Intel Xeon and an AMD EPYC disagree on which batch norm is faster).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except (OSError, ValueError):
        pass
    return None


def commit(root: str | None = None) -> str:
    """The short commit of normlab's code (of the checkout at root, default this one), marked
    when the tree had changes; "unknown" outside a git checkout."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        return subprocess.run(  # noqa: PLW1510 (a failure is an empty answer)
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"{commit} (with uncommitted changes)" if dirty else commit


def describe() -> dict[str, str]:
    """Versions and hardware, as strings for the report."""
    import numpy as np
    import tensorflow as tf

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    memory = _memory_gb()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} (nproc; {affinity} usable by this process)"
        if affinity is not None
        else str(os.cpu_count()),
        "memory": f"{memory:.1f} GB" if memory else "unknown",
        "os": platform.platform(),
        "commit": commit(here),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
    }


def measure_bandwidth(repeats: int = 7) -> dict:
    """Memory bandwidth of this machine, now: tf.reduce_sum over a 256 MiB float32 tensor (bytes
    read / time, TensorFlow's own thread pool), and a NumPy copy of it (bytes read + written /
    time, one thread)."""
    import numpy as np
    import tensorflow as tf

    big = tf.random.uniform([64 * 1024 * 1024], dtype=tf.float32)
    nbytes = 4 * 64 * 1024 * 1024
    reduce = tf.function(lambda a: tf.reduce_sum(a))
    reduce(big)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        reduce(big)
        times.append(time.perf_counter() - start)
    src = big.numpy()
    dst = np.empty_like(src)
    copies = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        copies.append(time.perf_counter() - start)
    return {
        "tf_reduce_sum_read_gbps": nbytes / float(np.median(times)) / 1e9,
        "numpy_copy_read_write_gbps": 2 * nbytes / float(np.median(copies)) / 1e9,
        "method": "256 MiB float32: tf.reduce_sum (read) and np.copyto (read+write), medians",
    }
