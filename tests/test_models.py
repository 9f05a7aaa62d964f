"""Decoder numerics: parity with transformers (PyTorch), RoPE frequencies, KV cache, packing, scan, remat."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from leafe_jax import models
from leafe_jax.models import layers

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CASES = {
    "llama": (LlamaConfig, {}),
    "llama3_rope_tied": (LlamaConfig, {"tie_word_embeddings": True, "rope_scaling": LLAMA3_ROPE}),
    "qwen2": (Qwen2Config, {}),
    # head_dim 32 != hidden 64 / 4 heads: q/o projections are [128, 64], heads x head_dim != d_model.
    "qwen3": (Qwen3Config, {"head_dim": 32}),
    # attention_bias: biases on q, k, v AND o_proj in these two families (Qwen2 has q/k/v biases only).
    "llama_attention_bias": (LlamaConfig, {"attention_bias": True}),
    "qwen3_attention_bias": (Qwen3Config, {"attention_bias": True}),
}


def save_tiny_hf(tmp_path, case):
  """A random 2-layer transformers model of family `case`, saved to tmp_path; returns (torch model, dir).

  transformers initialises biases to 0 and RMSNorm weights to 1, which a swapped or dropped mapping of them
  would not change: they are refilled with distinct random values (norm weights around 1, biases around 0).
  """
  cls, extra = CASES[case]
  torch.manual_seed(0)
  hf_config = cls(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, **extra)
  model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").eval()
  generator = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith(".bias"):
        param.copy_(0.5 * torch.randn(param.shape, generator=generator))
      elif "norm" in name:
        param.copy_(1.0 + 0.5 * torch.randn(param.shape, generator=generator))
  path = str(tmp_path / case)
  model.save_pretrained(path)
  return model, path


def _left_padded_batch():
  ids = np.random.RandomState(0).randint(0, 128, (2, 7))
  mask = np.ones((2, 7), np.int64)
  mask[1, :3] = 0  # the shorter row is left-padded
  return ids, mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_hf_logits_match_pytorch_on_a_left_padded_batch(tmp_path, case):
  reference, path = save_tiny_hf(tmp_path, case)
  ids, mask = _left_padded_batch()
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  for scan in (False, True):
    model, params = models.from_hf(path, scan_layers=scan)
    assert model.config.family == reference.config.model_type
    logits, cache = jax.jit(model.apply)({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert cache is None
    err = np.abs(np.asarray(logits) - expected)[mask.astype(bool)].max()
    assert err <= 1e-4, (case, scan, err)


def test_llama3_inverse_frequencies_equal_transformers_bit_for_bit():
  scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}
  hf = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0, rope_scaling=scaling,
                   max_position_embeddings=131072)
  expected = LlamaRotaryEmbedding(hf).inv_freq.numpy()
  config = models.registry.family("llama").config_from_hf(hf.to_dict())
  got = layers.rope_inv_freq(config)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, expected)
  # The scaling changes something: low frequencies are divided by the factor.
  unscaled = layers.rope_inv_freq(dataclasses.replace(config, rope_scaling=None))
  assert got[-1] == pytest.approx(unscaled[-1] / 8.0) and got[0] == unscaled[0]


def _tiny_config(**overrides):
  return models.ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                            d_ff=64, **overrides)


@pytest.fixture(scope="module")
def tiny():
  """(config, model, params) of a random 2-layer decoder, initialised once per module."""
  config = _tiny_config()
  return config, models.Decoder(config), jax.jit(models.init_params, static_argnums=0)(config, jax.random.PRNGKey(0))


def test_kv_cache_decode_after_left_padded_prefill_equals_the_full_forward_pass(tiny):
  config, model, params = tiny
  ids = np.random.RandomState(1).randint(1, 64, (2, 9))
  mask = np.ones((2, 9), np.int32)
  mask[1, :3] = 0
  apply = jax.jit(lambda ids, mask, cache: model.apply({"params": params}, ids, attention_mask=mask, cache=cache))
  full, _ = apply(jnp.asarray(ids), jnp.asarray(mask), None)
  cache = models.init_cache(config, 2, 16)
  steps = []
  for start, stop in ((0, 5), (5, 7), (7, 8), (8, 9)):  # prefill, a 2-token chunk, then one token per step
    # The last step passes no mask: positions must still count valid slots, not the shared write index.
    step_mask = None if stop == 9 else jnp.asarray(mask[:, start:stop])
    logits, cache = apply(jnp.asarray(ids[:, start:stop]), step_mask, cache)
    steps.append(np.asarray(logits))
  assert int(cache.index) == 9
  np.testing.assert_array_equal(np.asarray(cache.valid)[:, :9], mask.astype(bool))
  assert not np.asarray(cache.valid)[:, 9:].any()
  incremental = np.concatenate(steps, axis=1)
  assert np.abs(incremental - np.asarray(full))[mask.astype(bool)].max() <= 1e-5


def test_logits_positions_give_those_rows_of_the_full_logits_and_the_same_cache(tiny):
  config, model, params = tiny
  ids = jnp.asarray(np.random.RandomState(5).randint(1, 64, (2, 6)))
  full, full_cache = jax.jit(model.apply)({"params": params}, ids, cache=models.init_cache(config, 2, 8))
  picked_BxN = jnp.asarray([[5, 0, 3], [2, 2, 5]], jnp.int32)
  some, some_cache = jax.jit(model.apply)({"params": params}, ids, cache=models.init_cache(config, 2, 8),
                                          logits_positions=picked_BxN)
  assert some.shape == (2, 3, config.vocab_size)
  for b in range(2):
    np.testing.assert_allclose(np.asarray(some[b]), np.asarray(full[b, np.asarray(picked_BxN[b])]), atol=1e-6)
  for a, b in zip(jax.tree.leaves(some_cache), jax.tree.leaves(full_cache)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("impl", ["dense", "rowwise"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_prefill_into_an_empty_cache_attending_only_its_tokens_gives_the_same_logits_cache_and_decode(
    tiny, impl, scan_layers):
  """empty_cache=True skips the cache's empty slots (and, causally, future keys): same logits, cache and decode."""
  config, _, params = tiny
  config = dataclasses.replace(config, attention_impl=impl, scan_layers=scan_layers)
  model = models.Decoder(config)
  params = _stack_layers(params, 2) if scan_layers else params
  ids = jnp.asarray(np.random.RandomState(7).randint(1, 64, (3, 6)))
  mask = jnp.asarray([[1] * 6, [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]], jnp.int32)  # left padding
  apply = jax.jit(model.apply, static_argnames="empty_cache")
  outs = {}
  for empty_cache in (False, True):
    logits, cache = apply({"params": params}, ids, attention_mask=mask, cache=models.init_cache(config, 3, 16),
                          empty_cache=empty_cache)
    step, _ = apply({"params": params}, ids[:, :1], cache=cache)  # one decode step reads what the prefill wrote
    outs[empty_cache] = (logits, cache, step)
  (logits, cache, step), (fast_logits, fast_cache, fast_step) = outs[False], outs[True]
  real = np.asarray(mask).astype(bool)
  np.testing.assert_allclose(np.asarray(fast_logits)[real], np.asarray(logits)[real], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(fast_cache.valid), np.asarray(cache.valid))
  # Keys and values of the real tokens; padding slots hold garbage either way and are never attended to.
  slot_ok = np.asarray(cache.valid)
  for a, b in zip(jax.tree.leaves((fast_cache.k, fast_cache.v)), jax.tree.leaves((cache.k, cache.v))):
    a, b = np.asarray(a), np.asarray(b)
    a, b = (np.moveaxis(x, -2, 1 if x.ndim == 4 else 2) for x in (a, b))  # [(L,) B, S, K, H]
    ok = slot_ok if a.ndim == 4 else np.broadcast_to(slot_ok, a.shape[:3])
    np.testing.assert_allclose(a[ok], b[ok], atol=1e-5)
  np.testing.assert_allclose(np.asarray(fast_step), np.asarray(step), atol=1e-5)
  assert int(fast_cache.index) == 6


def test_empty_cache_without_a_cache_is_refused(tiny):
  _, model, params = tiny
  with pytest.raises(ValueError, match="empty_cache=True needs the cache"):
    model.apply({"params": params}, jnp.ones((1, 2), jnp.int32), empty_cache=True)


def test_cache_repeat_rows_copies_each_row_n_times_in_place(tiny):
  config, model, params = tiny
  ids = jnp.asarray(np.random.RandomState(6).randint(1, 64, (2, 5)))
  _, cache = jax.jit(model.apply)({"params": params}, ids, cache=models.init_cache(config, 2, 8))
  repeated = cache.repeat_rows(3)
  for layer_k, rep_k in zip(cache.k, repeated.k):
    assert rep_k.shape == (6, *layer_k.shape[1:])
    np.testing.assert_array_equal(np.asarray(rep_k)[3:], np.repeat(np.asarray(layer_k)[1:], 3, axis=0))
  np.testing.assert_array_equal(np.asarray(repeated.valid)[:3], np.repeat(np.asarray(cache.valid)[:1], 3, 0))


def test_a_cache_of_the_other_layer_form_is_refused(tiny):
  config, model, params = tiny
  scanned_config = dataclasses.replace(config, scan_layers=True)
  with pytest.raises(ValueError, match="unrolled model .* per-layer KV cache"):
    model.apply({"params": params}, jnp.ones((1, 2), jnp.int32), cache=models.init_cache(scanned_config, 1, 4))


def test_packed_segments_equal_separate_sequences(tiny):
  _, model, params = tiny
  ids = np.random.RandomState(2).randint(1, 64, (1, 9))
  segments = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0]])
  positions = np.array([[0, 1, 2, 0, 1, 2, 3, 0, 0]])
  apply = jax.jit(model.apply)  # one program per shape, not op by op
  packed, _ = apply({"params": params}, jnp.asarray(ids), positions=jnp.asarray(positions),
                    segment_ids=jnp.asarray(segments))
  # Without explicit positions they are counted per segment.
  default, _ = apply({"params": params}, jnp.asarray(ids), segment_ids=jnp.asarray(segments))
  np.testing.assert_allclose(np.asarray(default)[0, :7], np.asarray(packed)[0, :7], atol=1e-6)
  # The same two sequences as separate rows; the first is right-padded, which causal attention never sees.
  separate_ids = np.stack([np.concatenate([ids[0, :3], [5]]), ids[0, 3:7]])
  separate, _ = apply({"params": params}, jnp.asarray(separate_ids))
  np.testing.assert_allclose(np.asarray(packed)[0, :3], np.asarray(separate)[0, :3], atol=1e-5)
  np.testing.assert_allclose(np.asarray(packed)[0, 3:7], np.asarray(separate)[1], atol=1e-5)


@pytest.mark.parametrize("impl", ["dense", "rowwise"])
@pytest.mark.parametrize("block", [4, 5, 16])
def test_blocked_causal_attention_equals_one_dense_block_with_gradients(tiny, block, impl):
  config, _, params = tiny
  ids = jnp.asarray(np.random.RandomState(3).randint(1, 64, (2, 13)))
  segments = jnp.asarray([[1] * 6 + [2] * 5 + [0] * 2, [1] * 13])
  whole = models.Decoder(dataclasses.replace(config, attention_block=0, attention_impl="dense"))
  blocked = models.Decoder(dataclasses.replace(config, attention_block=block, attention_impl=impl))

  real = segments != 0  # padding rows attend to nothing: their (finite) values are garbage either way

  def loss(model, p):
    logits, _ = model.apply({"params": p}, ids, segment_ids=segments)
    return jnp.sum(jnp.where(real, jax.nn.log_softmax(logits)[..., 7], 0.0)), logits

  grad = lambda model: jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))  # one program, not op by op
  (want_loss, want_logits), want_grads = grad(whole)(params)
  (got_loss, got_logits), got_grads = grad(blocked)(params)
  np.testing.assert_allclose(np.asarray(got_logits)[np.asarray(real)], np.asarray(want_logits)[np.asarray(real)],
                             atol=1e-5)
  np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def _stack_layers(params, num_layers):
  stacked = {k: v for k, v in params.items() if not k.startswith("layers_")}
  stacked["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(num_layers)])
  return stacked


def test_scan_layers_equals_unrolled_with_and_without_a_cache(tiny):
  config, model, params = tiny
  scanned = models.Decoder(dataclasses.replace(config, scan_layers=True))
  stacked = _stack_layers(params, 2)
  # The scanned init produces exactly this tree structure, with a leading `layers` axis.
  init_shapes = jax.eval_shape(lambda: models.init_params(scanned.config, jax.random.PRNGKey(0)))
  assert jax.tree.map(lambda x: x.shape, init_shapes) == jax.tree.map(lambda x: x.shape, stacked)
  ids = jnp.asarray(np.random.RandomState(3).randint(1, 64, (2, 6)))
  expected, _ = jax.jit(model.apply)({"params": params}, ids)
  got, _ = jax.jit(scanned.apply)({"params": stacked}, ids)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
  got, cache = jax.jit(scanned.apply)({"params": stacked}, ids, cache=models.init_cache(scanned.config, 2, 8))
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
  assert cache.k.shape == (2, 2, 2, 8, 8)  # [layers, B, kv_heads, S, head_dim]


def test_remat_policies_leave_loss_and_gradients_unchanged(tiny):
  config, _, params = tiny
  ids = jnp.asarray(np.random.RandomState(5).randint(1, 64, (2, 6)))

  def value_and_grads(policy, scan):
    model = models.Decoder(dataclasses.replace(config, remat_policy=policy, scan_layers=scan))

    def loss(p):
      logits, _ = model.apply({"params": p}, ids)
      return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(_stack_layers(params, 2) if scan else params)

  loss, grads = value_and_grads("none", False)
  expected = jax.tree.leaves((loss, _stack_layers(grads, 2)))
  for policy, scan in (("full", True), ("dots", False)):
    got = value_and_grads(policy, scan)
    if not scan:
      got = (got[0], _stack_layers(got[1], 2))
    for a, b in zip(jax.tree.leaves(got), expected):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_compute_dtype_and_param_dtype_are_separate():
  config = _tiny_config(dtype="bfloat16", param_dtype="float32")
  model = models.Decoder(config)
  params = jax.eval_shape(lambda: models.init_params(config, jax.random.PRNGKey(0)))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  logits, _ = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.ones((1, 4), jnp.int32)), params)
  assert logits.dtype == jnp.float32  # logits always leave the model in float32 for the loss / sampling
  cache = models.init_cache(config, 1, 4)
  assert all(k.dtype == jnp.bfloat16 for k in cache.k)


def test_bad_model_config_is_rejected_with_the_field_named(tiny):
  with pytest.raises(ValueError, match="num_kv_heads=3"):
    models.ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=4, num_kv_heads=3, head_dim=2, d_ff=8)
  with pytest.raises(ValueError, match="remat_policy 'some'"):
    _tiny_config(remat_policy="some")
  _, model, params = tiny
  with pytest.raises(ValueError, match="segment_ids"):
    model.apply({"params": params}, jnp.ones((1, 2), jnp.int32), segment_ids=jnp.ones((1, 2), jnp.int32),
                cache=models.init_cache(model.config, 1, 4))


def test_bf16_dots_round_once_after_a_float32_sum():
  # 4096 products of 1 and 2**-9: a bf16 running sum stalls at 0.5 + ... (8 mantissa bits); float32 gets 8.
  lhs = jnp.ones((1, 4096), jnp.bfloat16)
  rhs = jnp.full((4096, 1), 2.0**-9, jnp.bfloat16)
  dims = (((1,), (0,)), ((), ()))
  assert float(layers.dot_general_f32(lhs, rhs, dims)[0, 0]) == 8.0
  out = layers.dot_general_f32_accumulate(lhs, rhs, dims)
  assert out.dtype == jnp.bfloat16 and float(out[0, 0]) == 8.0


def test_bf16_cache_writes_and_embedding_rows_move_the_exact_bits():
  rng = np.random.RandomState(0)
  buffer = jnp.asarray(rng.randn(2, 3, 8, 4), jnp.bfloat16)
  update = jnp.asarray(rng.randn(2, 3, 1, 4), jnp.float32)  # written in the buffer's dtype
  got = layers.update_slice(buffer, update, (0, 0, 5, 0))
  expected = np.asarray(buffer, np.float32)
  expected[:, :, 5:6] = np.asarray(update.astype(jnp.bfloat16), np.float32)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), expected)
  table = jnp.asarray(rng.randn(10, 4), jnp.bfloat16)
  ids = jnp.asarray([[3, 0, 9]])
  expected_rows = np.asarray(table, np.float32)[np.asarray(ids)]
  rows = layers.take_rows(table, ids)
  assert rows.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(rows, np.float32), expected_rows)
  np.testing.assert_array_equal(layers.take_rows(table.astype(jnp.float32), ids), expected_rows)


def _export_config(**overrides):
  return models.ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                            d_ff=64, **overrides)


@pytest.mark.parametrize("overrides", [
    {"family": "qwen3"},  # qk_norm=False (the ModelConfig default): a Qwen3 checkpoint always has q/k norms
    {"family": "llama", "qk_norm": True},  # Llama has no q/k norms: transformers drops them
    {"family": "qwen2", "qkv_bias": True, "qk_norm": True},
])
def test_to_hf_refuses_a_config_its_family_checkpoint_cannot_express(tmp_path, overrides):
  """A `train.model` of family qwen3 (qk_norm defaults to False) used to export a checkpoint that transformers
  loaded with freshly initialised q/k norms (other logits) and that from_hf refused (missing tensors): the
  end of a training run produced an unusable model. Refused before anything is written, naming the field."""
  config = _export_config(**overrides)
  params = models.init_params(config, jax.random.PRNGKey(0))
  out = str(tmp_path / "hf")
  with pytest.raises(models.CheckpointError, match="qk_norm"):
    models.to_hf(models.Decoder(config), params, out)
  assert not os.path.exists(os.path.join(out, "model.safetensors"))


def test_to_hf_still_exports_what_its_family_expresses(tmp_path):
  config = _export_config(family="qwen3", qk_norm=True)
  params = models.init_params(config, jax.random.PRNGKey(0))
  models.to_hf(models.Decoder(config), params, str(tmp_path))
  model, reloaded = models.from_hf(str(tmp_path))
  assert model.config == config
  np.testing.assert_array_equal(np.asarray(reloaded["layers_0"]["self_attn"]["q_norm"]["scale"]),
                                np.asarray(params["layers_0"]["self_attn"]["q_norm"]["scale"]))
