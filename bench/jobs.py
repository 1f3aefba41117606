"""Is the report's suite faster with several jobs at once? Two runs one after the other (all
cores' threads each) against the same two at once (cores / 2 threads each), per cell.

    python -m bench.jobs                               # CNN batch 2 and 128, LSTM batch 128
    python -m bench.jobs --cells default/batch/2/1500

Each run is a separate process training a Trainer for the given steps (the suite's code path;
`report.py --jobs=K` gives each worker cores / K threads the same way); the time includes
process start-up and data loading, as in the suite. Prints both wall times and their ratio.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CELLS = ("default/batch/2/1500", "default/batch/128/300", "lstm/layer/128/150")


def _train(threads: int, arch: str, norm: str, batch: int, steps: int) -> None:
    """In a child process: one run of `steps` steps with `threads` TensorFlow threads."""
    import normlab  # noqa: F401 - first: it imports TensorFlow quietly

    # isort: split
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    from normlab.trainer.config import Config
    from normlab.trainer.trainer import Trainer

    lstm = dict(optimizer="adam", lr_schedule="constant", learning_rate=1e-3)
    config = Config(
        arch=arch, norm=norm, batch_size=batch, train_steps=steps, eval_every=10**8,
        checkpoint_every=10**8, log_every=10**8, histogram_every=10**8, max_to_keep=1,
        **(lstm if arch == "lstm" else {}),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(config, tmp, log=lambda _: None).train_and_evaluate()


def _processes(threads: int, cell: str, count: int) -> float:
    start = time.perf_counter()
    children = [
        subprocess.Popen([sys.executable, "-m", "bench.jobs", "--_child", str(threads), cell])
        for _ in range(count)
    ]
    if any(child.wait() for child in children):
        raise SystemExit(f"a run of {cell} failed")
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.jobs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cells", nargs="+", default=list(CELLS), help="arch/norm/batch/steps")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        arch, norm, batch, steps = args._child[1].split("/")
        _train(int(args._child[0]), arch, norm, int(batch), int(steps))
        return 0
    from normlab import machine

    cores = os.cpu_count() or 2
    print(f"CPU: {machine.cpu_model()}, {cores} cores; commit {machine.commit()}")
    print(f"{'cell':<26}{'one after the other':>21}{'two at once':>13}{'speed-up':>10}")
    for cell in args.cells:
        sequential = _processes(0, cell, 1) + _processes(0, cell, 1)
        parallel = _processes(max(1, cores // 2), cell, 2)
        print(f"{cell:<26}{sequential:>19.1f} s{parallel:>11.1f} s{sequential / parallel:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
