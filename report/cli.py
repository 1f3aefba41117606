"""report.py's flags and main (the work is report/pipeline.py's `generate`)."""

from __future__ import annotations

import sys

from absl import flags

from normlab.report import design, pipeline

flags.DEFINE_string(
    "root",
    "runs/report",
    "Directory holding the suite's runs, one per subdirectory, and its analyses.",
)
flags.DEFINE_enum(
    "preset",
    "quick",
    list(design.PRESETS),
    "quick: ~40 min on 2 cores, fractions of an epoch (first look, smoke test); full: the "
    "report's numbers, hours; tiny: for the tests only.",
)
flags.DEFINE_string("out", "", "Where REPORT.md and figures/ go; empty: --root.")
flags.DEFINE_string(
    "data_dir",
    "",
    "Fashion-MNIST IDX directory, as train.py's --data_dir; empty: the Debian package's. It is "
    "part of every run's flags: reuse needs the same value.",
)
flags.DEFINE_boolean(
    "report_only",
    False,
    "Write the report from the runs and analyses already under --root; train and compute "
    "nothing, fail if any is missing.",
)
flags.DEFINE_boolean(
    "plan", False, "Print the runs the preset needs and a time estimate; train nothing."
)
flags.DEFINE_boolean(
    "verbose", False, "Also print the trainer's progress lines (always in <root>/suite.log)."
)
FLAGS = flags.FLAGS
FLAG_NAMES = ["root", "preset", "out", "data_dir", "report_only", "plan", "verbose"]


def print_plan(options: pipeline.Options) -> None:
    from normlab.report.suite import Estimator, duration

    preset = design.PRESETS[options.preset]
    specs = design.plan(preset, options.data_dir, len(pipeline.load_data(options).train_x))
    print(f"preset {preset.name}: {preset.description}")
    for section in design.SECTIONS:
        print(f"  {section}: {design.budget(preset, section)}")
    estimator, total = Estimator(), 0.0
    print(f"\n{'#':>3}  {'run':<58} {'sections':<16} {'steps':>6} {'~time':>8}")
    for i, spec in enumerate(specs, 1):
        seconds = estimator.seconds(spec)
        total += seconds
        print(
            f"{i:>3}  {spec.name:<58} {','.join(spec.sections):<16} "
            f"{spec.config.train_steps:>6} {duration(seconds):>8}"
        )
    print(
        f"\n{len(specs)} runs, about {duration(total)} of training by a rough prior "
        "(0.3 ms per example); the ETA switches to measured times as runs finish."
    )


def main() -> int:
    import tensorflow as tf

    # Dozens of Trainers in one process each trace their own tf.functions; TensorFlow's
    # "excessive retracing" warning about that is expected here, and noise.
    tf.get_logger().setLevel("ERROR")
    options = pipeline.Options(
        root=FLAGS.root,
        preset=FLAGS.preset,
        out=FLAGS.out,
        data_dir=FLAGS.data_dir,
        report_only=FLAGS.report_only,
        argv=tuple(sys.argv[1:]),
    )
    if FLAGS.plan:
        print_plan(options)
        return 0
    log = pipeline.Log(options.root, FLAGS.verbose, echo=lambda line: print(line, flush=True))
    try:
        pipeline.generate(options, log)
    except KeyboardInterrupt:
        # Outside a training step (the trainer handles SIGINT itself, saving a checkpoint).
        print(
            "report.py: interrupted. Complete runs and analyses are kept; run the same command "
            "again to continue.",
            file=sys.stderr,
        )
        return 130
    return 0
