"""Trains the normlab CNN with one normalization; resumes from --model_dir's checkpoints.

    python train.py --model_dir=runs/batch --norm=batch
    python train.py --model_dir=runs/batch             # resume, with the saved flags
    tensorboard --logdir=runs

Every flag: python train.py --helpfull. The flags are trainer/config.py's Config fields.
"""

import os
import sys

from normlab.trainer.quiet import import_tensorflow

import_tensorflow()  # before anything else imports it: keeps TF's C++ start-up lines quiet

from absl import flags  # noqa: E402

from normlab.trainer import cli  # noqa: E402
from normlab.trainer.config import Config, flags_path  # noqa: E402

flags.DEFINE_string(
    "model_dir",
    None,
    "Run directory: flags, checkpoints, summaries, metrics. "
    "An existing one is resumed with its saved flags.",
)
cli.define_config_flags()
FLAGS = flags.FLAGS


def main() -> int:
    from normlab.trainer.trainer import Trainer

    if not FLAGS.model_dir:
        raise cli.UsageError(
            "--model_dir is required: the directory that holds the run's "
            "flags, checkpoints, summaries and metrics."
        )
    saved = flags_path(FLAGS.model_dir)
    base = Config.from_flagfile(saved) if os.path.isfile(saved) else None
    config = cli.config_from_flags(base)
    config.validate()  # before the model_dir is created: a bad flag leaves nothing behind
    trainer = Trainer(config, FLAGS.model_dir)
    try:
        trainer.train_and_evaluate()
    finally:
        trainer.close()
    print(f"TensorBoard: tensorboard --logdir={FLAGS.model_dir}")
    return 0


if __name__ == "__main__":
    cli.parse_flags_or_exit(sys.argv, "train.py")
    sys.exit(cli.run_main(main, "train.py"))
