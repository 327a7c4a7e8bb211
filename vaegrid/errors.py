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


def first_line(error: BaseException | str, limit: int = 200) -> str:
    """What a one-line message quotes of an error: its first non-blank line, at most
    ``limit`` characters; an error that says nothing, its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines:
        return lines[0][:limit]
    return type(error).__name__ if isinstance(error, BaseException) else ""
