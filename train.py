"""Trains a normlab model (the CNN, or the LSTM with --arch=lstm) with one normalization;
resumes from --model_dir's checkpoints.

Usage:
    .venv/bin/python train.py --model_dir=runs/batch --norm=batch
    .venv/bin/python train.py --model_dir=runs/batch          # resume, with the saved flags
    .venv/bin/tensorboard --logdir=runs

An existing --model_dir is resumed with its saved flags (flags.txt); only the flags marked
"May change on resume" may differ. A finished run is left as it is. A run stopped before its
first checkpoint starts again from step 0 with the same command (what it left is moved into
--model_dir/earlier-attempts/).
"""

import os
import sys

import normlab  # noqa: F401 - first: it imports TensorFlow quietly (normlab/quiet.py)

# isort: split
from absl import flags

from normlab.trainer import cli
from normlab.trainer.config import Config, flags_path

flags.DEFINE_string(
    "model_dir",
    None,
    "Run directory: flags, checkpoints, summaries, metrics. "
    "An existing one is resumed with its saved flags.",
)
flags.DEFINE_boolean("start_over", False, cli.START_OVER_HELP)
FLAG_NAMES = ["model_dir", "start_over"] + cli.define_config_flags()
FLAGS = flags.FLAGS


def tensorboard_command(logdir: str) -> str:
    """The TensorBoard command for this Python: the one installed next to it (a virtualenv's
    bin/), as a path relative to the current directory when it is below it."""
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(exe):
        exe = "tensorboard"
    elif os.path.abspath(exe).startswith(os.getcwd() + os.sep):
        exe = os.path.relpath(exe)
    return f"{exe} --logdir={logdir}"


def main() -> int:
    from normlab.trainer import lock
    from normlab.trainer.run_dir import RunDirectory, check_model_dir
    from normlab.trainer.trainer import Trainer

    check_model_dir(FLAGS.model_dir)
    saved = flags_path(FLAGS.model_dir)
    base = Config.from_flagfile(saved) if os.path.isfile(saved) else None
    config = cli.config_from_flags(base)
    # Before anything is created or written, and before seconds of loading: a run another
    # process trains (multi_worker: only the chief locks, later), a resume that would change
    # the experiment, then bad flags.
    if config.strategy != "multi_worker":
        lock.check_free(FLAGS.model_dir)
    run_dir = RunDirectory(FLAGS.model_dir, writes=False, log=lambda _: None)
    if not FLAGS.start_over:
        run_dir.check_config(config.resolved())
    config.validate()
    trainer = Trainer(config, FLAGS.model_dir, start_over=FLAGS.start_over)
    try:
        trainer.train_and_evaluate()
    finally:
        trainer.close()
    print(f"TensorBoard: {tensorboard_command(FLAGS.model_dir)}")
    return 0


if __name__ == "__main__":
    cli.parse_flags_or_exit(sys.argv, "train.py", __doc__, FLAG_NAMES)
    sys.exit(cli.run_main(main, "train.py"))
