"""Decoder families against the transformers PyTorch reference; cache, packing, scan, sharding, bad input."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from leafe_jax import models, parallel

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CASES = {
    "llama": (LlamaConfig, {}),
    "llama3_tied": (LlamaConfig, {"tie_word_embeddings": True, "rope_scaling": LLAMA3_ROPE}),
    "qwen2": (Qwen2Config, {}),
    "qwen3": (Qwen3Config, {"head_dim": 16}),
}


def _save_hf(tmp_path, case):
  cls, extra = CASES[case]
  torch.manual_seed(0)
  hf_config = cls(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, **extra)
  model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
  path = str(tmp_path / case)
  model.save_pretrained(path)
  return model, path


def _left_padded_batch():
  ids = np.random.RandomState(0).randint(0, 128, (2, 7))
  mask = np.ones((2, 7), np.int64)
  mask[1, :3] = 0
  return ids, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_hf_matches_pytorch_logits_and_to_hf_round_trips(tmp_path, case):
  reference, path = _save_hf(tmp_path, case)
  ids, mask = _left_padded_batch()
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  for scan in (False, True):
    model, params = models.from_hf(path, scan_layers=scan)
    logits, _ = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert np.abs(np.asarray(logits) - expected)[mask.astype(bool)].max() <= 1e-4
  out = str(tmp_path / "export")
  models.to_hf(model, params, out)
  reloaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
  original = reference.state_dict()
  assert set(reloaded) == set(original)
  assert all(torch.equal(reloaded[k], original[k]) for k in original)


def _tiny():
  config = models.ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                              d_ff=64)
  return config, models.Decoder(config), models.init_params(config, jax.random.PRNGKey(0))


def test_decoding_with_the_kv_cache_equals_the_full_forward_pass():
  config, model, params = _tiny()
  ids = np.random.RandomState(1).randint(1, 64, (2, 9))
  mask = np.ones((2, 9), np.int32)
  mask[1, :3] = 0  # left padding of the shorter prompt
  full, _ = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  cache = models.init_cache(config, 2, 16)
  logits, cache = model.apply({"params": params}, jnp.asarray(ids[:, :5]), attention_mask=jnp.asarray(mask[:, :5]),
                              cache=cache)
  steps = [logits]
  for t in range(5, 9):
    logits, cache = model.apply({"params": params}, jnp.asarray(ids[:, t:t + 1]),
                                attention_mask=jnp.ones((2, 1), jnp.int32), cache=cache)
    steps.append(logits)
  assert int(cache.index) == 9
  incremental = np.concatenate([np.asarray(s) for s in steps], axis=1)
  assert np.abs(incremental - np.asarray(full))[mask.astype(bool)].max() <= 1e-5


def test_packed_segments_do_not_attend_across_and_match_separate_sequences():
  _, model, params = _tiny()
  ids = np.random.RandomState(2).randint(1, 64, (1, 9))
  segments = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0]])
  positions = np.array([[0, 1, 2, 0, 1, 2, 3, 0, 0]])
  packed, _ = model.apply({"params": params}, jnp.asarray(ids), positions=jnp.asarray(positions),
                          segment_ids=jnp.asarray(segments))
  first, _ = model.apply({"params": params}, jnp.asarray(ids[:, :3]))
  second, _ = model.apply({"params": params}, jnp.asarray(ids[:, 3:7]))
  np.testing.assert_allclose(np.asarray(packed)[0, :3], np.asarray(first)[0], atol=1e-5)
  np.testing.assert_allclose(np.asarray(packed)[0, 3:7], np.asarray(second)[0], atol=1e-5)


def test_scanned_layers_equal_unrolled_layers_with_a_cache():
  config, model, params = _tiny()
  scanned = models.Decoder(dataclasses.replace(config, scan_layers=True))
  stacked = {k: v for k, v in params.items() if not k.startswith("layers_")}
  stacked["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(2)])
  ids = jnp.asarray(np.random.RandomState(3).randint(1, 64, (2, 6)))
  expected, _ = model.apply({"params": params}, ids)
  got, cache = scanned.apply({"params": stacked}, ids, cache=models.init_cache(config, 2, 8))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
  assert cache.k.shape == (2, 2, 8, 2, 8)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_forward_equals_single_device(tmp_path, shape):
  _, path = _save_hf(tmp_path, "qwen2")
  model, params = models.from_hf(path)
  ids = jnp.asarray(np.random.RandomState(4).randint(0, 128, (8, 6)))
  expected, _ = model.apply({"params": params}, ids)
  mesh = parallel.make_mesh(shape)
  sharded_model, sharded = models.from_hf(path, mesh=mesh)
  shardings = parallel.param_shardings(sharded_model, mesh)
  for leaf, sharding in zip(jax.tree.leaves(sharded), jax.tree.leaves(shardings)):
    assert leaf.sharding == sharding
  forward = jax.jit(lambda p, x: sharded_model.apply({"params": p}, x)[0],
                    in_shardings=(shardings, parallel.batch_sharding(mesh)))
  got = forward(sharded, jax.device_put(ids, parallel.batch_sharding(mesh)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
  _, path = _save_hf(tmp_path, "llama")
  config_path = os.path.join(path, "config.json")
  with open(config_path) as f:
    hf = json.load(f)
  hf["model_type"] = "gpt_neox"
  with open(config_path, "w") as f:
    json.dump(hf, f)
  with pytest.raises(ValueError, match="unsupported model_type 'gpt_neox'; supported: llama, qwen2, qwen3"):
    models.from_hf(path)


def test_missing_or_misshaped_tensor_is_named_before_anything_loads(tmp_path):
  from leafe_jax.models import safetensors_io

  _, path = _save_hf(tmp_path, "llama")
  file = os.path.join(path, "model.safetensors")
  tensors = {name: np.asarray(safetensors_io.load(info)) for name, info in safetensors_io.read_header(file).items()}
  missing = dict(tensors)
  del missing["model.layers.1.mlp.up_proj.weight"]
  safetensors_io.save(missing, file)
  with pytest.raises(models.CheckpointError, match="'model.layers.1.mlp.up_proj.weight' is missing"):
    models.from_hf(path)
  tensors["model.norm.weight"] = np.zeros((65,), np.float32)
  safetensors_io.save(tensors, file)
  with pytest.raises(models.CheckpointError, match=r"'model.norm.weight' has shape \(65,\), expected \(64,\)"):
    models.from_hf(path)
