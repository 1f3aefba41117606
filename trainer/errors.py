"""The errors normlab reports to a user as one clear paragraph and an exit code."""


class UsageError(ValueError):
    """Bad flags or arguments: the user can fix the command line. Exit code 2."""

    exit_code = 2


class RunError(RuntimeError):
    """A run cannot go on (a model_dir in use, non-finite loss, a corrupt checkpoint). Exit 1."""

    exit_code = 1
