"""Qwen2 / Qwen2.5: Llama layout with biases on the q, k, v projections."""

from leafe_jax.models.hf_config import common_config, common_hf_config
from leafe_jax.models.hf_layout import llama_tensor_maps

MODEL_TYPE = "qwen2"


def config_from_hf(hf: dict):
  if hf.get("use_sliding_window"):
    raise ValueError("qwen2: use_sliding_window=True is not supported")
  return common_config(hf, MODEL_TYPE, qkv_bias=True)


def hf_config(config) -> dict:
  if config.o_bias or not config.qkv_bias:
    raise ValueError(f"qwen2: the layout has q/k/v biases and no o_proj bias; this model has "
                     f"qkv_bias={config.qkv_bias}, o_bias={config.o_bias}")
  return {**common_hf_config(config, MODEL_TYPE, "Qwen2ForCausalLM"), "use_sliding_window": False}


def tensor_maps(config) -> list:
  return llama_tensor_maps(config)
