"""The one exception type for errors a user can cause (bad input, missing files).

The CLI turns it into a one-line message and exit code 2; anything else is a bug.
"""


class ConvrecError(Exception):
    """A user-facing error with a one-line message."""
