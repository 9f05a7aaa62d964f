"""Llama 2/3/3.1 (incl. `llama3` rope scaling)."""

from leafe_jax.models.hf_config import attention_bias_fields, attention_bias_of, common_config, common_hf_config
from leafe_jax.models.hf_layout import llama_tensor_maps

MODEL_TYPE = "llama"


def config_from_hf(hf: dict):
  return common_config(hf, MODEL_TYPE, **attention_bias_fields(hf))


def hf_config(config) -> dict:
  return {**common_hf_config(config, MODEL_TYPE, "LlamaForCausalLM"),
          "attention_bias": attention_bias_of(config, MODEL_TYPE), "mlp_bias": False}


def tensor_maps(config) -> list:
  return llama_tensor_maps(config)
