import os
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

import interp
from interp.models import UnknownModelError
from interp.models.random_gpt2 import random_gpt2_hf
from interp.models.smollm2 import smollm2_folder

TEXT = "When Mary and John went to the store, John gave a drink to"


def _ids(model, text=TEXT):
    return torch.tensor([model.tokenizer.encode(text, add_special_tokens=False)])


@pytest.mark.parametrize("name", ["tiny", "gpt2"])
def test_random_bridge_matches_hf(name):
    bridge = interp.load_model(f"random:{name}", device="cpu")
    hf = random_gpt2_hf(name, seed=0)  # built again: same seed, same weights
    tokens = _ids(bridge)
    with torch.no_grad():
        assert torch.allclose(bridge(tokens), hf(tokens).logits, atol=1e-4)


def test_random_seed_changes_weights():
    a = interp.load_model("random:tiny", seed=0)
    b = interp.load_model("random:tiny", seed=1)
    assert not torch.equal(a.W_E, b.W_E)


def test_random_uses_real_gpt2_ids(tiny):
    assert tiny.to_single_token(" Mary") == 5335
    assert tiny.to_single_token(" John") == 1757
    assert tiny.tokenizer.decode(tiny.tokenizer.encode(TEXT, add_special_tokens=False)) == TEXT


def test_random_shapes():
    m = interp.load_model("random:tiny")
    assert (m.cfg.n_layers, m.cfg.n_heads, m.cfg.d_model) == (2, 4, 64)
    assert m.interp_spec == "random:tiny" and m.prepend_bos is False


@pytest.mark.offline_model
def test_smollm2_bridge_matches_hf(smol):
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder(), attn_implementation="eager")
    tokens = _ids(smol)
    with torch.no_grad():
        assert torch.allclose(smol(tokens), hf(tokens).logits, atol=1e-4)
    assert (smol.cfg.n_layers, smol.cfg.n_heads) == (30, 9)
    assert smol.tokenizer.decode(smol.tokenizer.encode(TEXT, add_special_tokens=False)) == TEXT


@pytest.mark.offline_model
def test_smollm2_second_load_is_fast(smol):
    t0 = time.perf_counter()
    interp.load_model("smollm2-135m", device="cpu")
    assert time.perf_counter() - t0 < 5


def test_unknown_spec_lists_valid_specs():
    with pytest.raises(UnknownModelError) as err:
        interp.load_model("gpt5-huge")
    assert "random:tiny" in str(err.value) and "smollm2-135m" in str(err.value)


def test_gpt2_without_hub_fails_fast_with_fixes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "INTERP_CACHE": str(tmp_path / "cache")}
    code = ("import interp\n"
            "try:\n interp.load_model('gpt2')\n"
            "except interp.ModelUnavailableError as e:\n print('ERR', e)\n")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert time.perf_counter() - t0 < 30
    assert "ERR" in out.stdout, out.stderr
    for needle in ("HF cache", str(tmp_path / "hf"), "local Hugging Face folder",
                   "smollm2-135m", "connect"):
        assert needle in out.stdout


def test_local_folder_needs_config(tmp_path):
    with pytest.raises(interp.ModelUnavailableError, match="config.json"):
        interp.load_model(str(tmp_path))
