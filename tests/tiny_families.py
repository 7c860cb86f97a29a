"""Tiny random models of every supported decoder family, built offline from their HF classes.

Each entry of `FAMILIES` makes a 2-layer HF config (d_model 32, 4 query heads; GQA where the
family has it) with the GPT-2 tokenizer's vocabulary, so IOI prompts tokenize as on GPT-2.
`tiny_model(family)` loads it through `TransformerBridge.boot_transformers` exactly like
`interp.models.loading` loads `random:*`; `save_tiny_folder(family, path)` writes it as a local
HF folder (model + tokenizer) for `interp ioi --model <folder>`.

Adding a family to the fast engine = one class in `interp.arch` plus one entry here.

Example:
    >>> model = tiny_model("neox")
    >>> save_tiny_folder("gemma2", "/tmp/tiny-gemma2")
"""

from pathlib import Path

import torch
import transformers as tf
from transformer_lens.model_bridge import TransformerBridge

from interp.models.random_gpt2 import gpt2_tokenizer

VOCAB = 50257
D, HEADS, LAYERS, MLP = 32, 4, 2, 64
COMMON = dict(vocab_size=VOCAB, hidden_size=D, num_attention_heads=HEADS,
              num_hidden_layers=LAYERS, intermediate_size=MLP, max_position_embeddings=256,
              bos_token_id=50256, eos_token_id=50256, tie_word_embeddings=False)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def _configs() -> dict[str, tuple[str, object]]:
    """family -> (architecture name, config)."""
    return {
        "gpt2": ("GPT2LMHeadModel", tf.GPT2Config(n_layer=LAYERS, n_head=HEADS, n_embd=D,
                                                  n_positions=256, vocab_size=VOCAB)),
        "gptj": ("GPTJForCausalLM", tf.GPTJConfig(n_layer=LAYERS, n_head=HEADS, n_embd=D,
                                                  rotary_dim=4, n_positions=256,
                                                  vocab_size=VOCAB)),
        "neox": ("GPTNeoXForCausalLM", tf.GPTNeoXConfig(
            **COMMON, rotary_pct=0.25, use_parallel_residual=True)),
        "llama": ("LlamaForCausalLM", tf.LlamaConfig(**COMMON, num_key_value_heads=2,
                                                     rope_scaling=LLAMA3_ROPE)),
        "mistral": ("MistralForCausalLM", tf.MistralConfig(**COMMON, num_key_value_heads=2,
                                                           sliding_window=8)),
        "qwen2": ("Qwen2ForCausalLM", tf.Qwen2Config(**COMMON, num_key_value_heads=2)),
        "qwen3": ("Qwen3ForCausalLM", tf.Qwen3Config(**COMMON, num_key_value_heads=2,
                                                     head_dim=8)),
        "gemma": ("GemmaForCausalLM", tf.GemmaConfig(**COMMON, num_key_value_heads=2,
                                                     head_dim=8)),
        "gemma2": ("Gemma2ForCausalLM", tf.Gemma2Config(
            **COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4,
            attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
            query_pre_attn_scalar=16)),
        "olmo2": ("Olmo2ForCausalLM", tf.Olmo2Config(**COMMON, num_key_value_heads=2)),
        "stablelm": ("StableLmForCausalLM", tf.StableLmConfig(
            **COMMON, num_key_value_heads=2, partial_rotary_factor=0.5)),
    }


FAMILIES = list(_configs())


def tiny_hf(family: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The HF model of `family` with seeded random weights (eager attention)."""
    arch, config = _configs()[family]
    config._attn_implementation = "eager"
    config.architectures = [arch]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = getattr(tf, arch)(config)
        with torch.no_grad():  # larger than the default init, so patches move the metric
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(5.0)
    finally:
        torch.random.set_rng_state(state)
    return model.eval().to(dtype), arch


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The tiny model of `family` as a `TransformerBridge` (CPU)."""
    hf, arch = tiny_hf(family, seed, dtype)
    model = TransformerBridge.boot_transformers(arch, hf_model=hf, tokenizer=gpt2_tokenizer(),
                                                device="cpu", dtype=dtype)
    model.eval()
    return model


def save_tiny_folder(family: str, path, seed: int = 0) -> Path:
    """Write the tiny model of `family` and the GPT-2 tokenizer as a local HF folder."""
    path = Path(path)
    hf, _ = tiny_hf(family, seed)
    hf.save_pretrained(path)
    gpt2_tokenizer().save_pretrained(path)
    return path
