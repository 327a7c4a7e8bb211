"""The one exception type that means "bad input": the CLI prints it as one line and exits 2."""


class InputError(Exception):
    """Bad input from the user (study file, CLI argument, data folder, results folder).

    The message is complete on its own: what is wrong, where, and what is allowed.
    Raised before anything is written.
    """


class DataGone(InputError):
    """The data folder, or a file of it, cannot be found or read: bad input when the driver
    checks it before any trial starts (exit 2), a fault of the world when it vanishes under
    a running sweep (an unmounted network filesystem: faults.py waits, then exit 3)."""
