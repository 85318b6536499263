"""The model families of the API and how a model is recognised.

Recognition uses ``config.model_type`` (present for every transformers model,
also those loaded from GGUF, where ``config.architectures`` is None) and falls
back to the model's class names.
"""

from __future__ import annotations

from torch import nn

__all__ = ["SUPPORTED_MODEL_TYPES", "REMOTE_CODE_FAMILIES", "model_type_of", "is_supported"]

#: transformers ``model_type`` values of the API's families that transformers 5.x ships.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "Llama",
    "gptj": "GPT-J",
    "gpt_neox": "GPT-NeoX",
    "opt": "OPT",
    "falcon": "Falcon",
    "bloom": "Bloom",
    "codegen": "CodeGen",
    "gpt_bigcode": "GPTBigCode",
    "t5": "T5",
    "mistral": "Mistral",
    "mpt": "MPT",
    "mixtral": "Mixtral",
    "stablelm": "StableLM",
    "qwen2": "Qwen2",
    "qwen2_moe": "Qwen2-MoE",
    "qwen3": "Qwen3",
    "qwen3_moe": "Qwen3-MoE",
    "git": "Git",
    "llava": "Llava",
    "phi": "Phi",
    "phi3": "Phi-3",
}

#: Families of the API whose modeling code is remote (trust_remote_code): they go
#: through the same generic swaps when the user has loaded them.
REMOTE_CODE_FAMILIES = {"baichuan": "Baichuan", "chatglm": "ChatGLM", "yuan": "Yuan", "qwen": "QWen (v1)"}

_CLASS_PREFIXES = {
    "Llama": "llama", "GPTJ": "gptj", "GPTNeoX": "gpt_neox", "OPT": "opt", "Falcon": "falcon", "Bloom": "bloom",
    "CodeGen": "codegen", "GPTBigCode": "gpt_bigcode", "T5": "t5", "Mistral": "mistral", "Mpt": "mpt",
    "Mixtral": "mixtral", "StableLm": "stablelm", "Qwen2Moe": "qwen2_moe", "Qwen2": "qwen2", "Qwen3Moe": "qwen3_moe",
    "Qwen3": "qwen3", "Git": "git", "Llava": "llava", "Phi3": "phi3", "Phi": "phi", "Baichuan": "baichuan",
    "ChatGLM": "chatglm", "Yuan": "yuan",
}


def model_type_of(model: nn.Module) -> str | None:
    """The family key of ``model`` (a transformers model_type), or None."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type:
        return str(model_type)
    for name in type(model).__name__, *(type(m).__name__ for m in model.modules()):
        for prefix in sorted(_CLASS_PREFIXES, key=len, reverse=True):
            if name.startswith(prefix):
                return _CLASS_PREFIXES[prefix]
    return None


def is_supported(model_type: str | None) -> bool:
    return model_type in SUPPORTED_MODEL_TYPES or model_type in REMOTE_CODE_FAMILIES
