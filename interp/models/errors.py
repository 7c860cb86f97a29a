"""Errors raised while resolving and loading models."""


class ModelUnavailableError(RuntimeError):
    """The weights for a model spec cannot be obtained on this machine."""


class UnknownModelError(ValueError):
    """A model spec is not one `interp` knows."""
