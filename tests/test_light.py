"""The light load path (`interp.models.light`) against the TransformerBridge: the same
embedding matrices, token ids, whole-word mask and BOS, without TransformerLens."""

import json

import pytest
import torch

import interp
from interp.analogies import load_analogies, word_id, word_mask
from interp.models.light import Embeddings, _folder_matrices, load_embeddings
from tests.tiny_families import save_tiny_folder

WORDS = sorted({w for it in load_analogies() for w in (it.a, it.b, it.c, it.expected)})
WORDS += ["Ouagadougou", "antidisestablishmentarianism"]  # several tokens each


def assert_same_as_bridge(light, bridge) -> None:
    assert isinstance(light, Embeddings)
    assert torch.equal(light.W_E, bridge.W_E.detach().float())
    assert torch.equal(light.W_U, bridge.W_U.detach().float())
    assert [word_id(light, w) for w in WORDS] == [word_id(bridge, w) for w in WORDS]
    assert any(word_id(light, w) is None for w in WORDS)  # multi-token words are seen too
    assert torch.equal(word_mask(light), word_mask(bridge))
    ids = torch.randperm(light.W_E.shape[0], generator=torch.Generator().manual_seed(0))[:500]
    assert [light.tokenizer.decode([i]) for i in ids.tolist()] == \
        [bridge.tokenizer.decode([i]) for i in ids.tolist()]
    assert light.interp_bos == bridge.interp_bos
    assert light.interp_spec == bridge.interp_spec


def test_random_tiny_equals_bridge(tiny):
    assert_same_as_bridge(load_embeddings("random:tiny"), tiny)


def test_random_seed_changes_the_weights():
    assert not torch.equal(load_embeddings("random:tiny", seed=1).W_E,
                           load_embeddings("random:tiny").W_E)


@pytest.mark.offline_model
def test_smollm2_equals_bridge(smol):
    light = load_embeddings("smollm2-135m")
    assert_same_as_bridge(light, smol)
    assert light.interp_bos.token == "<|endoftext|>"  # not the chat-role <|im_start|>


def test_untied_folder_reads_the_unembedding(tmp_path):
    """A Llama folder with untied embeddings: W_U is lm_head, not W_E.T, as in the bridge."""
    folder = save_tiny_folder("llama", tmp_path / "llama")
    light = load_embeddings(str(folder))
    bridge = interp.load_model(str(folder), device="cpu")
    assert not torch.equal(light.W_U, light.W_E.T)
    assert_same_as_bridge(light, bridge)


def test_unknown_architecture_is_left_to_the_bridge(tmp_path):
    folder = save_tiny_folder("llama", tmp_path / "other")
    config = json.loads((folder / "config.json").read_text())
    assert _folder_matrices(folder) is not None
    config["architectures"] = ["SomethingElseForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    assert _folder_matrices(folder) is None


def test_sharded_checkpoint_and_unprefixed_keys(tmp_path):
    """An index.json over shards, with the embedding stored without its base-model prefix
    ("embed_tokens.weight"), reads the same matrices as the single-file folder."""
    from safetensors.torch import load_file, save_file

    folder = save_tiny_folder("llama", tmp_path / "llama")
    single = _folder_matrices(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    embed = tensors.pop("model.embed_tokens.weight")
    save_file({"embed_tokens.weight": embed}, str(folder / "shard-1.safetensors"))
    save_file(tensors, str(folder / "shard-2.safetensors"))
    (folder / "model.safetensors").unlink()
    weight_map = {"embed_tokens.weight": "shard-1.safetensors",
                  **{k: "shard-2.safetensors" for k in tensors}}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = _folder_matrices(folder)
    assert sharded[0] == single[0]
    assert torch.equal(sharded[1], single[1]) and torch.equal(sharded[2], single[2])
