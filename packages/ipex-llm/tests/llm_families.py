"""Tiny random-weight models of every family ipex.llm.optimize supports (shared by tests and benchmarks)."""

from __future__ import annotations

import torch

# model_type -> config kwargs for a model of a few hundred thousand parameters.
_COMMON = dict(vocab_size=320, max_position_embeddings=128)
TINY = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16),
    "mixtral": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                      num_experts_per_tok=2),
    "qwen3_moe": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, head_dim=16),
    "phi3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 pad_token_id=0),
    "phi": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "stablelm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gptj": dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128),
    "codegen": dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128, n_ctx=128),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=64),
    "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False),
    "bloom": dict(hidden_size=64, n_layer=2, n_head=4),
    "gpt_bigcode": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "mpt": dict(d_model=64, n_layers=2, n_heads=4, max_seq_len=128),
    "t5": dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4, decoder_start_token_id=0,
               pad_token_id=0),
}


def build(model_type: str, seed: int = 0):
    """A tiny eval-mode model of ``model_type`` with random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    kwargs = dict(_COMMON, **TINY[model_type])
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if model_type == "t5" else AutoModelForCausalLM
    model = auto.from_config(config)
    # Random weights drawn with std 0.02 give near-uniform logits; a larger spread
    # makes greedy choices decisive, so token-exact comparisons test the kernels.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15)
    return model.eval()
