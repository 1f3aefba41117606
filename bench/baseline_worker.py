"""bench.loop's baseline: a Trainer of another commit's normlab, in its own process.

    python bench/baseline_worker.py --root DIR --batch_size B --steps_per_loop N

DIR holds a copy of normlab's source at that commit (bench.loop extracts it with `git
archive`). This script imports `normlab.*` from DIR, not from the installed checkout (a finder
placed first on sys.meta_path), builds a Trainer as bench.loop's normlab candidate does, prints
"ready", then answers each line "STEPS" on stdin by training that many more steps and printing
the training seconds its clock counted. The parent interleaves it with its own candidates; this
process sleeps on stdin meanwhile, so it takes no CPU from them. Run by bench.loop, not by hand.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tempfile

PACKAGES = ("bench", "core", "data", "models", "report", "trainer")


class _Finder(importlib.abc.MetaPathFinder):
    """normlab -> root/normlab, normlab.<folder> -> root/<folder>, their modules below them."""

    def __init__(self, root: str):
        self.paths = {"normlab": os.path.join(root, "normlab")}
        self.paths.update({f"normlab.{p}": os.path.join(root, p) for p in PACKAGES})

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.paths:
            folder = self.paths[fullname]
            return importlib.util.spec_from_file_location(
                fullname, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
            )
        parent = fullname.rpartition(".")[0]
        if parent in self.paths:
            return importlib.machinery.PathFinder.find_spec(fullname, [self.paths[parent]])
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--steps_per_loop", type=int, default=16)
    parser.add_argument("--data_dir", default="")
    args = parser.parse_args()
    sys.meta_path.insert(0, _Finder(os.path.abspath(args.root)))
    import normlab  # noqa: F401 - the copy's, quiet TensorFlow import first
    from normlab import data
    from normlab.trainer.config import Config
    from normlab.trainer.trainer import Trainer

    if not os.path.abspath(normlab.__file__).startswith(os.path.abspath(args.root)):
        raise SystemExit(f"imported normlab from {normlab.__file__}, not from {args.root}")
    splits = data.load("fashion_mnist", args.data_dir or None, 0)
    config = Config(norm="batch", batch_size=args.batch_size, train_steps=10**8, eval_every=10**8,
                    checkpoint_every=10**8, histogram_every=10**8, validation_size=0,
                    steps_per_loop=args.steps_per_loop)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, os.path.join(tmp, "run"), splits=splits, log=lambda _: None)
        print("ready", flush=True)
        for line in sys.stdin:
            steps = int(line)
            before = float(trainer.train_seconds.numpy())
            trainer.total_steps = trainer.current_step + steps
            trainer.train()
            print(float(trainer.train_seconds.numpy()) - before, flush=True)
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
