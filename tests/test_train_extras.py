"""Trainer extras: init from an orbax checkpoint, TensorBoard scalars, global-norm clipping, bf16 compute with
fp32 master weights, and the error for a records folder without records."""

import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train_stage import _config, _tokenizer, _write_records
from test_train_step import CFG, NUM_KINDS, _batch, _single_device_mesh

from leafe_jax import models, parallel
from leafe_jax.data import records
from leafe_jax.train import checkpoint, metrics, optimizer, stage
from leafe_jax.train import state as state_lib
from leafe_jax.train import step as step_lib


@pytest.fixture
def workdir(tmp_path):
  fingerprint = _tokenizer(tmp_path / "tokenizer")
  _write_records(tmp_path / "records", fingerprint, n=24)
  return tmp_path


def _load_hf(hf_dir):
  from safetensors.numpy import load_file

  tensors = {}
  for path in sorted(glob.glob(os.path.join(hf_dir, "*.safetensors"))):
    tensors.update(load_file(path))
  assert tensors, f"no safetensors under {hf_dir}"
  return tensors


# --- 1. train.init = "orbax" -------------------------------------------------------------------------------------


def test_orbax_init_starts_from_the_source_runs_last_checkpoint(workdir):
  # One compiled step program (no micro-batch scan, every position's logits); checkpoints at steps 1 and 2.
  fast = dict(micro_batches=1, logits_fractions=(), log_every=1)
  source = _config(num_steps=2, checkpoint_every=1, keep=2, async_checkpoint=False, **fast)
  stage.run(source, str(workdir), str(workdir / "train"))
  want = _load_hf(workdir / "train" / "hf")

  # lr = 0: AdamW's update is -0·(...), so the follow-up's export is exactly its initial params.
  follow = _config(init="orbax", init_path="train/checkpoints", lr=0.0, num_steps=1, **fast)
  stage.run(follow, str(workdir), str(workdir / "follow"))
  got = _load_hf(workdir / "follow" / "hf")
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name].dtype == want[name].dtype == np.float32, name
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)

  # The same seed's random init is not what the follow-up started from (the source trained away from it).
  cfg = follow.train.copy_and_resolve_references()
  cfg.init = "random"
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  init_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))[0]
  model, random_params, _ = stage.model_and_params(cfg, str(workdir), mesh, init_rng)
  models.to_hf(model, jax.device_get(random_params), str(workdir / "random_hf"))
  random_init = _load_hf(workdir / "random_hf")
  assert sorted(random_init) == sorted(want)
  assert any(not np.array_equal(random_init[name], want[name]) for name in want)


_SOURCE_MODEL = dict(vocab_size=64, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8, d_ff=32,
              dtype="float32", param_dtype="float32", family="llama")


def _abstract_params(mesh, **overrides):
  cfg = models.ModelConfig(**{**_SOURCE_MODEL, **overrides})
  sharding = parallel.param_shardings(models.Decoder(cfg), mesh)
  init_fn = jax.jit(lambda key: models.init_params(cfg, key), out_shardings=sharding)
  return cfg, checkpoint.abstract_like(jax.eval_shape(init_fn, jax.random.PRNGKey(0)), sharding)


@pytest.fixture(scope="module")
def two_layer_checkpoint(tmp_path_factory):
  """A train stage's checkpoints dir (TrainState under `state`) of a 2-layer model."""
  directory = str(tmp_path_factory.mktemp("source") / "checkpoints")
  cfg = models.ModelConfig(**_SOURCE_MODEL)
  tx = optax.adamw(1e-3)
  train_state = state_lib.create(models.init_params(cfg, jax.random.PRNGKey(0)), tx, jax.random.PRNGKey(1))
  ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=False)
  ckpt.save(3, train_state, {"batches": 3})
  ckpt.close()
  return directory


@pytest.mark.parametrize("num_layers", [1, 3])
def test_orbax_init_from_a_checkpoint_of_another_layer_count_is_refused(two_layer_checkpoint, num_layers):
  mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  # The same config restores (the control).
  _, same = _abstract_params(mesh)
  restored = checkpoint.restore_params(two_layer_checkpoint, same)
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(restored))
  # One layer: the checkpoint's second layer was silently dropped; three: the third came back as a
  # ShapeDtypeStruct (never restored), to fail later as an unrelated error.
  _, other = _abstract_params(mesh, num_layers=num_layers)
  with pytest.raises(ValueError, match="another model config"):
    checkpoint.restore_params(two_layer_checkpoint, other)


def test_a_resumed_run_may_train_longer_but_refuses_another_optimisation(workdir):
  fast = dict(micro_batches=1, logits_fractions=(), log_every=1, async_checkpoint=False, checkpoint_every=1)
  constant = dict(schedule="constant", **fast)
  stage.run(_config(num_steps=1, **constant), str(workdir), str(workdir / "train"))
  stage.run(_config(num_steps=2, keep=5, **constant), str(workdir), str(workdir / "train"))  # longer: a resume
  assert sorted(os.listdir(workdir / "train" / "checkpoints")) == ["1", "2"]
  with pytest.raises(ValueError, match=r"train: the checkpoints in .* \(lr changed"):
    stage.run(_config(num_steps=3, lr=1e-2, **constant), str(workdir), str(workdir / "train"))
  # A cosine schedule decays over the run's length: a longer resumed run would jump to another schedule.
  stage.run(_config(num_steps=1, schedule="cosine", **fast), str(workdir), str(workdir / "cosine"))
  with pytest.raises(ValueError, match=r"\(schedule_steps changed"):
    stage.run(_config(num_steps=2, schedule="cosine", **fast), str(workdir), str(workdir / "cosine"))


# --- 2. TensorBoard -----------------------------------------------------------------------------------------------


def _read_scalars(logdir):
  """{tag: [(step, value, plugin name)]} from every event file under `logdir`."""
  import tensorflow as tf

  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor)), value.metadata.plugin_data.plugin_name))
  return out


def test_metrics_writer_writes_each_scalar_at_its_step(tmp_path):
  logdir = tmp_path / "tb"
  writer = metrics.MetricsWriter(str(logdir))
  writer.write(2, {"loss": 1.5, "cf/loss": 0.25, "lr": 1e-3})
  writer.write(4, {"loss": 1.25, "cf/loss": 0.125, "lr": 5e-4})
  writer.close()
  got = _read_scalars(str(logdir))
  assert sorted(got) == ["cf/loss", "loss", "lr"]
  want = {"loss": [(2, 1.5), (4, 1.25)], "cf/loss": [(2, 0.25), (4, 0.125)], "lr": [(2, 1e-3), (4, 5e-4)]}
  for tag, points in want.items():
    assert [step for step, _, _ in got[tag]] == [step for step, _ in points], tag
    np.testing.assert_allclose([v for _, v, _ in got[tag]], [v for _, v in points], rtol=1e-7, err_msg=tag)
    # The "scalars" plugin tag is what makes TensorBoard show them as scalar charts.
    assert got[tag][0][2] == "scalars", tag


def test_disabled_metrics_writer_writes_nothing(tmp_path):
  logdir = tmp_path / "tb"
  writer = metrics.MetricsWriter(str(logdir), enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert not logdir.exists()
  assert os.listdir(tmp_path) == []


# --- 3. gradient clipping -----------------------------------------------------------------------------------------


def _adam_first_update(grads, lr, eps):
  """Adam's bias-corrected first step, by hand: m̂ = g, v̂ = g², update = -lr·g/(|g| + eps)."""
  return {k: -lr * g / (np.abs(g) + eps) for k, g in grads.items()}


def _first_update(clip_norm, grads, lr=0.1, eps=1.0):
  # eps = 1 makes Adam's first step depend on the gradient's scale (with eps ~ 0 it is sign(g)·lr whatever the
  # clipping), so the update shows whether and how the gradient was scaled.
  config = stage.default_config()
  config.update({"lr": lr, "adam_eps": eps, "clip_norm": clip_norm, "weight_decay": 0.0, "warmup_steps": 0})
  tx = optimizer.make_optimizer(config, total_steps=10)
  params = {k: jnp.zeros_like(jnp.asarray(g)) for k, g in grads.items()}
  updates, _ = tx.update({k: jnp.asarray(g) for k, g in grads.items()}, tx.init(params), params)
  return {k: np.asarray(u) for k, u in updates.items()}


def test_clipping_scales_the_gradient_by_its_global_norm():
  # Each leaf's own norm (0.8, 0.9) is under the clip norm 1; the global norm sqrt(0.64 + 0.81) is over it, so
  # only global-norm clipping (not per-leaf clipping) scales both leaves, by 1/|g|.
  grads = {"kernel": np.array([[0.48, 0.0], [0.0, 0.64]], np.float32), "scale": np.array([0.9, 0.0], np.float32)}
  norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
  assert norm == pytest.approx(np.sqrt(1.45))
  clipped = {k: g / norm for k, g in grads.items()}
  got = _first_update(1.0, grads)
  want = _adam_first_update(clipped, lr=0.1, eps=1.0)
  unclipped = _adam_first_update(grads, lr=0.1, eps=1.0)
  for k in grads:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)
  assert not np.allclose(got["kernel"], unclipped["kernel"], rtol=1e-3)
  # The optax reference chain gives the same.
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1, eps=1.0))
  ref, _ = tx.update(grads, tx.init({k: np.zeros_like(g) for k, g in grads.items()}))
  for k in grads:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, err_msg=k)


def test_gradient_under_the_clip_norm_is_not_changed():
  grads = {"kernel": np.array([[0.3, -0.2], [0.0, 0.1]], np.float32), "scale": np.array([0.2, 0.05], np.float32)}
  assert np.sqrt(sum(np.sum(g**2) for g in grads.values())) < 1.0
  got = _first_update(1.0, grads)
  want = _adam_first_update(grads, lr=0.1, eps=1.0)
  off = _first_update(0.0, grads)  # clip_norm 0 = no clipping at all
  for k in grads:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)
    np.testing.assert_array_equal(got[k], off[k], err_msg=k)


# --- 4. bf16 compute, fp32 master weights -------------------------------------------------------------------------


def _sgd_step(dtype, params, batch):
  """One jitted train step (single device) with plain SGD: the param delta is -lr·grad, so deltas compare grads."""
  cfg = models.ModelConfig(**dict(CFG, dtype=dtype, param_dtype="float32"))
  model = models.Decoder(cfg)
  mesh = _single_device_mesh()
  tx = optax.sgd(0.1)
  params_sharding = parallel.param_shardings(model, mesh)
  state_sharding = state_lib.shardings(tx, params, params_sharding, mesh)
  state = jax.jit(lambda p: state_lib.create(p, tx, jax.random.PRNGKey(1)), out_shardings=state_sharding)(params)
  batch_sharding = parallel.batch_sharding(mesh)
  fn = step_lib.make_train_step(
      lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0], tx, normalization="example",
      num_kinds=NUM_KINDS, batch_spec=batch_sharding.spec, mesh=mesh)
  jitted = step_lib.jit_train_step(fn, state_sharding, dict.fromkeys(batch, batch_sharding), mesh)
  state, step_metrics = jitted(state, {k: jax.device_put(v, batch_sharding) for k, v in batch.items()})
  return jax.device_get(state.params), jax.device_get(step_metrics)


def _flat_delta(tree, ref):
  return np.concatenate([(np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
                         for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref), strict=True)])


def test_bf16_compute_keeps_fp32_params_and_tracks_the_fp32_step():
  params = jax.device_get(models.init_params(models.ModelConfig(**CFG), jax.random.PRNGKey(0)))
  batch = _batch()
  fp32, fp32_metrics = _sgd_step("float32", params, batch)
  bf16, bf16_metrics = _sgd_step("bfloat16", params, batch)

  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16))
  loss32, loss16 = float(fp32_metrics["loss"]), float(bf16_metrics["loss"])
  assert np.isfinite(loss16)
  assert loss16 != loss32  # bf16 compute really ran
  # bf16 keeps 8 significant bits: one ulp is 2^-8 ≈ 0.4% relative. The loss is reduced in fp32 from bf16
  # logits whose rounding errors average out over tokens, so it stays within one bf16 ulp of the fp32 loss.
  assert loss16 == pytest.approx(loss32, rel=2**-8)

  d32, d16 = _flat_delta(fp32, params), _flat_delta(bf16, params)
  assert np.linalg.norm(d32) > 0
  cosine = d32 @ d16 / (np.linalg.norm(d32) * np.linalg.norm(d16))
  assert cosine > 0.99, cosine
  assert np.linalg.norm(d16) == pytest.approx(np.linalg.norm(d32), rel=0.05)


# --- 5. a records folder without records --------------------------------------------------------------------------


def test_records_folder_without_a_manifest_names_its_path(workdir):
  os.makedirs(workdir / "recs")
  folder = os.path.join(str(workdir), "recs")
  with pytest.raises(records.EmptyRecordsError, match=re.escape(f"records folder {folder} has no manifest")):
    stage.run(_config(records=("recs",)), str(workdir), str(workdir / "train"))
  assert not (workdir / "train" / "checkpoints").exists()


def test_records_folder_with_zero_records_names_its_path(workdir):
  fingerprint = records.read_manifest(str(workdir / "records"))["tokenizer"]
  with records.RecordWriter(str(workdir / "recs"), tokenizer_fingerprint=fingerprint, shard_size=16):
    pass  # a writer that finished without writing a record
  folder = os.path.join(str(workdir), "recs")
  message = f"records folder {folder} has no finished shards with records (manifest total = 0)"
  with pytest.raises(records.EmptyRecordsError, match=re.escape(message)):
    stage.run(_config(records=("recs",)), str(workdir), str(workdir / "train"))
  assert not (workdir / "train" / "checkpoints").exists()
