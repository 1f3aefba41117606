"""Records: one small JSON file per finished job, the data the report is a pure function of.

`<results>/<preset>/<job name>.json` (the full preset's under report/results/full/, committed).
A run's record holds its configuration and the hash of what defines its result, its outcome
(complete, or diverged at a step), its final validation and test accuracy and loss, its
validation curve, the first and last activation and gradient statistics of every hidden layer,
its ms per step and wall time, the analyses made on its trained weights, and where it was made
(commit, CPU, TensorFlow). Checkpoints and event files stay in the scratch run directory.
`_sessions.json` beside the records lists the suite's sessions (wall time end to end).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics

SESSIONS_FILE = "_sessions.json"
COMPLETE, DIVERGED = "complete", "diverged"


def directory(results: str, preset: str) -> str:
    return os.path.join(results, preset)


def path(results: str, preset: str, name: str) -> str:
    return os.path.join(results, preset, f"{name}.json")


def read_json(file: str):
    """The JSON value in a file, or None when it is missing or unreadable (half written)."""
    try:
        with open(file) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write_text(file: str, text: str) -> None:
    """Atomically (a temporary file and a rename): a kill never leaves half a file."""
    from normlab.trainer.run_dir import write_atomically

    os.makedirs(os.path.dirname(file) or ".", exist_ok=True)
    write_atomically(file, text)


def write_json(file: str, value) -> None:
    write_text(file, json.dumps(value, indent=1, sort_keys=True) + "\n")


def load_all(results: str, preset: str) -> dict[str, dict]:
    """Every record of a preset, by job name (the sessions file and unreadable files skipped)."""
    folder = directory(results, preset)
    out = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json") and not name.startswith("_"):
            record = read_json(os.path.join(folder, name))
            if isinstance(record, dict) and "config_hash" in record:
                out[name[: -len(".json")]] = record
    return out


def is_done(results: str, preset: str, job) -> bool:
    """A job is done when its record exists with the same configuration hash."""
    record = read_json(path(results, preset, job.name))
    return isinstance(record, dict) and record.get("config_hash") == job.config_hash


def base(job, preset: str, machine_info: dict) -> dict:
    """What every record holds: the job, its hash, and where and by what it was made."""
    out = {
        "name": job.name,
        "kind": job.kind,
        "preset": preset,
        "sections": list(job.sections),
        "config_hash": job.config_hash,
        "identity": job.identity(),
        "commit": machine_info["commit"],
        "cpu": machine_info["cpu"],
        "tensorflow": machine_info["tensorflow"],
    }
    if job.config is not None:
        config = dataclasses.asdict(job.config)
        config.pop("data_dir")  # a path of the machine that trained it
        out["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    return out


def run_record(job, preset: str, run_dir: str, outcome: dict, machine_info: dict) -> dict:
    """A finished run's record from its run directory (metrics.json, event files) and the
    suite's outcome ({"status", "diverged_at_step", "wall_seconds", "threads"})."""
    from normlab.trainer import summaries as tags

    metrics = read_json(os.path.join(run_dir, "metrics.json")) or {}
    record = base(job, preset, machine_info)
    evals = tags.read_scalars(os.path.join(run_dir, tags.EVAL_DIR))
    train = tags.read_scalars(os.path.join(run_dir, tags.TRAIN_DIR))
    steps, acc = evals.get(tags.ACCURACY, ([], []))
    loss = dict(zip(*evals.get(tags.LOSS, ([], [])))) if tags.LOSS in evals else {}
    curve = {
        "step": [int(s) for s in steps],
        "accuracy": [float(a) for a in acc],
        "loss": [float(loss.get(s, float("nan"))) for s in steps],
    }
    for method in ("plain", "bias_corrected"):  # suite's EmaCurvesTrainer: the moving averages
        if f"{tags.ACCURACY}_{method}" in evals:
            curve[f"accuracy_{method}"] = [float(a) for a in evals[f"{tags.ACCURACY}_{method}"][1]]
    train_steps, train_loss = train.get(tags.LOSS, ([], []))
    curve["train_step"] = [int(s) for s in train_steps]
    curve["train_loss"] = [float(v) for v in train_loss]
    inside = {}
    for tag, (_, values) in train.items():
        parts = tag.split("/")
        if tag.startswith("activation/") and parts[2] in ("pre_std", "post_std"):
            inside.setdefault(parts[1], {})[parts[2]] = [float(values[0]), float(values[-1])]
        elif tag.startswith("grad_norm/") and parts[1] != "global":
            inside.setdefault(parts[1], {})["grad_norm"] = [float(values[0]), float(values[-1])]
    rates = [r for r in train.get(tags.STEPS_PER_SEC, ([], []))[1] if r > 0]
    final = {k: metrics.get(k) for k in ("val_accuracy", "val_loss", "test_accuracy", "test_loss")}
    record.update(
        status=outcome["status"],
        diverged_at_step=outcome.get("diverged_at_step"),
        steps_trained=metrics.get("step", outcome.get("diverged_at_step")),
        final=final if outcome["status"] == COMPLETE else None,
        curve=curve,
        inside=inside,
        ms_per_step=1000.0 / statistics.median(rates) if rates else None,
        train_seconds=metrics.get("train_seconds"),
        wall_seconds=outcome["wall_seconds"],
        threads=outcome.get("threads"),
        analyses=outcome.get("analyses", {}),
    )
    return record


def sessions_path(results: str, preset: str) -> str:
    return os.path.join(directory(results, preset), SESSIONS_FILE)


def add_session(results: str, preset: str, session: dict) -> None:
    file = sessions_path(results, preset)
    sessions = read_json(file) or []
    write_json(file, [s for s in sessions if s.get("id") != session["id"]] + [session])


def sessions(results: str, preset: str) -> list[dict]:
    return read_json(os.path.join(directory(results, preset), SESSIONS_FILE)) or []


def measured(sessions_: list[dict], bold: str = "") -> tuple[str, list[int]]:
    """The suite's measured wall time in words (end to end, over how many sessions, with how
    many jobs at once), `bold` around the time; and the jobs at once its sessions ran with."""
    from normlab.trainer.loop import duration

    if not sessions_:
        return "not measured (no session recorded)", []
    wall = sum(s.get("seconds", 0.0) for s in sessions_)
    at_once = sorted({s.get("jobs_at_once", 1) for s in sessions_})
    n, k = len(sessions_), "/".join(map(str, at_once))
    text = (
        f"{bold}{duration(wall)}{bold} end to end over {n} session{'s' if n > 1 else ''} with "
        f"{k} job{'s' if at_once != [1] else ''} at once"
    )
    return text, at_once


def overhead(recs) -> tuple[float, float, int]:
    """(summed wall seconds, summed training seconds, records) over complete runs without
    analyses: how much of a job's time is not training (the suite's target: ratio <= 1.25)."""
    runs = [
        r for r in recs
        if r.get("kind") == "run" and r.get("status") == COMPLETE and not r.get("analyses")
        and r.get("train_seconds") and r.get("wall_seconds")
    ]  # fmt: skip
    return sum(r["wall_seconds"] for r in runs), sum(r["train_seconds"] for r in runs), len(runs)


def overhead_text(recs) -> str:
    wall, train, n = overhead(recs)
    if not n:
        return "not measured (no complete run without analyses)"
    return (f"summed wall / summed training seconds = {wall / train:.2f} over {n} runs without "
            f"analyses ({wall:.0f} / {train:.0f} s; target <= 1.25)")  # fmt: skip
