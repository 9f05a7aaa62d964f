"""Qwen3 (dense): Llama layout with per-head RMSNorm on queries and keys."""

from leafe_jax.models.hf_config import attention_bias_fields, attention_bias_of, common_config, common_hf_config
from leafe_jax.models.hf_layout import llama_tensor_maps

MODEL_TYPE = "qwen3"


def config_from_hf(hf: dict):
  if hf.get("use_sliding_window"):
    raise ValueError("qwen3: use_sliding_window=True is not supported")
  return common_config(hf, MODEL_TYPE, **attention_bias_fields(hf), qk_norm=True)


def hf_config(config) -> dict:
  return {**common_hf_config(config, MODEL_TYPE, "Qwen3ForCausalLM"),
          "attention_bias": attention_bias_of(config, MODEL_TYPE), "use_sliding_window": False}


def tensor_maps(config) -> list:
  return llama_tensor_maps(config)
