"""Mesh, logical-axis rules and shardings on 8 fake CPU devices; sharded forward == single device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from test_models import save_tiny_hf

from leafe_jax import models, parallel


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
  _, path = save_tiny_hf(tmp_path_factory.mktemp("hf"), "qwen2")
  return path


def test_make_mesh_names_axes_and_rejects_a_wrong_device_count():
  mesh = parallel.make_mesh((2, 2, 2))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match=r"mesh shape \(2, 2, 1\) needs 4 devices, have 8"):
    parallel.make_mesh((2, 2, 1))


def test_logical_rules_map_params_like_maxtext():
  mesh = parallel.make_mesh((2, 2, 2))
  rules = dict(parallel.LOGICAL_RULES)
  assert rules["embed"] == "fsdp" and rules["batch"] == ("data", "fsdp") and rules["layers"] is None
  assert all(rules[name] == "tensor" for name in ("heads", "kv_heads", "mlp", "vocab"))
  specs = {"q": PartitionSpec("embed", "heads", "head_dim"), "stacked": PartitionSpec("layers", "mlp", "embed")}
  shardings = parallel.logical_sharding(specs, mesh)
  assert shardings["q"].spec == PartitionSpec("fsdp", "tensor", None)
  assert shardings["stacked"].spec == PartitionSpec(None, "tensor", "fsdp")
  # With shapes, a dimension the mesh axis does not divide stays replicated instead of failing.
  shapes = {"q": jax.ShapeDtypeStruct((6, 3, 4), jnp.float32), "stacked": jax.ShapeDtypeStruct((2, 8, 6), jnp.float32)}
  shardings = parallel.logical_sharding(specs, mesh, shapes)
  assert shardings["q"].spec == PartitionSpec("fsdp", None, None)
  assert shardings["stacked"].spec == PartitionSpec(None, "tensor", "fsdp")
  assert parallel.batch_sharding(mesh).spec == PartitionSpec(("data", "fsdp"))


def test_param_shardings_follow_the_logical_axes_of_every_parameter():
  config = models.ModelConfig(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                              d_ff=96, scan_layers=True)
  mesh = parallel.make_mesh((1, 2, 4))
  shardings = parallel.param_shardings(models.Decoder(config), mesh)
  layer = shardings["layers"]
  assert layer["self_attn"]["q_proj"]["kernel"].spec == PartitionSpec(None, "fsdp", "tensor", None)
  assert layer["self_attn"]["k_proj"]["kernel"].spec == PartitionSpec(None, "fsdp", None, None)  # 2 kv heads, 4-way
  assert layer["mlp"]["down_proj"]["kernel"].spec == PartitionSpec(None, "tensor", "fsdp")
  assert shardings["embed_tokens"]["embedding"].spec == PartitionSpec("tensor", "fsdp")
  assert shardings["norm"]["scale"].spec == PartitionSpec(None)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_jitted_forward_equals_single_device(qwen2_dir, shape):
  model, params = models.from_hf(qwen2_dir)
  ids = jnp.asarray(np.random.RandomState(4).randint(0, 128, (8, 6)))
  mask = np.ones((8, 6), np.int32)
  mask[::2, :2] = 0
  expected, _ = jax.jit(lambda p, x, m: model.apply({"params": p}, x, attention_mask=m))(params, ids, mask)
  mesh = parallel.make_mesh(shape)
  sharded_model, sharded = models.from_hf(qwen2_dir, mesh=mesh)
  shardings = parallel.param_shardings(sharded_model, mesh)
  for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(sharded), jax.tree.leaves(shardings)):
    assert isinstance(sharding, NamedSharding)
    assert leaf.sharding == sharding, path
  batch = parallel.batch_sharding(mesh)
  forward = jax.jit(lambda p, x, m: sharded_model.apply({"params": p}, x, attention_mask=m)[0],
                    in_shardings=(shardings, batch, batch))
  got = forward(sharded, jax.device_put(ids, batch), jax.device_put(mask, batch))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_sharded_load_of_scanned_layers_matches_the_unsharded_load(qwen2_dir):
  mesh = parallel.make_mesh((1, 2, 4))
  model, sharded = models.from_hf(qwen2_dir, mesh=mesh, scan_layers=True)
  _, plain = models.from_hf(qwen2_dir, scan_layers=True)
  kernel = sharded["layers"]["mlp"]["gate_proj"]["kernel"]
  assert kernel.shape == (2, 64, 96)
  assert kernel.sharding == NamedSharding(mesh, PartitionSpec(None, "fsdp", "tensor"))
  assert kernel.addressable_shards[0].data.shape == (2, 32, 24)  # each device holds only its slice
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_large_parameter_the_mesh_cannot_shard_is_logged_as_replicated(monkeypatch, caplog):
  from leafe_jax.models.decoder import Decoder
  from leafe_jax.parallel import mesh as mesh_lib

  # 6 query heads on a tensor axis of 4 (as Qwen2.5-7B's 28 heads on 8); d_ff 96 and the vocabulary divide.
  config = models.ModelConfig(vocab_size=128, d_model=64, num_layers=1, num_heads=6, num_kv_heads=2, head_dim=16,
                              d_ff=96)
  mesh = parallel.make_mesh((1, 2, 4))
  monkeypatch.setattr(mesh_lib, "REPLICATION_WARNING_ELEMENTS", 0)
  with caplog.at_level("WARNING"):
    shardings = parallel.param_shardings(Decoder(config), mesh)
  warned = [r.getMessage() for r in caplog.records if "replicated there" in r.getMessage()]
  assert shardings["layers_0"]["self_attn"]["q_proj"]["kernel"].spec == PartitionSpec("fsdp", None, None)
  assert any("q_proj" in m and "dim 1 (heads) is not divisible by its mesh axes' 4 devices" in m for m in warned)
  assert any("o_proj" in m for m in warned) and not any("mlp" in m or "embed_tokens" in m for m in warned)
