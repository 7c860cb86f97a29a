"""interp: hook-based mechanistic interpretability on TransformerLens 4.

`import interp` is light: torch and TransformerLens load on first use of `load_model` (or of
any module that needs them), so the command line starts fast.

Example:
    >>> import interp
    >>> model = interp.load_model("random:tiny")
    >>> model.cfg.n_layers
    2
"""

from interp.errors import UserError

__version__ = "0.1.0"

__all__ = ["MODEL_SPECS", "ModelUnavailableError", "UserError", "__version__", "load_model",
           "resolve_spec"]

_FROM_MODELS = ("MODEL_SPECS", "ModelUnavailableError", "load_model", "resolve_spec")


def __getattr__(name: str):
    """`interp.load_model` etc., imported from `interp.models` on first access."""
    if name in _FROM_MODELS:
        import interp.models

        return getattr(interp.models, name)
    raise AttributeError(f"module 'interp' has no attribute {name!r}")
