"""The one error type the CLI turns into a one-line message and exit code 1."""


class WorkbenchError(Exception):
    """A user-facing failure: bad input, unusable workspace, busy manifest."""
