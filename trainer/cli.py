"""What train.py and eval.py share: absl flags from Config, clean errors and exit codes."""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from typing import Callable

from absl import flags

from normlab.trainer.config import Config
from normlab.trainer.errors import RunError, UsageError

__all__ = [
    "RunError",
    "UsageError",
    "define_config_flags",
    "config_from_flags",
    "parse_flags_or_exit",
    "run_main",
]


def define_config_flags(flag_values=flags.FLAGS) -> None:
    """One absl flag per Config field, with its default, help and choices."""
    for f in dataclasses.fields(Config):
        help_text = f.metadata["help"]
        if f.metadata["choices"]:
            flags.DEFINE_enum(
                f.name, f.default, list(f.metadata["choices"]), help_text, flag_values=flag_values
            )
        elif isinstance(f.default, bool):
            flags.DEFINE_boolean(f.name, f.default, help_text, flag_values=flag_values)
        elif isinstance(f.default, int):
            flags.DEFINE_integer(f.name, f.default, help_text, flag_values=flag_values)
        elif isinstance(f.default, float):
            flags.DEFINE_float(f.name, f.default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(f.name, f.default, help_text, flag_values=flag_values)


def config_from_flags(base: Config | None = None, flag_values=flags.FLAGS) -> Config:
    """A Config from the flags. With `base` (a saved run), only flags given on the command line
    (or in a --flagfile) replace its values; the others keep the saved ones."""
    values = {}
    for f in dataclasses.fields(Config):
        flag = flag_values[f.name]
        if base is None or flag.present:
            values[f.name] = flag.value
    return dataclasses.replace(base, **values) if base else Config(**values)


def parse_flags_or_exit(argv: list[str], program: str) -> list[str]:
    """absl's flag parsing, but a bad flag exits with status 2 and one line, no trace."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"{program}: error: {e}\nRun {program} --helpfull for every flag.", file=sys.stderr)
        sys.exit(2)


def run_main(main: Callable[[], int], program: str) -> int:
    """Runs main; a UsageError/DatasetError exits 2, a RunError 1 (an interruption 128 +
    signal), each as one paragraph.

    Other exceptions are bugs: their trace is printed (NORMLAB_TRACEBACK=1 prints it for the
    expected errors too).
    """
    from normlab.data import DatasetError  # imported here: data imports TensorFlow

    try:
        return main()
    except (UsageError, DatasetError, RunError) as e:
        if os.environ.get("NORMLAB_TRACEBACK"):
            traceback.print_exc()
        code = getattr(e, "exit_code", 2)
        print(f"{program}: error: {e}", file=sys.stderr)
        return code
