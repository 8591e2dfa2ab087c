"""The one exception type users see: the CLI prints its message as a single line."""


class GeovitError(Exception):
    """A user-facing failure: the message names the bad input and what to do about it."""
