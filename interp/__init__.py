"""interp: hook-based mechanistic interpretability on TransformerLens 4.

Example:
    >>> import interp
    >>> model = interp.load_model("random:tiny")
    >>> model.cfg.n_layers
    2
"""

from interp.models import MODEL_SPECS, ModelUnavailableError, load_model, resolve_spec

__version__ = "0.1.0"

__all__ = ["MODEL_SPECS", "ModelUnavailableError", "__version__", "load_model", "resolve_spec"]
