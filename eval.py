"""Evaluates and compares normlab runs on the test split, in inference mode.

Usage:
    .venv/bin/python eval.py --model_dirs=runs/batch,runs/layer
    .venv/bin/python eval.py --model_dirs=runs                 # every run below a directory
    .venv/bin/python eval.py --model_dirs=runs/batch --checkpoint=ckpt-500
    .venv/bin/python eval.py --model_dirs=runs --markdown=cmp.md --json=cmp.json --csv=cmp.csv

Each run is rebuilt from its saved flags.txt and its latest (or the named) checkpoint; nothing
in a run directory is written. A directory that cannot be evaluated is reported once and the
others still are; the exit status is then 1 (2 for bad flags).
"""

import sys

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
from absl import flags

from normlab.trainer import cli

flags.DEFINE_list(
    "model_dirs", None, "Run directories, comma-separated, or directories holding runs."
)
flags.DEFINE_string(
    "checkpoint",
    None,
    "A checkpoint name (ckpt-500) or path instead of the latest; only with a single run.",
)
flags.DEFINE_string("data_dir", None, "Override the runs' saved --data_dir.")
flags.DEFINE_enum(
    "precision",
    None,
    ["float32", "mixed_bfloat16", "mixed_float16"],
    "Evaluate in this precision instead of the runs' own (their weights are float32 in every "
    "precision).",
)
flags.DEFINE_string("markdown", None, "Also write the comparison as Markdown to this file.")
flags.DEFINE_string("json", None, "Also write the comparison as JSON to this file.")
flags.DEFINE_string("csv", None, "Also write the comparison as CSV to this file.")
FLAG_NAMES = ["model_dirs", "checkpoint", "data_dir", "precision", "markdown", "json", "csv"]
FLAGS = flags.FLAGS


def main() -> int:
    import tensorflow as tf

    from normlab.trainer import evaluation

    # Each run gets its own compiled evaluation step; TensorFlow's warning about frequent
    # retracing is expected here, and noise.
    tf.get_logger().setLevel("ERROR")

    if not FLAGS.model_dirs:
        raise cli.UsageError(
            "--model_dirs is required: run directories, comma-separated, or directories "
            "holding runs."
        )
    dirs, missing = evaluation.find_runs(FLAGS.model_dirs)
    if FLAGS.checkpoint and len(dirs) + len(missing) != 1:
        raise cli.UsageError(
            f"--checkpoint names one checkpoint; give one run, not {len(dirs) + len(missing)}."
        )
    results, failures = evaluation.evaluate_runs(
        dirs,
        checkpoint=FLAGS.checkpoint,
        data_dir=FLAGS.data_dir,
        precision=FLAGS.precision,
        log=lambda line: print(f"eval.py: {line}", file=sys.stderr),
    )
    report = evaluation.Comparison(results, {**missing, **failures})
    print(report.text(), end="")
    for path, content in (
        (FLAGS.markdown, report.markdown),
        (FLAGS.json, report.json),
        (FLAGS.csv, report.csv),
    ):
        if path:
            with open(path, "w") as fh:
                fh.write(content())
    return 1 if report.failures or not results else 0


if __name__ == "__main__":
    cli.parse_flags_or_exit(sys.argv, "eval.py", __doc__, FLAG_NAMES)
    sys.exit(cli.run_main(main, "eval.py"))
