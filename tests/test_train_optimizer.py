"""Schedules, weight-decay mask and the MFU bookkeeping, against hand computations."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from leafe_jax.train import metrics, optimizer, stage


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_then_schedule(schedule):
  lr, warmup, total = 1e-3, 4, 20
  fn = optimizer.make_schedule(lr, warmup, total, schedule)
  for step in range(total + 1):
    if step < warmup:
      want = lr * step / warmup
    elif schedule == "constant":
      want = lr
    else:
      want = lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    assert float(fn(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step


def test_advancing_the_schedule_moves_the_lr_and_leaves_adams_bias_correction():
  # Adam's first update is lr * g / |g| (bias-corrected, eps negligible): a hand computation of the lr it used.
  config = stage.default_config()
  config.update({"lr": 0.1, "warmup_steps": 8, "weight_decay": 0.0, "clip_norm": 0.0, "adam_eps": 1e-12})
  tx = optimizer.make_optimizer(config, total_steps=20)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([2.0, -0.5, 1.0])}
  state = optimizer.advance_schedule(tx.init(params), 3)
  assert int(optimizer.schedule_count(state)) == 3
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["w"], -0.1 * 3 / 8 * np.sign(grads["w"]), rtol=1e-5)
  assert int(optimizer.schedule_count(state)) == 4
  adam = [n for n in jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
          if isinstance(n, optax.ScaleByAdamState)]
  assert [int(n.count) for n in adam] == [1]  # one update taken: the bias correction did not skip ahead


def test_adamw_decays_matrices_not_norm_scales():
  config = stage.default_config()
  config.update({"lr": 0.1, "weight_decay": 0.5, "clip_norm": 0.0})
  params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
  # Zero gradients: Adam's own step is 0, so the update is the decoupled decay -lr·wd·p, on matrices only.
  tx = optimizer.make_optimizer(config, total_steps=10)
  zero = {"kernel": jnp.zeros((2, 2)), "scale": jnp.zeros((2,))}
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["scale"], np.zeros(2))


def test_stacked_norm_scales_and_biases_of_a_scanned_model_are_not_decayed():
  from leafe_jax import models

  config = stage.default_config()
  config.update({"lr": 1.0, "weight_decay": 0.1, "clip_norm": 0.0})
  model_config = models.ModelConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1,
                                    head_dim=8, d_ff=32, qkv_bias=True, scan_layers=True)
  params = models.init_params(model_config, jax.random.PRNGKey(0))
  tx = optimizer.make_optimizer(config, total_steps=10)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  layer = updates["layers"]
  assert params["layers"]["input_layernorm"]["scale"].shape == (2, 16)  # stacked: 2-D, yet a norm scale
  for leaf in (layer["input_layernorm"]["scale"], layer["post_attention_layernorm"]["scale"],
               layer["self_attn"]["q_proj"]["bias"], updates["norm"]["scale"]):
    assert not np.any(np.asarray(leaf))
  np.testing.assert_allclose(layer["mlp"]["up_proj"]["kernel"], -0.1 * params["layers"]["mlp"]["up_proj"]["kernel"],
                             rtol=1e-6)


def test_mfu_peak_table_and_cpu_is_not_applicable():
  assert metrics.peak_flops("TPU v5 lite") == 197e12
  assert metrics.peak_flops("TPU v5p") == 459e12
  assert metrics.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert metrics.peak_flops("cpu") is None
  line = metrics.progress_line(3, 10, {"loss": 1.25, "lr": 1e-6, "tokens_per_s": 1000.0})
  assert "MFU n/a" in line and "loss 1.2500" in line
  # A window of only the run's first step (compilation, a resume's data skip) reports no throughput.
  assert "tokens/s n/a MFU n/a" in metrics.progress_line(1, 10, {"loss": 1.25, "lr": 1e-6})


def test_flops_per_token_count_the_matmul_weights_the_head_where_it_runs_and_attention():
  # Hand count: 2 layers of 4 heads x 8, D 32, V 10; 1000 parameters in all.
  base = {"num_layers": 2, "num_heads": 4, "head_dim": 8, "vocab_size": 10, "d_model": 32}
  attention = 12 * 2 * 4 * 8 * 16
  untied = ml_collections.ConfigDict({**base, "tie_embeddings": False})
  # Untied: the input embedding (a lookup) is not a matmul; the head (320) runs at every position.
  assert metrics.train_flops_per_token(1000, untied, 16) == 6 * (1000 - 320) + attention
  assert metrics.train_flops_per_token(1000, untied, 16, logits_fraction=0.25) == 6 * (1000 - 640 + 80) + attention
  tied = ml_collections.ConfigDict({**base, "tie_embeddings": True})  # the table is the head: counted once
  assert metrics.train_flops_per_token(1000, tied, 16) == 6 * 1000 + attention


def test_kind_sums_reduce_to_per_kind_mean_loss_and_accuracy():
  sums = {"nll_sum_K": np.array([6.0, 0.0, 3.0]), "targets_K": np.array([3.0, 0.0, 1.0]),
          "correct_K": np.array([1.0, 0.0, 1.0])}
  out = metrics.reduce_kind_sums(sums, ("cf", "reh", "iwm"))
  assert out == {"cf/loss": 2.0, "cf/accuracy": 1 / 3, "cf/target_tokens": 3.0, "iwm/loss": 3.0,
                 "iwm/accuracy": 1.0, "iwm/target_tokens": 1.0}


@pytest.mark.parametrize(("shape", "devices", "want"), [((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 2), 8, (2, 2, 2)),
                                                        ((1, 2, 4), 8, (1, 2, 4))])
def test_mesh_shape_resolution(shape, devices, want):
  assert stage.resolve_mesh_shape(shape, devices) == want


def test_mesh_shape_that_does_not_fit_is_refused():
  with pytest.raises(ValueError, match="train.mesh"):
    stage.resolve_mesh_shape((3, 1, 1), 8)
