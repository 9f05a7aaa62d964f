"""HF `config.json` <-> ModelConfig for the Llama-layout families (llama, qwen2, qwen3)."""

from __future__ import annotations

from typing import Any

from leafe_jax.models.config import ModelConfig


def rope_settings(hf: dict[str, Any]) -> tuple[float, dict | None]:
  """(rope_theta, scaling) from a transformers 5 (`rope_parameters`) or 4 (`rope_theta`, `rope_scaling`) config."""
  params = hf.get("rope_parameters")
  if params:
    params = dict(params)
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    return theta, (params if params.get("rope_type", "default") != "default" else None)
  scaling = hf.get("rope_scaling")
  if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
    scaling = None
  return float(hf.get("rope_theta", 10000.0)), scaling


def common_config(hf: dict[str, Any], family: str, **overrides: Any) -> ModelConfig:
  """The fields every Llama-layout family shares; `overrides` are the family's own."""
  if hf.get("mlp_bias"):
    raise ValueError(f"{family}: mlp_bias=True is not supported")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{family}: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
  theta, scaling = rope_settings(hf)
  heads = hf["num_attention_heads"]
  fields = dict(
      family=family,
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      d_ff=hf["intermediate_size"],
      rope_theta=theta,
      rope_scaling=scaling,
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=hf.get("max_position_embeddings", 4096),
      bos_token_id=hf.get("bos_token_id"),
      eos_token_id=hf.get("eos_token_id"),
  )
  fields.update(overrides)
  return ModelConfig(**fields)


def attention_bias_fields(hf: dict[str, Any]) -> dict[str, bool]:
  """Llama / Qwen3 `attention_bias`: biases on the q, k, v and o projections together."""
  bias = bool(hf.get("attention_bias", False))
  return {"qkv_bias": bias, "o_bias": bias}


def attention_bias_of(config: ModelConfig, model_type: str) -> bool:
  """The `attention_bias` of a Llama / Qwen3 export; refuses bias settings that one flag cannot express."""
  if config.qkv_bias != config.o_bias:
    raise ValueError(f"{model_type}: attention_bias sets the q/k/v and the o_proj biases together; this model has "
                     f"qkv_bias={config.qkv_bias}, o_bias={config.o_bias}")
  return config.qkv_bias


def common_hf_config(config: ModelConfig, model_type: str, architecture: str) -> dict[str, Any]:
  rope = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling:
    rope = {**config.rope_scaling_dict, "rope_theta": config.rope_theta}
  out = {
      "model_type": model_type,
      "architectures": [architecture],
      "vocab_size": config.vocab_size,
      "hidden_size": config.d_model,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "intermediate_size": config.d_ff,
      "hidden_act": "silu",
      "rms_norm_eps": config.norm_eps,
      "rope_parameters": rope,
      "rope_theta": config.rope_theta,
      "tie_word_embeddings": config.tie_embeddings,
      "max_position_embeddings": config.max_position_embeddings,
      "dtype": config.param_dtype,
  }
  if config.rope_scaling:
    out["rope_scaling"] = {**config.rope_scaling_dict}
  if config.bos_token_id is not None:
    out["bos_token_id"] = config.bos_token_id
  if config.eos_token_id is not None:
    eos = config.eos_token_id
    out["eos_token_id"] = list(eos) if isinstance(eos, tuple) else eos
  return out
