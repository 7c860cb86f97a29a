"""`load_model`: one function, one return type (`TransformerBridge`) for every model source."""

from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from interp.errors import UserValueError
from interp.models.checks import FOLDER_FIX, check_device, check_folder
from interp.models.errors import ModelUnavailableError
from interp.models.random_gpt2 import gpt2_tokenizer, random_gpt2_hf
from interp.models.smollm2 import ensure_smollm2
from interp.models.specs import (
    GPT2_HUB_NAMES,
    MODEL_SPECS,
    OFFLINE_SPEC,
    RANDOM_SPECS,
    _hub_endpoint,
    _hub_offline,
    _hub_reachable,
    _set_hub_offline,
    gpt2_cached,
    model_availability,
    resolve_spec,
)
from interp.tokens import bos_family, choose_bos

__all__ = ["MODEL_SPECS", "load_model", "model_availability", "resolve_spec"]

def _unavailable_message(spec: str, reason: str) -> str:
    from huggingface_hub import constants

    repo = GPT2_HUB_NAMES[spec]
    return (
        f"Model '{spec}' ({repo}) is not available: {reason}.\n"
        f"  Tried: the Hugging Face hub at {_hub_endpoint()} and the HF cache at "
        f"{constants.HF_HUB_CACHE}.\n"
        "  Fixes: (1) connect to the hub once so the weights land in the HF cache; "
        "(2) pass a local Hugging Face folder (config + weights + tokenizer) as the model spec; "
        f"(3) use the offline model '{OFFLINE_SPEC}' (SmolLM2-135M, not GPT-2)."
    )


def _load_gpt2(spec: str, **boot_kwargs) -> TransformerBridge:
    if not gpt2_cached(spec):
        if _hub_offline():
            raise ModelUnavailableError(_unavailable_message(spec, "HF_HUB_OFFLINE is set"))
        if not _hub_reachable():
            _set_hub_offline()  # fail fast everywhere else too, instead of retrying the network
            raise ModelUnavailableError(_unavailable_message(spec, "the hub is unreachable"))
    elif not _hub_reachable():
        _set_hub_offline()
    return TransformerBridge.boot_transformers(GPT2_HUB_NAMES[spec], **boot_kwargs)


def _load_random(name: str, seed: int, **boot_kwargs) -> TransformerBridge:
    hf_model = random_gpt2_hf(name, seed=seed)
    device = boot_kwargs.get("device") or "cpu"
    hf_model = hf_model.to(device=device, dtype=boot_kwargs.get("dtype", torch.float32))
    return TransformerBridge.boot_transformers(
        "gpt2", hf_model=hf_model, tokenizer=gpt2_tokenizer(), device=device,
        dtype=boot_kwargs.get("dtype", torch.float32),
    )


def _load_folder(path: Path, check: bool = True, **boot_kwargs) -> TransformerBridge:
    """Boot a local HF folder; `check=False` for a folder already verified by checksums."""
    from safetensors import SafetensorError

    if check:
        check_folder(path)
    try:
        return TransformerBridge.boot_transformers(str(path), **boot_kwargs)
    except (OSError, SafetensorError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelUnavailableError(f"model folder {path} does not load ({reason}); fix: "
                                    f"{FOLDER_FIX}") from None


def load_model(
    spec: str = "auto",
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device_map=None,
    n_devices: int | None = None,
    max_memory: dict | None = None,
    bos: str = "auto",
) -> TransformerBridge:
    """Load a model as a TransformerLens `TransformerBridge`.

    Args:
        spec: "gpt2"/"gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl" (pretrained, hub or
            HF cache); "smollm2-135m" (offline pretrained SmolLM2); "random:tiny",
            "random:gpt2", "random:gpt2-medium" (seeded random GPT-2 weights); a local HF
            folder; or "auto" (GPT-2 small when loadable, else smollm2-135m).
        device: "cpu", "cuda", ...; default: cuda when available. Exclusive with device_map.
        dtype: parameter dtype.
        seed: initialisation seed for the random:* specs.
        device_map, n_devices, max_memory: passed to `boot_transformers` (accelerate) to split
            a model larger than one device.
        bos: "auto" (none for GPT-2, as in the IOI paper; else the tokenizer's pretraining
            BOS, never a chat-role token: `<|endoftext|>` for SmolLM2), "none", or a token.

    Returns:
        The bridge, with `interp_spec` (the resolved spec), `interp_bos` (an
        `interp.tokens.Bos`) and `prepend_bos` attributes set.

    Example:
        >>> m = load_model("random:tiny")
        >>> m.to_single_token(" Mary")
        5335
    """
    boot_kwargs = _boot_kwargs(device, dtype, device_map, n_devices, max_memory)
    resolved = resolve_spec(spec)
    if resolved in GPT2_HUB_NAMES:
        model = _load_gpt2(resolved, **boot_kwargs)
    elif resolved == OFFLINE_SPEC:
        model = _load_folder(ensure_smollm2(), check=False, **boot_kwargs)  # sha256-verified
    elif resolved in RANDOM_SPECS:
        model = _load_random(resolved.split(":", 1)[1], seed, **boot_kwargs)
    else:
        model = _load_folder(Path(resolved), **boot_kwargs)
    model.eval()
    model.interp_spec = resolved
    model.interp_bos = choose_bos(model.tokenizer, bos, _family(model))
    model.prepend_bos = model.interp_bos.id is not None
    return model


def _boot_kwargs(device, dtype, device_map, n_devices, max_memory) -> dict:
    """`boot_transformers` arguments: one device, or an accelerate split (never both)."""
    split = {"device_map": device_map, "n_devices": n_devices, "max_memory": max_memory}
    given = [name for name, value in split.items() if value is not None]
    if given and device is not None:
        raise UserValueError(f"device={device!r} and {given[0]}= are exclusive: pass one "
                             "device, or a split across devices (device_map / n_devices / "
                             "max_memory), not both")
    if given:
        return {"dtype": dtype, **split}
    return {"dtype": dtype, "device": check_device(device)}


def _family(model: TransformerBridge) -> str:
    return bos_family(str(getattr(model.cfg, "architecture", "") or ""))
