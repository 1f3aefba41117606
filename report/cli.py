"""report.py's flags and main: plan, train what has no record, write REPORT.md from records."""

from __future__ import annotations

import os
import time

from absl import flags

from normlab.report import design
from normlab.trainer.errors import UsageError

flags.DEFINE_enum(
    "preset",
    "full",
    list(design.PRESETS),
    "full: the committed report (records in report/results/full; about an hour and a half on 2 "
    "cores, see --plan); quick: the same design at a tenth of the budget on the real data; "
    "tiny: every section in minutes on a small fixture it writes itself (numbers meaningless).",
)
flags.DEFINE_string(
    "root", "", "Scratch run directories (checkpoints, event files); empty: runs/report/<preset>."
)
flags.DEFINE_string(
    "results",
    "",
    "Where the records go, one JSON file per job under <results>/<preset>/; empty: report/results "
    "for --preset=full (committed), <root>/results otherwise.",
)
flags.DEFINE_string(
    "out", "", "Where REPORT.md and figures/ go; empty: report/ for full, else --root."
)
flags.DEFINE_string(
    "data_dir", "", "Fashion-MNIST IDX directory, as train.py's; empty: the Debian package's."
)
flags.DEFINE_boolean(
    "write", False, "Only write REPORT.md and its figures from the records: no training."
)
flags.DEFINE_boolean("plan", False, "Only print the jobs and the cost model's time for each.")
flags.DEFINE_integer(
    "jobs",
    1,
    "Jobs trained at once, each in its own process with its share of the threads.",
    lower_bound=1,
)
flags.DEFINE_string(
    "shard",
    "0/1",
    "I/N: train only every N-th job of the plan from the I-th (0-based), for N machines.",
)
flags.DEFINE_boolean(
    "commit_records",
    False,
    "git commit each record as it is written (a long suite on a machine that may go away).",
)
flags.DEFINE_boolean("verbose", False, "Also print the trainer's progress lines.")
FLAGS = flags.FLAGS
FLAG_NAMES = [
    "preset",
    "root",
    "results",
    "out",
    "data_dir",
    "write",
    "plan",
    "jobs",
    "shard",
    "commit_records",
    "verbose",
]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise UsageError(f"--shard={text}: expected I/N with 0 <= I < N, e.g. --shard=0/4.")
    return index, count


def paths(preset: str, root: str, results: str, out: str) -> tuple[str, str, str]:
    """(root, results, out) with the defaults --help states."""
    root = root or os.path.join("runs", "report", preset)
    full = preset == "full"
    results = results or (
        os.path.join(REPO, "report", "results") if full else os.path.join(root, "results")
    )
    out = out or (os.path.join(REPO, "report") if full else root)
    return root, results, out


def fixture_dir(root: str) -> str:
    """The tiny preset's data: a small learnable IDX data set written under root once."""
    from normlab.data.synthetic import tiny_splits, write_idx_dataset

    path = os.path.join(root, "fixture")
    if not os.path.isfile(os.path.join(path, "t10k-labels-idx1-ubyte.gz")):
        write_idx_dataset(path, tiny_splits(n_train=256, n_val=0, n_test=64))
    return path


def main() -> int:
    from normlab.report import records, suite, writer

    preset = design.PRESETS[FLAGS.preset]
    root, results, out = paths(preset.name, FLAGS.root, FLAGS.results, FLAGS.out)
    index, count = parse_shard(FLAGS.shard)
    if FLAGS.write:
        path = writer.write(preset, results, out)
        print(f"report: wrote {path} from {len(records.load_all(results, preset.name))} records")
        return 0
    data_dir = FLAGS.data_dir or (fixture_dir(root) if preset.name == "tiny" else "")
    from normlab import machine

    setup = suite.Setup(preset, root, results, data_dir, out, commit=machine.commit())
    examples = len(suite._splits(setup).train_x)
    jobs = design.shard(design.plan(preset, data_dir, examples), index, count)
    if FLAGS.plan:
        print_plan(preset, jobs, results, FLAGS.jobs)
        return 0

    def say(line: str) -> None:
        print(f"report: {line}", flush=True)

    start = time.perf_counter()
    failures = suite.run_all(
        jobs,
        setup,
        FLAGS.jobs,
        say,
        (lambda line: say(f"    {line}")) if FLAGS.verbose else (lambda _: None),
        FLAGS.commit_records,
    )
    path = writer.write(preset, results, out)
    say(f"wrote {path} ({time.perf_counter() - start:.0f} s this session)")
    return 1 if failures else 0


def print_plan(preset: design.Preset, jobs: list, results: str, at_once: int) -> None:
    from normlab.report import records
    from normlab.trainer.loop import duration

    print(f"preset {preset.name}: {preset.description}")
    total = 0.0
    print(f"{'#':>3}  {'job':<52} {'sections':<14} {'steps':>6} {'~time':>8}  done")
    for i, job in enumerate(jobs, 1):
        seconds = design.seconds(preset, job)
        total += seconds
        steps = job.config.train_steps if job.config else "-"
        done = "yes" if records.is_done(results, preset.name, job) else ""
        print(
            f"{i:>3}  {job.name:<52} {','.join(job.sections):<14} {steps:>6} "
            f"{duration(seconds):>8}  {done}"
        )
    speedup = design.parallel_speedup(at_once)
    print(
        f"\n{len(jobs)} jobs: {duration(total)} one at a time by the cost model (fixed + steps x "
        "per step + evaluated examples x per example; coefficients measured on 2 cores, "
        f"BUILD_NOTES.md); with --jobs={at_once}: {duration(total / speedup)} (x{speedup:g})."
    )
