"""normlab's trainer: config.py (the flags), optim.py, summaries.py, trainer.py (Trainer), cli.py.

Import the modules directly (`from trainer.trainer import Trainer`); this file imports nothing,
so `trainer.quiet` can run before TensorFlow is loaded.
"""
