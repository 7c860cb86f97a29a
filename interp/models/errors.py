"""Errors raised while resolving and loading models."""

from interp.errors import UserError, UserValueError


class ModelUnavailableError(UserError, RuntimeError):
    """The weights for a model spec cannot be obtained on this machine."""


class UnknownModelError(UserError, ValueError):
    """A model spec is not one `interp` knows."""


class DeviceError(UserValueError):
    """A device is unknown or not present on this machine."""
