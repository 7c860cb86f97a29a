"""`UserError`: the base of every error that is the user's to fix.

The CLI prints a `UserError` as one line (`interp CMD: error: ...`) and exits 1; any other
exception is a bug and is printed with its traceback. An error message names the problem and
the fix. Library modules raise subclasses (or `UserError` itself) for bad input.

Example:
    >>> raise UserError("--n-prompts must be >= 1 (got 0); pass a positive count")
    Traceback (most recent call last):
    ...
    interp.errors.UserError: --n-prompts must be >= 1 (got 0); pass a positive count
"""


class UserError(Exception):
    """Bad input or an unavailable resource: a one-line message that names the fix."""


class UserValueError(UserError, ValueError):
    """A user-supplied value is invalid (also a `ValueError`, for callers that catch those)."""
