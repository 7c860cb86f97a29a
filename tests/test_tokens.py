import pytest
import torch

from interp.metrics import logits_at
from interp.tokens import NO_BOS, Bos, choose_bos, encode, encode_batch, single_token


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
    assert encode(tiny, " Mary", prepend_bos=True)[0] == tiny.tokenizer.bos_token_id == 50256
    assert encode(tiny, " Mary", prepend_bos=False) == [5335]


def test_single_token_error_names_the_pieces(tiny):
    assert single_token(tiny, " Mary") == 5335
    with pytest.raises(ValueError, match="not one"):
        single_token(tiny, " Wojciechowski")


class _Tok:
    """A stand-in tokenizer: a vocabulary and a documented bos_token."""

    def __init__(self, bos_token, vocab):
        self.bos_token, self.vocab = bos_token, vocab

    def get_vocab(self):
        return self.vocab

    def convert_tokens_to_ids(self, token):
        return self.vocab[token]


def test_chat_role_token_is_never_the_bos():
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<s>": 5, "x": 9}
    # SmolLM2-Instruct documents <|im_start|>: the pretraining separator is used instead
    assert choose_bos(_Tok("<|im_start|>", vocab)) == Bos("<|endoftext|>", 0)
    assert choose_bos(_Tok("<s>", vocab)) == Bos("<s>", 5)
    assert choose_bos(_Tok(None, {"x": 9})) == NO_BOS
    assert choose_bos(_Tok("<s>", vocab), family="gpt2") == NO_BOS  # the IOI paper's GPT-2
    assert choose_bos(_Tok("<s>", vocab), "none") == NO_BOS
    assert choose_bos(_Tok("<s>", vocab), "<|im_start|>") == Bos("<|im_start|>", 1)
    with pytest.raises(ValueError, match="not a token"):
        choose_bos(_Tok("<s>", vocab), "<bos>")


@pytest.mark.offline_model
def test_smollm2_runs_with_its_pretraining_separator(smol):
    assert smol.interp_bos == Bos("<|endoftext|>", 0)
    assert encode(smol, " Mary")[0] == 0
