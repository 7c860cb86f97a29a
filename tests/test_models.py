import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

import interp
from interp.errors import UserError
from interp.models import UnknownModelError
from interp.models.errors import DeviceError
from interp.models.random_gpt2 import gpt2_tokenizer, random_gpt2_hf
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


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """random:tiny saved as a local Hugging Face folder (config, weights, tokenizer)."""
    folder = tmp_path_factory.mktemp("tiny-hf")
    random_gpt2_hf("tiny", seed=3).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


def _broken_copy(src, dst, damage):
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def test_local_folder_loads_and_matches_hf(tiny_folder):
    bridge = interp.load_model(str(tiny_folder), device="cpu")
    tokens = _ids(bridge)
    with torch.no_grad():
        assert torch.allclose(bridge(tokens), random_gpt2_hf("tiny", seed=3)(tokens).logits,
                              atol=1e-4)


def _truncate(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100_000])


def _small_vocab(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))


# (damage, words the one-line error must contain). BUG before the fix: no tokenizer files
# loaded a 1-entry tokenizer (every text -> token 0); the others were raw OSError,
# SafetensorError or ValueError tracebacks.
FOLDER_FAULTS = [
    (lambda f: [p.unlink() for p in f.glob("tokenizer*")], "no tokenizer files"),
    (lambda f: (f / "model.safetensors").unlink(), "no weights"),
    (_truncate, "model.safetensors is damaged"),
    (lambda f: (f / "config.json").write_text("{not json"), "config.json is invalid"),
    (lambda f: (f / "config.json").write_text("{}"), "config.json is invalid"),
    (_small_vocab, "the tokenizer has 50257 tokens but the model's vocabulary"),
]


@pytest.mark.parametrize("damage,words", FOLDER_FAULTS)
def test_broken_local_folder_is_one_line_naming_it(tiny_folder, tmp_path, damage, words):
    folder = _broken_copy(tiny_folder, tmp_path / "model", damage)
    with pytest.raises(interp.ModelUnavailableError) as err:
        interp.load_model(str(folder), device="cpu")
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and words in message, message
    assert "save_pretrained" in message  # the fix


def test_empty_spec_is_not_the_current_folder(tmp_path, monkeypatch):
    # BUG before the fix: "" resolved to the current folder.
    monkeypatch.chdir(tmp_path)
    for spec in ("", "  "):
        with pytest.raises(UnknownModelError, match="empty model spec"):
            interp.load_model(spec)


@pytest.mark.parametrize("kwargs,words", [
    ({"device": "cpu", "device_map": "auto"}, "exclusive"),
    ({"device": "cpu", "n_devices": 2}, "exclusive"),
    ({"device": "foo"}, "unknown device 'foo'"),
    ({"device": "cuda:99"}, "cuda"),
])
def test_bad_device_arguments_are_one_line_before_loading(kwargs, words):
    # BUG before the fix: device and device_map were both accepted (the README calls them
    # exclusive); "foo" raised a raw RuntimeError from torch.
    with pytest.raises(UserError) as err:
        interp.load_model("random:tiny", **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_without_cuda_names_the_fix():
    with pytest.raises(DeviceError, match="CUDA is not available on this machine; use device cpu"):
        interp.load_model("random:tiny", device="cuda")
