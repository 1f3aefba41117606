"""The errors normlab reports to a user as one clear paragraph and an exit code."""


class UsageError(ValueError):
    """Bad flags or arguments: the user can fix the command line. Exit code 2."""

    exit_code = 2


class RunError(RuntimeError):
    """A run cannot go on (a model_dir in use, non-finite loss, a corrupt checkpoint). Exit 1."""

    exit_code = 1


class InUse(RunError):
    """The run directory is being trained by another process: refused, exit 2 like every
    refusal (nothing was done; wait, or choose another --model_dir)."""

    exit_code = 2


class Interrupted(RunError):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved; exit 128 + signal.
    Reported as an interruption, not an error."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteError(RunError):
    """Training produced a non-finite loss or gradient; `step` and `layer` say where."""

    def __init__(self, step: int, layer: str, message: str):
        super().__init__(message)
        self.step = step
        self.layer = layer
