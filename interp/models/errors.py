"""Errors raised while resolving and loading models."""

from interp.errors import UserError


class ModelUnavailableError(UserError, RuntimeError):
    """The weights for a model spec cannot be obtained on this machine."""


class UnknownModelError(UserError, ValueError):
    """A model spec is not one `interp` knows."""
