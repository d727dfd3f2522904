"""The two kinds of failure the command line tells apart (exit 2 and exit 1)."""


class InputError(Exception):
    """Bad input from the user: a file, a field or a line that is wrong. The message names it."""


class RuntimeFailure(Exception):
    """Good input, but the work could not be done: the API or the kernel failed."""


class ApiFailure(RuntimeFailure):
    """The Kubernetes API could not be reached or refused a request."""
