"""The two attention implementations against a numpy softmax attention, values and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leafe_jax import models
from leafe_jax.models import ModelConfig, attention

B, T, K, G, H = 3, 11, 2, 3, 8


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, T, K, G, H)).astype(np.float32)
  k = rng.normal(size=(B, T, K, H)).astype(np.float32)
  v = rng.normal(size=(B, T, K, H)).astype(np.float32)
  causal = np.tril(np.ones((T, T), bool))
  # Row 0: two packed segments then padding; row 1: left padding (fully masked queries); row 2: plain causal.
  seg0 = np.array([1] * 5 + [2] * 4 + [0] * 2)
  row0 = causal & (seg0[:, None] == seg0[None, :]) & (seg0[None, :] != 0)
  real1 = np.arange(T) >= 4
  row1 = causal & real1[None, :]
  dense_mask = np.stack([row0, row1, causal])
  segments = np.stack([seg0, np.ones(T, int), np.ones(T, int)]).astype(np.int32)
  mask = attention.causal_mask(jnp.asarray(np.stack([seg0 != 0, real1, np.ones(T, bool)])), jnp.asarray(segments))
  return q, k, v, mask, dense_mask


def test_the_factored_mask_is_the_causal_padding_and_segment_mask():
  *_, mask, dense_mask = _inputs()
  np.testing.assert_array_equal(np.asarray(mask.dense()), dense_mask)
  np.testing.assert_array_equal(np.asarray(mask.slice(3, 9, 7).dense()), dense_mask[:, 3:9, :7])
  slots_NxC, segments_NxBxC = mask.query_blocks(4)  # 11 queries: blocks of 4, 4 and 3 + one padded query
  last = np.asarray(mask.with_queries(slots_NxC[2], segments_NxBxC[2]).dense())
  np.testing.assert_array_equal(last[:, :3], dense_mask[:, 8:])
  assert not last[:, 3].any()  # the padded query sees nothing


def _numpy_attention(q, k, v, mask):
  """Direct loops over rows and heads, float64; fully masked queries average every key (uniform softmax)."""
  out = np.zeros(q.shape, np.float64)
  for b in range(B):
    for kh in range(K):
      for g in range(G):
        scores = q[b, :, kh, g].astype(np.float64) @ k[b, :, kh].astype(np.float64).T / np.sqrt(H)
        scores = np.where(mask[b], scores, -1e30)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out[b, :, kh, g] = probs @ v[b, :, kh]
  return out


@pytest.mark.parametrize("impl", ["dense", "rowwise"])
@pytest.mark.parametrize("block", [4, 11, 16])
def test_causal_attention_matches_numpy(impl, block):
  q, k, v, mask, dense_mask = _inputs()
  got = attention.causal_attention(impl, q, k, v, mask, block, jnp.float32)
  # A query that sees no key (padding) gets finite values that depend on the blocking: not compared.
  sees = dense_mask.any(-1)
  np.testing.assert_allclose(np.asarray(got)[sees], _numpy_attention(q, k, v, dense_mask)[sees], atol=1e-5)


@pytest.mark.parametrize("block", [3, 11])
def test_rowwise_gradients_equal_autodiff_of_dense(block):
  q, k, v, mask, _ = _inputs(1)
  cotangent = np.random.default_rng(2).normal(size=q.shape).astype(np.float32)

  def loss(impl):
    return lambda q, k, v: jnp.sum(attention.causal_attention(impl, q, k, v, mask, block, jnp.float32) * cotangent)

  want = jax.jit(jax.grad(loss("dense"), argnums=(0, 1, 2)))(q, k, v)
  got = jax.jit(jax.grad(loss("rowwise"), argnums=(0, 1, 2)))(q, k, v)
  for name, g, w in zip("qkv", got, want):
    assert g.shape == w.shape, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, err_msg=f"d{name}")


def test_rowwise_in_bfloat16_stays_close_to_float32():
  q, k, v, mask, dense_mask = _inputs(3)
  bf = lambda x: jnp.asarray(x, jnp.bfloat16)
  out = attention.causal_attention("rowwise", bf(q), bf(k), bf(v), mask, 4, jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  sees = dense_mask.any(-1)
  np.testing.assert_allclose(np.asarray(out, np.float32)[sees], _numpy_attention(q, k, v, dense_mask)[sees],
                             atol=5e-2)
  grads = jax.grad(lambda q: jnp.sum(attention.causal_attention("rowwise", q, bf(k), bf(v), mask, 4,
                                                                 jnp.bfloat16).astype(jnp.float32)))(bf(q))
  assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads.astype(jnp.float32))))


def test_dense_attention_over_a_cache_matches_numpy():
  q, k, v, mask, dense_mask = _inputs(4)
  # One query per row (decode) against all T slots of a head-major cache.
  got = attention.dense_attention(q[:, -1:], k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                                  mask.slice(T - 1, T, T), jnp.float32)
  np.testing.assert_allclose(np.asarray(got[:, 0]), _numpy_attention(q, k, v, dense_mask)[:, -1], atol=1e-5)


def test_auto_is_rowwise_on_cpu_and_unknown_implementations_are_refused():
  config = ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, d_ff=8)
  assert jax.default_backend() == "cpu" and config.resolved_attention_impl == "rowwise"
  with pytest.raises(ValueError, match="attention_impl 'flash'"):
    ModelConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, d_ff=8,
                attention_impl="flash")
  with pytest.raises(ValueError, match="not one of"):
    attention.causal_attention("flash", *_inputs()[:4], 4, jnp.float32)


def test_a_long_prefill_does_not_hold_the_whole_prompt_by_cache_score_matrix():
  """The sampler's prefill ran dense attention of every prompt token against every cache slot at once: float32
  scores (and probabilities) of [B, heads, T, S], quadratic in the prompt. The paper's explore configs prefill
  reflection prompts of up to 32k tokens into a 32k cache in-process: 4 GiB per head and layer, some 120 GB for a
  28-head 7B model, far beyond an accelerator. A prefill now holds one query block's scores at a time."""
  import jax.numpy as jnp

  config = models.ModelConfig(vocab_size=64, d_model=64, num_layers=1, num_heads=8, num_kv_heads=2, head_dim=8,
                              d_ff=64)
  model = models.Decoder(config)
  params = models.init_params(config, jax.random.PRNGKey(0))
  t, s = 2048, 4096
  prefill = jax.jit(lambda p, ids, cache: model.apply({"params": p}, ids, cache=cache,
                                                      logits_positions=jnp.full((1, 1), t - 1)))
  compiled = prefill.lower(params, jnp.zeros((1, t), jnp.int32), models.init_cache(config, 1, s)).compile()
  full_scores = config.num_heads * t * s * 4  # one float32 [heads, T, S] score matrix (the code held two)
  assert compiled.memory_analysis().temp_size_in_bytes < full_scores / 4


def test_a_prefill_in_query_blocks_equals_the_full_forward_pass_on_left_padded_prompts():
  import dataclasses

  import jax.numpy as jnp

  config = models.ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                              d_ff=64, attention_block=8)  # 21 prompt tokens: blocks of 8, 8 and 5 (padded)
  params = models.init_params(config, jax.random.PRNGKey(1))
  ids = np.random.RandomState(2).randint(1, 64, (2, 23))
  mask = np.ones((2, 23), np.int32)
  mask[1, :6] = 0

  @functools.partial(jax.jit, static_argnames="block")  # one program a call shape, not one per eager op
  def apply(ids, block, attention_mask=None, cache=None):
    model = models.Decoder(dataclasses.replace(config, attention_block=block))
    return model.apply({"params": params}, ids, attention_mask=attention_mask, cache=cache)

  full, _ = apply(jnp.asarray(ids), 8, attention_mask=jnp.asarray(mask))
  logits, cache = apply(jnp.asarray(ids[:, :21]), 8, attention_mask=jnp.asarray(mask[:, :21]),
                        cache=models.init_cache(config, 2, 32))
  for i in (21, 22):  # then two decode steps
    step, cache = apply(jnp.asarray(ids[:, i:i + 1]), 8, cache=cache)
    logits = jnp.concatenate([logits, step], axis=1)
  single, _ = apply(jnp.asarray(ids[:, :21]), 0, attention_mask=jnp.asarray(mask[:, :21]),
                    cache=models.init_cache(config, 2, 32))
  valid = mask.astype(bool)
  assert np.abs(np.asarray(logits) - np.asarray(full))[valid].max() <= 1e-5
  assert np.abs(np.asarray(logits[:, :21]) - np.asarray(single))[valid[:, :21]].max() <= 1e-5


def test_a_prefill_never_holds_the_whole_query_by_slot_mask():
  """The decoder built the bool mask [B, T, S] of every query against every cache slot and handed it to every
  layer: B·T·S bytes, 4 GiB for 16 prompts of 16k tokens into a 16k cache, next to score tiles of a few MB. The
  mask is now factored (attention.Mask) and each query block builds only its own tile."""
  config = models.ModelConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8,
                              d_ff=16, attention_block=16)
  model = models.Decoder(config)
  params = models.init_params(config, jax.random.PRNGKey(0))
  b, t, s = 16, 2048, 4096
  prefill = jax.jit(lambda p, ids, cache: model.apply({"params": p}, ids, cache=cache,
                                                      logits_positions=jnp.full((b, 1), t - 1)))
  compiled = prefill.lower(params, jnp.zeros((b, t), jnp.int32), models.init_cache(config, b, s)).compile()
  whole_mask = b * t * s  # bytes of one bool [B, T, S]
  assert compiled.memory_analysis().temp_size_in_bytes < whole_mask / 4
