import pytest
import torch

from interp.metrics import logits_at
from interp.tokens import encode, encode_batch, single_token


def test_right_padding_reads_each_prompt_at_its_end(tiny):
    texts = ["Then, Mary and John went to the store. John gave a drink to",
             "Mary and John left. John gave it to"]
    tokens, lengths = encode_batch(tiny, texts)
    assert tokens.shape[1] == int(lengths.max()) and lengths[0] != lengths[1]
    padded = logits_at(tiny(tokens), lengths - 1)
    for row, text in enumerate(texts):
        alone = tiny(torch.tensor([encode(tiny, text)]))[0, -1]
        assert torch.allclose(padded[row], alone, atol=1e-5)
    # reading blindly at [:, -1] would be wrong for the shorter prompt
    assert not torch.allclose(tiny(tokens)[1, -1], padded[1], atol=1e-3)


def test_bos_choice(tiny):
    assert encode(tiny, " Mary", prepend_bos=True)[0] == tiny.tokenizer.bos_token_id
    assert encode(tiny, " Mary", prepend_bos=False) == [5335]


def test_single_token_error_names_the_pieces(tiny):
    assert single_token(tiny, " Mary") == 5335
    with pytest.raises(ValueError, match="not one"):
        single_token(tiny, " Wojciechowski")
