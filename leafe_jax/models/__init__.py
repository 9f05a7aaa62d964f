"""Pure-functional Flax decoder families with HF checkpoint import/export.

  model, params = from_hf(path, dtype=jnp.float32)
  logits_BxTxV, cache = model.apply({"params": params}, input_ids_BxT)
"""

from leafe_jax.models import registry
from leafe_jax.models.checkpoint import CheckpointError, config_from_hf, from_hf, to_hf
from leafe_jax.models.config import ModelConfig
from leafe_jax.models.decoder import Decoder, KVCache, init_cache, init_params, logical_axes

__all__ = [
    "CheckpointError", "Decoder", "KVCache", "ModelConfig", "config_from_hf", "from_hf", "init_cache",
    "init_params", "logical_axes", "registry", "to_hf",
]
