"""The errors a user sees as one line (no traceback): bad input, a run that cannot go on, Ctrl-C."""


class ConfigError(ValueError):
    """A configuration value or input is invalid; the message names the field/file and the value. Exit code 2."""


class RunError(RuntimeError):
    """The run cannot go on (disk full, repeated non-finite steps, ...); the message says what is intact.
    Exit code 1."""


class Interrupted(RunError):
    """The user pressed Ctrl-C; the message says where the run stopped and how to continue. Exit code 130."""
