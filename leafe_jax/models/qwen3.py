"""Qwen3 (dense): Llama layout with per-head RMSNorm on queries and keys."""

from leafe_jax.models.hf_config import common_config, common_hf_config
from leafe_jax.models.hf_layout import llama_tensor_maps

MODEL_TYPE = "qwen3"


def config_from_hf(hf: dict):
  if hf.get("use_sliding_window"):
    raise ValueError("qwen3: use_sliding_window=True is not supported")
  return common_config(hf, MODEL_TYPE, qkv_bias=bool(hf.get("attention_bias", False)),
                       o_bias=bool(hf.get("attention_bias", False)), qk_norm=True)


def hf_config(config) -> dict:
  if config.qkv_bias != config.o_bias:
    raise ValueError(f"{MODEL_TYPE}: attention_bias sets the q/k/v and the o_proj biases together; this model has "
                     f"qkv_bias={config.qkv_bias}, o_bias={config.o_bias}")
  return {**common_hf_config(config, MODEL_TYPE, "Qwen3ForCausalLM"), "attention_bias": config.qkv_bias,
          "use_sliding_window": False}


def tensor_maps(config) -> list:
  return llama_tensor_maps(config)
