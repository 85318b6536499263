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

#: Configurations of a family that take other code paths: name -> (model_type, config kwargs over TINY's).
VARIANTS = {
    "falcon_alibi": ("falcon", dict(alibi=True, multi_query=False)),
    # Falcon's non-SDPA ALiBi path adds ALiBi to the scores a second time (stock behaviour).
    "falcon_alibi_eager": ("falcon", dict(alibi=True, multi_query=False, attn_implementation="eager")),
    "falcon_new_arch": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2)),
}

# Image-to-text families: a tiny vision encoder (32x32 images cut into 8x8 patches, so 16
# image positions) in front of a tiny text model.
IMAGE_SIZE, PATCH_SIZE = 32, 8
IMAGE_POSITIONS = (IMAGE_SIZE // PATCH_SIZE) ** 2
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE,
               patch_size=PATCH_SIZE)
#: Llava marks where the image features go with this token (the last of the vocabulary).
LLAVA_IMAGE_TOKEN = _COMMON["vocab_size"] - 1
MULTIMODAL = {
    "git": dict(_COMMON, vision_config=_VISION, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "llava": dict(vision_config=dict(_VISION, model_type="clip_vision_model", projection_dim=32),
                  text_config=dict(_COMMON, **TINY["llama"], model_type="llama"), image_token_index=LLAVA_IMAGE_TOKEN,
                  image_seq_length=IMAGE_POSITIONS, vision_feature_layer=-1),
}


def build(model_type: str, seed: int = 0, **overrides):
    """A tiny eval-mode model of ``model_type`` (a key of TINY, VARIANTS or MULTIMODAL) with random weights;
    ``overrides`` change its config (text families)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSeq2SeqLM

    if model_type in VARIANTS:
        model_type, variant = VARIANTS[model_type]
        config = AutoConfig.for_model(model_type, **{**_COMMON, **TINY[model_type], **variant, **overrides})
        auto = AutoModelForCausalLM
    elif model_type in MULTIMODAL:
        config = AutoConfig.for_model(model_type, **MULTIMODAL[model_type])
        auto = AutoModelForCausalLM if model_type == "git" else AutoModelForImageTextToText
    else:
        config = AutoConfig.for_model(model_type, **dict(_COMMON, **TINY[model_type], **overrides))
        auto = AutoModelForSeq2SeqLM if model_type == "t5" else AutoModelForCausalLM
    torch.manual_seed(seed)
    model = auto.from_config(config)
    # Random weights drawn with std 0.02 give near-uniform logits; a larger spread
    # makes greedy choices decisive, so token-exact comparisons test the kernels.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.15)
    return model.eval()


def image_prompt(model_type: str, batch: int = 2, text_tokens: int = 6, seed: int = 1):
    """(input_ids, pixel_values) for a MULTIMODAL model: Llava's prompt starts with its image tokens."""
    torch.manual_seed(seed)
    pixel_values = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    input_ids = torch.randint(3, 300, (batch, text_tokens))
    if model_type == "llava":
        input_ids = torch.cat([torch.full((batch, IMAGE_POSITIONS), LLAVA_IMAGE_TOKEN), input_ids], dim=1)
    return input_ids, pixel_values
