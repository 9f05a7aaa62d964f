"""HF checkpoint import/export: round trips through transformers, sharded files, dtypes, and bad checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_models import CASES, save_tiny_hf
from transformers import AutoModelForCausalLM

from leafe_jax import models
from leafe_jax.models import safetensors_io


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_tensor_maps_cover_exactly_the_decoder_params(case):
  cls, extra = CASES[case]
  hf = cls(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, **extra).to_dict()
  family = models.registry.family(hf["model_type"])
  config = family.config_from_hf(hf)
  assert family.hf_config(config)["model_type"] == hf["model_type"]
  shapes = jax.eval_shape(lambda: models.init_params(config, jax.random.PRNGKey(0)))
  expected = {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
  mapped = {m.path: m.to_ours(np.zeros(m.hf_shape)).shape for m in family.tensor_maps(config)}
  assert mapped == expected
  for m in family.tensor_maps(config):  # the converters are inverses
    x = np.arange(np.prod(m.hf_shape), dtype=np.float32).reshape(m.hf_shape)
    np.testing.assert_array_equal(m.to_hf(m.to_ours(x)), x)


def _assert_same_state(reloaded, original):
  assert set(reloaded) == set(original)
  for name, tensor in original.items():
    assert reloaded[name].dtype == tensor.dtype, name
    assert torch.equal(reloaded[name], tensor), name


@pytest.mark.parametrize("case", ["llama3_rope_tied", "qwen2", "qwen3", "llama_attention_bias"])
def test_to_hf_reloads_in_transformers_with_identical_tensors(tmp_path, case):
  reference, path = save_tiny_hf(tmp_path, case)
  model, params = models.from_hf(path, scan_layers=case == "qwen2")  # one case exports the stacked layout
  out = str(tmp_path / "export")
  models.to_hf(model, params, out)
  reloaded = AutoModelForCausalLM.from_pretrained(out)
  assert reloaded.config.model_type == reference.config.model_type
  assert reloaded.config.tie_word_embeddings == reference.config.tie_word_embeddings
  assert reloaded.config.rope_parameters == reference.config.rope_parameters
  _assert_same_state(reloaded.state_dict(), reference.state_dict())


@pytest.mark.parametrize("scan_layers", [False, True])
def test_to_hf_splits_files_by_size_and_fetches_each_parameter_once(tmp_path, scan_layers):
  reference, path = save_tiny_hf(tmp_path, "qwen2")
  model, params = models.from_hf(path, scan_layers=scan_layers)
  fetched = []

  def fetch(leaf):
    fetched.append(id(leaf))
    return np.asarray(leaf)

  out = str(tmp_path / "export")
  models.to_hf(model, params, out, max_shard_bytes=40_000, fetch=fetch)
  files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
  with open(os.path.join(out, "model.safetensors.index.json")) as f:
    index = json.load(f)
  assert len(files) > 1 and sorted(set(index["weight_map"].values())) == files
  # Each file stays under the limit unless it holds a single larger tensor.
  for name in files:
    tensors = safetensors_io.read_header(os.path.join(out, name))
    assert len(tensors) == 1 or sum(t.end - t.start for t in tensors.values()) <= 40_000, name
  assert len(fetched) == len(set(fetched)) == len(jax.tree.leaves(params))  # stacked layers: one fetch each
  _assert_same_state(AutoModelForCausalLM.from_pretrained(out).state_dict(), reference.state_dict())
  _, again = models.from_hf(out, scan_layers=scan_layers)
  for want, got in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_sharded_safetensors_index_loads_like_a_single_file(tmp_path):
  reference, path = save_tiny_hf(tmp_path, "llama")
  sharded = str(tmp_path / "sharded")
  reference.save_pretrained(sharded, max_shard_size="40KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(sharded) if f.endswith(".safetensors")]) > 1
  _, single = models.from_hf(path)
  _, split = models.from_hf(sharded)
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(split)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_checkpoint_loads_exactly_in_bfloat16_and_float32(tmp_path):
  reference, _ = save_tiny_hf(tmp_path, "qwen3")
  path = str(tmp_path / "bf16")
  reference.to(torch.bfloat16).save_pretrained(path)
  expected = reference.state_dict()["model.layers.1.mlp.down_proj.weight"].float().numpy().T
  model, params = models.from_hf(path, dtype=jnp.bfloat16)
  assert model.config.dtype == model.config.param_dtype == "bfloat16"
  kernel = params["layers_1"]["mlp"]["down_proj"]["kernel"]
  assert kernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(kernel, np.float32), expected)
  model, params = models.from_hf(path, dtype=jnp.bfloat16, param_dtype=jnp.float32)
  assert (model.config.dtype, model.config.param_dtype) == ("bfloat16", "float32")
  np.testing.assert_array_equal(np.asarray(params["layers_1"]["mlp"]["down_proj"]["kernel"]), expected)


def _rewrite_config(path, **changes):
  file = os.path.join(path, "config.json")
  with open(file) as f:
    hf = json.load(f)
  hf.update(changes)
  with open(file, "w") as f:
    json.dump(hf, f)


def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
  _, path = save_tiny_hf(tmp_path, "llama")
  _rewrite_config(path, model_type="gpt_neox")
  with pytest.raises(models.CheckpointError,
                     match="config.json: unsupported model_type 'gpt_neox'; supported: llama, qwen2, qwen3"):
    models.from_hf(path)
  with pytest.raises(ValueError, match="supported: llama, qwen2, qwen3"):
    models.registry.family("mistral")


def test_unsupported_rope_scaling_is_rejected_when_the_config_is_read(tmp_path):
  _, path = save_tiny_hf(tmp_path, "llama")
  _rewrite_config(path, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
  with pytest.raises(models.CheckpointError, match="config.json: .*rope_scaling type 'yarn' is not supported"):
    models.config_from_hf(path)


def test_missing_or_misshaped_tensor_is_named_before_anything_loads(tmp_path):
  _, path = save_tiny_hf(tmp_path, "llama")
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


def test_a_checkpoint_tensor_the_model_would_not_use_is_refused(tmp_path):
  # E.g. an o_proj bias under a config that says there is none: loading it would silently change the outputs.
  _, path = save_tiny_hf(tmp_path, "llama")
  file = os.path.join(path, "model.safetensors")
  tensors = {name: np.asarray(safetensors_io.load(info)) for name, info in safetensors_io.read_header(file).items()}
  tensors["model.layers.0.self_attn.o_proj.bias"] = np.ones((64,), np.float32)
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones((8,), np.float32)  # old RoPE buffer: harmless
  safetensors_io.save(tensors, file)
  with pytest.raises(models.CheckpointError, match=r"1 tensors of the checkpoint have no place in a llama model "
                     r".*\['model.layers.0.self_attn.o_proj.bias'\]"):
    models.from_hf(path)


def test_missing_files_and_config_fields_are_named(tmp_path):
  _, path = save_tiny_hf(tmp_path, "qwen2")
  os.remove(os.path.join(path, "model.safetensors"))
  with pytest.raises(models.CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
    models.from_hf(path)
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  del hf["num_hidden_layers"]
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f)
  with pytest.raises(models.CheckpointError, match="config.json: field 'num_hidden_layers' missing"):
    models.from_hf(path)
  with pytest.raises(models.CheckpointError, match="cannot read the HF config"):
    models.from_hf(str(tmp_path / "nowhere"))


def test_shard_index_naming_a_file_without_the_tensor_is_reported(tmp_path):
  reference, _ = save_tiny_hf(tmp_path, "llama")
  sharded = str(tmp_path / "sharded")
  reference.save_pretrained(sharded, max_shard_size="40KB")
  index_file = os.path.join(sharded, "model.safetensors.index.json")
  with open(index_file) as f:
    index = json.load(f)
  files = sorted(set(index["weight_map"].values()))
  wrong = next(f for f in files if f != index["weight_map"]["model.norm.weight"])
  index["weight_map"]["model.norm.weight"] = wrong
  with open(index_file, "w") as f:
    json.dump(index, f)
  with pytest.raises(models.CheckpointError, match=f"'model.norm.weight' is mapped to {wrong}"):
    models.from_hf(sharded)
