"""Runs a plan's jobs: skips those with a record, trains the rest, writes each record at once.

A job whose record exists with the same configuration hash is done, on any machine; only a
run in progress needs its scratch run directory (`<root>/<name>`: the trainer's checkpoints,
from which it resumes). A run whose loss becomes non-finite is an outcome ("diverged" at its
step), not an error. `--jobs=K` trains K jobs at once in K worker processes, each with its
share of the cores' threads; `--shard=I/N` takes every N-th job of the plan (design.shard).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
import uuid
from collections.abc import Callable

from normlab import machine
from normlab.report import design, records
from normlab.trainer.loop import duration

WALL_FILE = "suite.json"  # in a scratch run directory: wall seconds of earlier sessions


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every job needs besides itself (picklable: sent to worker processes)."""

    preset: design.Preset
    root: str
    results: str
    data_dir: str
    out: str = ""  # where REPORT.md goes (--commit_records rewrites it after each record)
    # The commit of the code, taken once when the session starts: records committed during the
    # session move HEAD and dirty the tree, but not the code that trains.
    commit: str = ""
    threads: int = 0  # TensorFlow threads per process; 0: TensorFlow's default (all cores)


_SPLITS = {}  # this process's data, loaded once
_WORKER_SETUP = {}  # a worker process's Setup


def _splits(setup: Setup):
    if "splits" not in _SPLITS:
        from normlab import data

        _SPLITS["splits"] = data.load(
            setup.preset.base["dataset"],
            setup.data_dir or None,
            setup.preset.base["validation_size"],
        )
    return _SPLITS["splits"]


def _init_worker(setup: Setup) -> None:
    """A worker process's start: its setup, its share of the threads, its data."""
    import tensorflow as tf

    _WORKER_SETUP["setup"] = setup
    tf.get_logger().setLevel("ERROR")
    if setup.threads:
        tf.config.threading.set_intra_op_parallelism_threads(setup.threads)
        tf.config.threading.set_inter_op_parallelism_threads(setup.threads)
    _splits(setup)


def run_job(job: design.Job, setup: Setup, log: Callable[[str], None] = lambda _: None) -> dict:
    """Does one job and writes its record; returns the record."""
    from normlab.report import analyses

    splits, info = _splits(setup), machine.describe()
    info["commit"] = setup.commit or info["commit"]
    preset = setup.preset
    start = time.perf_counter()
    if job.kind == "parity":
        record = records.base(job, preset.name, info)
        record.update(result=analyses.parity_table())
    elif job.kind == "cost":
        params = dict(job.params)
        configs = cost_configs(preset, setup.data_dir, len(splits.train_x), params["norms"])
        record = records.base(job, preset.name, info)
        record.update(result=analyses.cost(configs, splits, params["rounds"], params["steps"]))
    else:
        outcome = _train(job, setup, splits, log)
        run_dir = os.path.join(setup.root, job.name)
        if outcome["status"] == records.COMPLETE:
            begin = time.perf_counter()
            outcome["analyses"] = _analyses(job, run_dir, splits, preset)
            outcome["wall_seconds"] += time.perf_counter() - begin
        record = records.run_record(job, preset.name, run_dir, outcome, info)
        record["classes"] = splits.info.num_classes
    record["train_examples"] = len(splits.train_x)
    record.setdefault("wall_seconds", time.perf_counter() - start)
    record["threads"] = setup.threads or os.cpu_count()
    records.write_json(records.path(setup.results, preset.name, job.name), record)
    return record


def cost_configs(preset: design.Preset, data_dir: str, examples: int, norms) -> dict:
    """The cost benchmark's Config per norm: the design's CNN at the reference batch and the
    grid's middle rate (batch norm as every batch-norm run trains), unbounded in steps."""
    cell = dict(section="cost", arch="default", epochs=1.0, learning_rate=preset.base_lr)
    return {
        norm: dataclasses.replace(
            design.make_config(preset, data_dir, examples, dict(cell, norm=norm), 0),
            train_steps=10**9,
        )
        for norm in norms
    }


def _train(job, setup: Setup, splits, log) -> dict:
    """Trains (or resumes) the run; its wall time summed over sessions (kept in the run dir)."""
    from normlab.trainer.errors import NonFiniteError
    from normlab.trainer.trainer import Trainer

    run_dir = os.path.join(setup.root, job.name)
    earlier = (records.read_json(os.path.join(run_dir, WALL_FILE)) or {}).get("wall_seconds", 0.0)
    start = time.perf_counter()
    status, step = records.COMPLETE, None
    # Resumes from its checkpoint; one killed before its first checkpoint starts again from
    # step 0 by itself (start_over=True would set aside a run that has checkpoints).
    kind = _ema_curves_trainer() if "ema_curves" in job.analyses else Trainer
    trainer = kind(job.config, run_dir, splits=splits, log=log)
    try:
        trainer.train_and_evaluate()
    except NonFiniteError as e:
        status, step = records.DIVERGED, e.step
    finally:
        trainer.close()
        wall = earlier + time.perf_counter() - start
        records.write_json(os.path.join(run_dir, WALL_FILE), {"wall_seconds": wall})
    return {"status": status, "diverged_at_step": step, "wall_seconds": wall}


def _ema_curves_trainer():
    from normlab.report import analyses
    from normlab.trainer.trainer import Trainer

    class EmaCurvesTrainer(Trainer):
        """At every validation, also validates with the plain and the bias-corrected moving
        averages (analyses.moving_statistics), written beside the run's own curve as
        `metrics/accuracy_<method>`: the moving averages' warm-up, seen step by step."""

        def _validate(self, step: int) -> dict:
            result = super()._validate(step)
            if result:
                for method, stats in analyses.moving_statistics(self.model).items():
                    other = analyses.evaluate_with(self, stats, "val")
                    self.writers["eval"].write(step, {f"{EMA_TAG}_{method}": other["accuracy"]})
            return result

    return EmaCurvesTrainer


EMA_TAG = "metrics/accuracy"


def _analyses(job, run_dir, splits, preset) -> dict:
    from normlab.report import analyses

    out, c = {}, job.config
    if "layer_parity" in job.analyses:
        out["layer_parity"] = analyses.layer_parity(c, run_dir, splits)
    if "twins" in job.analyses:
        out["twins"] = analyses.twins(c, splits, preset.twin_steps)
    if "bn_stats" in job.analyses:
        out["bn_stats"] = analyses.bn_stats(c, run_dir, splits)
    return out


def _work(job: design.Job):
    """A worker process's task: one job; returns (name, record summary) or (name, error)."""
    try:
        return job.name, summary(run_job(job, _WORKER_SETUP["setup"])), None
    except Exception as e:  # noqa: BLE001 - reported by the parent, which goes on
        return job.name, None, f"{type(e).__name__}: {e}"


def summary(record: dict) -> str:
    took = duration(record.get("wall_seconds"))
    if record["kind"] != "run":
        return f"measured ({took})"
    if record["status"] == records.DIVERGED:
        return f"diverged at step {record['diverged_at_step']} ({took})"
    return f"test accuracy {record['final']['test_accuracy']:.4f} ({took})"


class Estimator:
    """The cost model (design.seconds) scaled by measured / predicted over the records done."""

    def __init__(self, preset: design.Preset, done: list[tuple[design.Job, dict]]):
        self.preset, self.measured, self.predicted = preset, 0.0, 0.0
        for job, record in done:
            self.add(job, record)

    def add(self, job: design.Job, record: dict) -> None:
        if record.get("wall_seconds"):
            self.measured += record["wall_seconds"]
            self.predicted += design.seconds(self.preset, job)

    @property
    def scale(self) -> float:
        return self.measured / self.predicted if self.measured and self.predicted else 1.0

    def seconds(self, job: design.Job) -> float:
        return design.seconds(self.preset, job) * self.scale


def commit_record(setup: Setup, name: str, say) -> None:
    """--commit_records: rewrites the report from the records and commits it with the new
    record, so a session that ends loses at most the run in progress and every commit's
    REPORT.md is the one its records give."""
    from normlab.report import writer

    report = writer.write(setup.preset, setup.results, setup.out)
    files = [
        os.path.abspath(p)
        for p in (records.path(setup.results, setup.preset.name, name), report)
        + (records.sessions_path(setup.results, setup.preset.name),)
    ] + [os.path.abspath(os.path.join(setup.out, writer.FIGURES_DIR))]
    folder = os.path.dirname(files[0])
    message = f"report: record {name} ({setup.preset.name} preset), REPORT.md rewritten"
    try:
        for args in (["add", "-A", "--", *files], ["commit", "-q", "-m", message, "--", *files]):
            subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        say(f"could not commit {name}'s record ({e}); it is written: commit it yourself")


def run_all(jobs, setup: Setup, jobs_at_once: int, say, trainer_log, commit: bool) -> int:
    """Every job of `jobs` not yet done; returns the number that failed (0: all done)."""
    import tensorflow as tf

    # Dozens of Trainers in one process each trace their own tf.functions; TensorFlow's
    # "excessive retracing" warning about that is expected here, and noise.
    tf.get_logger().setLevel("ERROR")
    preset = setup.preset
    done = [j for j in jobs if records.is_done(setup.results, preset.name, j)]
    todo = [j for j in jobs if j not in done]
    existing = records.load_all(setup.results, preset.name)
    estimator = Estimator(preset, [(j, existing[j.name]) for j in done if j.name in existing])
    eta = sum(map(estimator.seconds, todo)) / design.parallel_speedup(jobs_at_once)
    say(
        f"{len(jobs)} jobs: {len(done)} done (records in "
        f"{records.directory(setup.results, preset.name)}), {len(todo)} to do, predicted "
        f"{duration(eta)} with {jobs_at_once} at once"
    )
    session = {
        "id": uuid.uuid4().hex[:8],
        "preset": preset.name,
        "jobs_at_once": jobs_at_once,
        "cpu": machine.cpu_model(),
        "commit": setup.commit or machine.commit(),
        "done": 0,
    }
    start, failures, width = time.perf_counter(), 0, len(str(len(todo)))

    by_name = {j.name: j for j in todo}

    def finished(index, name, text, error):
        nonlocal failures
        tag = f"[{index:>{width}}/{len(todo)}]"
        if error:
            failures += 1
            say(f"{tag} FAILED {name}: {error}")
            return
        session["done"] += 1
        session["seconds"] = time.perf_counter() - start
        records.add_session(setup.results, preset.name, session)
        record = records.read_json(records.path(setup.results, preset.name, name)) or {}
        estimator.add(by_name[name], record)
        say(f"{tag} done {name}: {text}  elapsed {duration(time.perf_counter() - start)}")
        if commit:
            commit_record(setup, name, say)

    if jobs_at_once <= 1:
        for i, job in enumerate(todo, 1):
            eta = sum(map(estimator.seconds, todo[i - 1 :]))
            say(
                f"[{i:>{width}}/{len(todo)}] {job.name} ({', '.join(job.sections)})  "
                f"ETA {duration(eta)}"
            )
            finished(i, job.name, summary(run_job(job, setup, trainer_log)), None)
        return failures
    import multiprocessing

    # The cost benchmark times steps: it runs alone, in this process, after the others.
    alone = [j for j in todo if j.kind == "cost"]
    shared = [j for j in todo if j not in alone]
    context = multiprocessing.get_context("spawn")
    worker_setup = dataclasses.replace(setup, threads=max(1, (os.cpu_count() or 2) // jobs_at_once))
    with (context.Pool(jobs_at_once, initializer=_init_worker, initargs=(worker_setup,))
          if shared else contextlib.nullcontext()) as pool:  # fmt: skip
        try:
            for i, (name, text, error) in enumerate(pool.imap_unordered(_work, shared)
                                                    if shared else [], 1):  # fmt: skip
                finished(i, name, text, error)
        except KeyboardInterrupt:
            pool.terminate()
            raise
    for i, job in enumerate(alone, len(todo) - len(alone) + 1):
        finished(i, job.name, summary(run_job(job, setup, trainer_log)), None)
    return failures
