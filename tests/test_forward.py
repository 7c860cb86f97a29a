import pytest
import torch

from interp.forward import block_kwargs, repeat_kwargs, run_blocks, unembed

TEXTS = ["When Mary and John went to the store, John gave a drink to",
         "When Anne and Paul went to the park, Paul gave a ball to"]


def _check_resume(model, start):
    tokens = torch.tensor([model.tokenizer.encode(t) for t in TEXTS])
    logits, cache = model.run_with_cache(tokens)
    kw = block_kwargs(model, tokens)
    resid = cache[f"blocks.{start}.hook_resid_pre"]
    assert torch.allclose(unembed(model, run_blocks(model, resid, start, kw)), logits, atol=1e-4)
    tiled = run_blocks(model, resid.repeat(3, 1, 1), start, repeat_kwargs(kw, 2, 3))
    assert torch.allclose(unembed(model, tiled), logits.repeat(3, 1, 1), atol=1e-4)


@pytest.mark.parametrize("start", [0, 1])
def test_resume_gpt2(tiny, start):
    _check_resume(tiny, start)


@pytest.mark.offline_model
def test_resume_llama(smol):
    _check_resume(smol, 17)
