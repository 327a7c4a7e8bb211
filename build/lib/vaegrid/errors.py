"""The one exception type that means "bad input": the CLI prints it as one line and exits 2."""


class InputError(Exception):
    """Bad input from the user (study file, CLI argument, data folder, results folder).

    The message is complete on its own: what is wrong, where, and what is allowed.
    Raised before anything is written.
    """
