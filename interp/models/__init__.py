"""Model sources: pretrained GPT-2, the offline SmolLM2, random GPT-2, local folders."""

from interp.models.errors import ModelUnavailableError, UnknownModelError
from interp.models.loading import MODEL_SPECS, load_model, model_availability, resolve_spec

__all__ = [
    "MODEL_SPECS",
    "ModelUnavailableError",
    "UnknownModelError",
    "load_model",
    "model_availability",
    "resolve_spec",
]
