"""The jitted train step: sharding-invariant, micro-batching-invariant, and packing-invariant (fp32, CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from leafe_jax import models, parallel
from leafe_jax.train import loss as loss_lib
from leafe_jax.train import state as state_lib
from leafe_jax.train import step as step_lib
from leafe_jax.train import targets

NUM_KINDS = 5
CFG = dict(vocab_size=96, d_model=32, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8, d_ff=64,
           dtype="float32", param_dtype="float32", family="llama")


@pytest.fixture(scope="module")
def model_and_params():
  cfg = models.ModelConfig(**CFG)
  return models.Decoder(cfg), jax.device_get(models.init_params(cfg, jax.random.PRNGKey(0)))


def _batch(rows=8, length=24, seed=0):
  rng = np.random.default_rng(seed)
  # Two packed examples per row (lengths vary), then padding.
  seg = np.zeros((rows, length), np.int32)
  pos = np.zeros((rows, length), np.int32)
  weight = np.zeros((rows, length), np.float32)
  for r in range(rows):
    a, b = int(rng.integers(5, 12)), int(rng.integers(4, 10))
    seg[r, :a], seg[r, a:a + b] = 1, 2
    pos[r, :a], pos[r, a:a + b] = np.arange(a), np.arange(b)
    weight[r, :a], weight[r, a:a + b] = rng.choice([1.0, 0.5]), rng.choice([1.0, 0.5])
  return {
      "input_ids_BxT": np.where(seg > 0, rng.integers(1, CFG["vocab_size"], (rows, length)), 0).astype(np.int32),
      "loss_mask_BxT": ((rng.random((rows, length)) < 0.7) & (seg > 0)).astype(np.float32),
      "weight_BxT": weight,
      "segment_ids_BxT": seg,
      "positions_BxT": pos,
      "kind_BxT": np.where(seg == 2, 1, 0).astype(np.int32),
  }


def _one_step(model, params, batch, mesh, micro_batches=1, normalization="example"):
  # Adam's first update is lr·g/(|g| + eps): its sensitivity to round-off in g is lr/eps, so a default eps (1e-8)
  # turns fp32 summation-order noise in near-zero gradients into full-size updates. eps = 1e-3 bounds the
  # reduction-order difference between meshes to ~lr/eps·1e-7 = 1e-6 while keeping Adam's state in the test.
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, eps=1e-3, weight_decay=0.1))
  params_sharding = parallel.param_shardings(model, mesh)
  state_sharding = state_lib.shardings(tx, params, params_sharding, mesh)
  state = jax.jit(lambda p: state_lib.create(p, tx, jax.random.PRNGKey(1)), out_shardings=state_sharding)(params)
  batch_sharding = parallel.batch_sharding(mesh)
  fn = step_lib.make_train_step(
      lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0], tx, normalization=normalization,
      num_kinds=NUM_KINDS, micro_batches=micro_batches, batch_spec=batch_sharding.spec, mesh=mesh)
  jitted = step_lib.jit_train_step(fn, state_sharding, dict.fromkeys(batch, batch_sharding), mesh)
  state, metrics = jitted(state, {k: jax.device_put(v, batch_sharding) for k, v in batch.items()})
  return jax.device_get(state.params), jax.device_get(metrics)


def _single_device_mesh():
  return Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))


def _assert_trees_close(got, want, atol=1e-5):
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def single_device_step(model_and_params):
  model, params = model_and_params
  return _one_step(model, params, _batch(), _single_device_mesh())


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_one_step_on_a_mesh_equals_the_single_device_step(model_and_params, single_device_step, shape):
  model, params = model_and_params
  batch = _batch()
  want, want_metrics = single_device_step
  got, got_metrics = _one_step(model, params, batch, parallel.make_mesh(shape))
  _assert_trees_close(got, want)
  np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-6)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_logits_at_target_positions_only_give_the_full_logits_step(model_and_params, single_device_step,
                                                                    micro_batches):
  model, params = model_and_params
  batch = _batch()
  width = targets.index_width(targets.max_targets_per_row(batch), 24, (0.5,))
  assert width == 12  # fewer positions than the row: the gathered path is what runs
  batch[loss_lib.TARGET_INDEX] = targets.target_index(batch, width)
  want, want_metrics = single_device_step
  got, got_metrics = _one_step(model, params, batch, parallel.make_mesh((2, 2, 2)), micro_batches=micro_batches)
  _assert_trees_close(got, want)
  np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)
  for key in loss_lib.KIND_SUM_KEYS:
    np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("normalization", ["token", "example"])
def test_k_micro_batches_equal_one_batch(model_and_params, normalization):
  model, params = model_and_params
  batch = _batch()  # 8 rows: micro-batches of 4 rows, one row per (data, fsdp) shard
  mesh = parallel.make_mesh((2, 2, 2))
  want, want_metrics = _one_step(model, params, batch, mesh, micro_batches=1, normalization=normalization)
  got, got_metrics = _one_step(model, params, batch, mesh, micro_batches=2, normalization=normalization)
  _assert_trees_close(got, want)
  np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)
  np.testing.assert_array_equal(got_metrics["targets_K"], want_metrics["targets_K"])


def _unpack(batch):
  """One row per (row, segment) example, left-aligned and padded to the same length."""
  rows = []
  for r in range(batch["segment_ids_BxT"].shape[0]):
    for s in np.unique(batch["segment_ids_BxT"][r]):
      if s == 0:
        continue
      cols = np.flatnonzero(batch["segment_ids_BxT"][r] == s)
      row = {}
      for key, value in batch.items():
        out = np.zeros_like(value[r])
        out[: len(cols)] = value[r, cols]
        row[key] = out
      row["segment_ids_BxT"] = np.where(np.arange(len(out)) < len(cols), 1, 0).astype(np.int32)
      rows.append(row)
  return {key: np.stack([row[key] for row in rows]) for key in batch}


def _per_example_nll(model, params, batch):
  """{(input_ids of the example): mean NLL over its targets} through the real model and loss code."""
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  forward = jax.jit(lambda p, ids, pos, seg: model.apply({"params": p}, ids, positions=pos, segment_ids=seg)[0])
  logits = forward(params, jb["input_ids_BxT"], jb["positions_BxT"], jb["segment_ids_BxT"])
  ids = jnp.asarray(batch["input_ids_BxT"])
  nll, _ = loss_lib.token_nll(logits[:, :-1], ids[:, 1:])
  valid = np.asarray(loss_lib.target_mask({k: jnp.asarray(v) for k, v in batch.items()}))
  nll = np.asarray(nll)
  out = {}
  for r in range(batch["segment_ids_BxT"].shape[0]):
    seg = batch["segment_ids_BxT"][r]
    for s in np.unique(seg[seg > 0]):
      cols = np.flatnonzero(seg == s)
      key = tuple(batch["input_ids_BxT"][r, cols])
      targets = valid[r, cols[1:] - 1]
      if targets.sum():
        out[key] = float((nll[r, cols[1:] - 1] * targets).sum() / targets.sum())
  return out


def test_packed_rows_give_the_same_per_example_loss_as_unpacked_rows(model_and_params):
  model, params = model_and_params
  packed = _batch()
  unpacked = _unpack(packed)
  got, want = _per_example_nll(model, params, packed), _per_example_nll(model, params, unpacked)
  assert sorted(got) == sorted(want) and len(got) == 16
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-5)
  # The batch loss ("example" normalisation) is the same too.
  for normalization in loss_lib.NORMALIZATIONS:
    fn = loss_lib.make_loss_fn(lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0], normalization,
                               NUM_KINDS)
    losses = []
    for b in (packed, unpacked):
      jb = {k: jnp.asarray(v) for k, v in b.items()}
      losses.append(float(jax.jit(fn)(params, jb, loss_lib.denominator(jb, normalization))[0]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
