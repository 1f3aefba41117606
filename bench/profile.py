"""Where a training step's time goes: normlab's compiled loop and Keras `model.fit`, op by op.

    python -m bench.profile                          # batch 2, 16, 128 (~2 min)
    python -m bench.profile --batch_sizes 2 --top 25 --loop old

Both train bench.keras_fit's CNN with batch norm (SGD with momentum) on real Fashion-MNIST
images: normlab as train.py runs it (a Trainer's compiled loop of `--steps_per_loop` steps over
its training batches), Keras with `model.fit` at `--keras_steps_per_execution`. Each is warmed
up, then `--steps` steps run under TensorFlow's profiler (tf.profiler.experimental); the trace
(XSpace protobuf) is read back and every op event on TensorFlow's compute threads is put in
one of these parts by its name (graph scope and op type):

* data input: tf.data's ops inside the step (IteratorGetNext and friends, which wait for the
  pipeline), and for normlab's in-graph input the gather/standardize ops under `input/`;
  `pipeline threads` is tf.data's own work on its threads (parallel map, prefetch), which
  overlaps the step;
* forward: the model and the loss (normlab: the step's `forward/` scope, batch norm's moving
  averages included; Keras: the `sequential` model's scope);
* backward: the gradient (normlab: `backward/`, the closed-form norms' own backward
  included; both: ops TensorFlow's GradientTape added, `gradient_tape/`);
* optimizer: the update (normlab: `update/`; Keras: its optimizer's scope, `sgd`);
* metrics, other: the rest: the accuracy, the gradient norm and finiteness check, the learning
  rate (normlab), Keras' loss and metric trackers;
* loop control: the while loop's and conds' own ops (Enter, Merge, Switch, NextIteration...);
* host: wall time in which no op ran on any compute thread: Python, the function call,
  the executor scheduling between ops.

Printed per batch size and framework: wall ms per step, the number of ops executed per step,
per part the ops per step and the summed op time per step (across threads: it can exceed the
wall time when two ops run at once), and the `--top` ops by time. Timings under the profiler
are slower than without it, and on a shared machine they include other processes' load; the
op counts are exact. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
import numpy as np
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from normlab import data, machine
from normlab.bench import keras_fit
from normlab.trainer.config import Config
from normlab.trainer.trainer import Trainer

PARTS = ("data input", "forward", "backward", "optimizer", "metrics, other", "loop control")
_DATA_TYPES = {"IteratorGetNext", "IteratorGetNextSync", "IteratorGetNextAsOptional",
               "OptionalGetValue", "OptionalHasValue", "MultiDeviceIteratorGetNextFromShard"}  # fmt: skip
_CONTROL_TYPES = {"Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond", "Identity",
                  "NoOp", "_SwitchN", "StatelessIf", "If", "StatelessWhile", "While",
                  "PartitionedCall", "StatefulPartitionedCall", "_Retval", "_Arg", "Const"}  # fmt: skip
# Graph scopes: normlab's step names its parts (trainer/steps.py); Keras' model is
# "sequential*", its optimizer "sgd*" / "SGD*", and its backward, like normlab's built-in
# gradients, "gradient_tape".
_SCOPES = (
    (re.compile(r"(^|/)input/"), "data input"),
    (re.compile(r"(^|/)(update|sgd|SGD|adam|Adam)(_\d+)*/"), "optimizer"),
    (re.compile(r"(^|/)(backward|gradient_tape)/"), "backward"),
    (re.compile(r"(^|/)(forward|sequential)(_\d+)*/"), "forward"),
)


def classify(name: str, op_type: str) -> str:
    """The part of a step an op event `name:op_type` of the trace belongs to (see the module
    docstring)."""
    if op_type in _DATA_TYPES:
        return "data input"
    for pattern, part in _SCOPES:
        if pattern.search(name):
            return part
    if op_type in _CONTROL_TYPES:
        return "loop control"
    return "metrics, other"


def read_trace(logdir: str) -> dict:
    """The op events of the newest trace in logdir: {"ops": [(name, type, thread, start_ns,
    duration_ns)], "pipeline_ns": tf.data's own work on its threads}."""
    path = max(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
               key=os.path.getmtime)  # fmt: skip
    space = xplane_pb2.XSpace()
    with open(path, "rb") as fh:
        space.ParseFromString(fh.read())
    ops, pipeline = [], 0.0
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            if line.name.startswith("tf_data_private_threadpool"):
                pipeline += sum(
                    e.duration_ps for e in line.events if ":" in meta[e.metadata_id].name
                ) / 1e3
            if line.name.startswith("tf_data_iterator_get_next"):  # the step's IteratorGetNext
                for e in line.events:
                    if meta[e.metadata_id].name == "IteratorGetNextOp::DoCompute":
                        start = line.timestamp_ns + e.offset_ps / 1e3
                        ops.append(("IteratorGetNext", "IteratorGetNext", line.id, start,
                                    e.duration_ps / 1e3))  # fmt: skip
            if line.name.startswith("tf_data"):
                continue
            for e in line.events:  # the compute threads, and ops run inline by the caller
                name = meta[e.metadata_id].name
                if ":" not in name or "::" in name or ": " in name:  # bookkeeping, not an op
                    continue
                op_name, op_type = name.rsplit(":", 1)
                start = line.timestamp_ns + e.offset_ps / 1e3
                ops.append((op_name, op_type, line.id, start, e.duration_ps / 1e3))
    return {"ops": ops, "pipeline_ns": pipeline}


def _busy_ns(ops) -> float:
    """Wall time covered by at least one op (the union of their intervals)."""
    busy, end = 0.0, -1.0
    for start, stop in sorted((s, s + d) for *_, s, d in ops):
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy


def summarize(trace: dict, steps: int, wall_s: float, top: int) -> dict:
    """Per-step op counts and times by part, host time, and the top ops by time."""
    ops = trace["ops"]
    count, ns = collections.Counter(), collections.Counter()
    by_op_ns, by_op_count = collections.Counter(), collections.Counter()
    by_type = collections.defaultdict(collections.Counter)
    for name, op_type, _, _, duration in ops:
        part = classify(name, op_type)
        count[part] += 1
        ns[part] += duration
        by_type[part][op_type.removeprefix("_MklNative").removeprefix("_Mkl")] += 1
        # The while loop's iterations and the cond's branches are one op each, whatever the
        # frame: strip the prefixes TensorFlow adds so the same op sums over steps.
        key = f"{_short(name)}:{op_type}"
        by_op_ns[(part, key)] += duration
        by_op_count[(part, key)] += 1
    wall_ns = wall_s * 1e9
    return {
        "wall_ms_per_step": wall_s * 1e3 / steps,
        "ops_per_step": len(ops) / steps,
        "parts": {
            p: {"ops_per_step": count[p] / steps, "ms_per_step": ns[p] / 1e6 / steps,
                "op_types": {t: c / steps for t, c in by_type[p].most_common()}}  # fmt: skip
            for p in PARTS
        },
        "host_ms_per_step": max(wall_ns - _busy_ns(ops), 0.0) / 1e6 / steps,
        "pipeline_threads_ms_per_step": trace["pipeline_ns"] / 1e6 / steps,
        "top": [
            {"part": part, "op": key, "per_step": by_op_count[(part, key)] / steps,
             "us_per_step": t / 1e3 / steps}  # fmt: skip
            for (part, key), t in by_op_ns.most_common(top)
        ],
    }


def _short(name: str) -> str:
    parts = [p for p in name.split("/") if not p.startswith("_") and p not in ("while", "body")]
    parts = [p for p in parts if p not in ("cond", "then", "else", "StatefulPartitionedCall")]
    return "/".join(parts)


def profile(run, steps: int, logdir: str) -> tuple[dict, float]:
    """Runs `run(steps)` under the profiler; returns (the trace, wall seconds)."""
    # Level 3: every op; at the default level 2 the executor leaves out the ops it deems
    # inexpensive (most of a small batch's).
    options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=3, python_tracer_level=0)
    tf.profiler.experimental.start(logdir, options=options)
    try:
        start = time.perf_counter()
        run(steps)
        wall = time.perf_counter() - start
    finally:
        tf.profiler.experimental.stop()
    return read_trace(logdir), wall


def normlab_runner(splits, batch_size: int, steps_per_loop: int, tmp: str, loop: str):
    """A function running n more steps of a Trainer's compiled loop, as train.py trains."""
    config = Config(norm="batch", batch_size=batch_size, train_steps=10**8, eval_every=10**8,
                    checkpoint_every=10**8, histogram_every=10**8, summary_every=10**8,
                    log_every=10**8, validation_size=0, steps_per_loop=steps_per_loop)  # fmt: skip
    trainer = Trainer(config, os.path.join(tmp, f"b{batch_size}-{loop}"), splits=splits,
                      log=lambda _: None)  # fmt: skip
    if loop == "old":  # the loop before issue 26: tf.data per step, the update op by op
        trainer.in_graph_input = False
        trainer.optimizer.fused = False

    # The compiled loop alone, on the batches train() would give it: no summary-collecting
    # steps, validation or checkpoints in the profile.
    if trainer.in_graph_input:
        batches = trainer._in_graph_batches(0)
    else:
        batches = iter(splits.train_batches(batch_size=batch_size, seed=config.seed))

    def run(steps: int) -> None:
        for _ in range(0, steps, steps_per_loop):
            int(trainer.train_step.loop(batches, steps_per_loop)["steps"])

    return run


def keras_runner(x, y, batch_size: int, executions: int):
    model = keras_fit.compiled_batch_norm_cnn(executions)

    def run(steps: int) -> None:
        n = steps * batch_size
        model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)

    return run


def report(name: str, s: dict) -> None:
    print(f"  {name}: {s['wall_ms_per_step']:.3f} ms/step wall, {s['ops_per_step']:.0f} ops/step,"
          f" host (no op running) {s['host_ms_per_step']:.3f} ms/step, tf.data threads "
          f"{s['pipeline_threads_ms_per_step']:.3f} ms/step")  # fmt: skip
    for part, v in s["parts"].items():
        types = ", ".join(f"{t} {c:.3g}" for t, c in v["op_types"].items())
        print(f"    {part:<14} {v['ops_per_step']:>6.1f} ops {v['ms_per_step']:>8.3f} ms  ({types})")
    for t in s["top"]:
        print(f"      {t['us_per_step']:>8.1f} us  x{t['per_step']:<4.1f} {t['part']:<12} {t['op']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[2, 16, 128])
    parser.add_argument("--steps", type=int, default=0,
                        help="steps profiled (default 64: with many more, the profiler's "
                             "buffers drop events)")  # fmt: skip
    parser.add_argument("--steps_per_loop", type=int, default=Config.steps_per_loop)
    parser.add_argument("--keras_steps_per_execution", type=int, default=32)
    parser.add_argument("--loop", choices=["new", "old"], default="new",
                        help="old: the loop before issue 26 (training batches through a "
                             "tf.data iterator per step, the momentum update op by op)")  # fmt: skip
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--frameworks", nargs="+", default=["normlab", "keras"])
    parser.add_argument("--out", default="bench/results/profile.json")
    args = parser.parse_args(argv)
    splits = data.load("fashion_mnist", None, 0)
    x = ((splits.train_x / 255.0 - splits.pixel_mean) / splits.pixel_std).astype(np.float32)
    y = splits.train_y.astype(np.int32)
    out = {"cpu": machine.cpu_model(), "commit": machine.commit(), "load": os.getloadavg(),
           "batch_sizes": {}}  # fmt: skip
    print(f"CPU: {out['cpu']}  commit {out['commit']}  load {out['load'][0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.batch_sizes:
            steps = args.steps or 64
            runners = {}
            if "normlab" in args.frameworks:
                runners["normlab"] = normlab_runner(splits, b, args.steps_per_loop, tmp, args.loop)
            if "keras" in args.frameworks:
                runners["keras"] = keras_runner(x, y, b, args.keras_steps_per_execution)
            print(f"\nbatch {b}, {steps} steps profiled")
            out["batch_sizes"][b] = {}
            for name, run in runners.items():
                run(min(steps, 128))  # trace, compile, warm up
                trace, wall = profile(run, steps, os.path.join(tmp, f"trace-{name}-{b}"))
                s = summarize(trace, steps, wall, args.top)
                out["batch_sizes"][b][name] = s
                report(name, s)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
