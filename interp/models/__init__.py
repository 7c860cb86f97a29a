"""Model sources: pretrained GPT-2, the offline SmolLM2, random GPT-2, local folders.

Spec names, `resolve_spec` and `model_availability` are light (`interp.models.specs`);
`load_model` imports torch and TransformerLens on first access.
"""

from interp.models.errors import ModelUnavailableError, UnknownModelError
from interp.models.specs import MODEL_SPECS, model_availability, resolve_spec

__all__ = [
    "MODEL_SPECS",
    "ModelUnavailableError",
    "UnknownModelError",
    "load_model",
    "model_availability",
    "resolve_spec",
]


def __getattr__(name: str):
    """`load_model`, imported from `interp.models.loading` (torch, TransformerLens) on use."""
    if name == "load_model":
        from interp.models.loading import load_model

        return load_model
    raise AttributeError(f"module 'interp.models' has no attribute {name!r}")
