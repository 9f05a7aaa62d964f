"""Model families keyed by HF `model_type`. A new family is one module plus one line here."""

from __future__ import annotations

import importlib
from types import ModuleType

# model_type -> module exposing:
#   MODEL_TYPE: str
#   config_from_hf(hf_config_dict) -> ModelConfig       (raise ValueError naming an unsupported feature)
#   hf_config(ModelConfig) -> dict                       (the config.json transformers loads)
#   tensor_maps(ModelConfig) -> list[hf_layout.TensorMap] (HF tensor names/shapes <-> our param paths)
_FAMILIES: dict[str, str] = {
    "llama": "leafe_jax.models.llama",
    "qwen2": "leafe_jax.models.qwen2",
    "qwen3": "leafe_jax.models.qwen3",
}


def supported() -> list[str]:
  return sorted(_FAMILIES)


def family(model_type: str) -> ModuleType:
  if model_type not in _FAMILIES:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(supported())}")
  return importlib.import_module(_FAMILIES[model_type])
