"""Batched generation: one jitted prefill + `lax.while_loop` decode over an explicit, static-size KV cache.

Shapes are bucketed (batch rows, prompt length, cache length, output length), so calls with similar sizes reuse
one compiled program; the decode loop runs on device and stops when every row has finished. Prompts are
left-padded so that every row writes the same cache slot at each decode step.

Log-probs are those of the unmodified model distribution (log-softmax of the logits at temperature 1) for the
chosen tokens, whatever temperature / top-p / top-k shaped the sampling: what importance ratios and RL need.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax.models import init_cache

DEFAULT_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_OUTPUT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class Sample:
  token_ids: tuple[int, ...]  # generated tokens, eos excluded
  logprobs: tuple[float, ...]  # model log-prob of each generated token (temperature 1)
  text: str  # decoded tokens (stop string and what follows removed); "" without a tokenizer
  finish_reason: str  # "eos" | "stop" | "length"


def _bucket(value: int, buckets: Sequence[int], what: str) -> int:
  for b in buckets:
    if b >= value:
      return b
  raise ValueError(f"{what} {value} exceeds the largest bucket {buckets[-1]}")


def _filter_logits(logits_BxV, temperature, top_p, top_k: int):
  """Temperature, top-k (static) and top-p (traced) applied to logits; masked entries become -inf."""
  logits_BxV = logits_BxV / jnp.maximum(temperature, 1e-6)
  if top_k > 0:
    kth_B = jax.lax.top_k(logits_BxV, top_k)[0][:, -1]
    logits_BxV = jnp.where(logits_BxV < kth_B[:, None], -jnp.inf, logits_BxV)
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  # The smallest logit still inside the nucleus; the first token is always kept.
  kept = jnp.where(mass_before_BxV < top_p, sorted_BxV, jnp.inf)
  threshold_B = jnp.min(kept, axis=-1)
  return jnp.where(logits_BxV < threshold_B[:, None], -jnp.inf, logits_BxV)


class Sampler:
  """Generates from `model` with `params` (optionally sharded on `mesh`)."""

  def __init__(self, model, params, tokenizer=None, mesh=None, pad_id: int = 0, eos_ids: Sequence[int] = (),
               max_cache_len: int = 4096, prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
               batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
               output_buckets: Sequence[int] = DEFAULT_OUTPUT_BUCKETS):
    self.model = model
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.pad_id = int(pad_id)
    self.eos_ids = tuple(int(e) for e in eos_ids)
    self.max_cache_len = int(max_cache_len)
    self.prompt_buckets = tuple(prompt_buckets)
    self.batch_buckets = tuple(batch_buckets)
    self.output_buckets = tuple(output_buckets)
    self.num_traces = 0  # how many times the generate program was traced (compile-cache behaviour)
    if mesh is not None:
      from leafe_jax import parallel

      params = jax.device_put(params, parallel.param_shardings(model, mesh))
    self.params = params

  @functools.partial(jax.jit, static_argnames=("self", "cache_len", "out_len", "top_k"))
  def _generate(self, params, tokens_BxP, mask_BxP, rng, temperature, top_p, max_new, *, cache_len: int,
                out_len: int, top_k: int):
    self.num_traces += 1
    b = tokens_BxP.shape[0]
    eos_E = jnp.asarray(self.eos_ids or (-1,), jnp.int32)
    cache = init_cache(self.model.config, b, cache_len)
    logits_BxPxV, cache = self.model.apply({"params": params}, tokens_BxP, attention_mask=mask_BxP, cache=cache)

    def body(state):
      step, cache, logits_BxV, out_BxO, logp_BxO, done_B, rng = state
      rng, key = jax.random.split(rng)
      logp_all_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
      sampled_B = jax.random.categorical(key, _filter_logits(logits_BxV, temperature, top_p, top_k), axis=-1)
      greedy_B = jnp.argmax(logits_BxV, axis=-1)
      token_B = jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)
      token_B = jnp.where(done_B, self.pad_id, token_B)
      logp_B = jnp.take_along_axis(logp_all_BxV, token_B[:, None], axis=-1)[:, 0]
      out_BxO = out_BxO.at[:, step].set(token_B)
      logp_BxO = logp_BxO.at[:, step].set(jnp.where(done_B, 0.0, logp_B))
      done_B = done_B | jnp.isin(token_B, eos_E)
      logits_Bx1xV, cache = self.model.apply({"params": params}, token_B[:, None],
                                             attention_mask=jnp.ones((b, 1), jnp.int32), cache=cache)
      return step + 1, cache, logits_Bx1xV[:, 0], out_BxO, logp_BxO, done_B, rng

    def cond(state):
      step, *_, done_B, _ = state
      return (step < max_new) & ~jnp.all(done_B)

    init = (jnp.int32(0), cache, logits_BxPxV[:, -1], jnp.full((b, out_len), self.pad_id, jnp.int32),
            jnp.zeros((b, out_len), jnp.float32), jnp.zeros((b,), bool), rng)
    _, _, _, out_BxO, logp_BxO, _, _ = jax.lax.while_loop(cond, body, init)
    return out_BxO, logp_BxO

  def generate(self, prompt_ids: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int = 64,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop_strings: Sequence[str] = (),
               seed: int = 0) -> list[list[Sample]]:
    """`n` samples for each prompt (lists of token ids); same seed and shapes => same samples."""
    if not prompt_ids:
      return []
    if any(len(p) == 0 for p in prompt_ids):
      raise ValueError("generate: every prompt needs at least one token")
    longest = max(len(p) for p in prompt_ids)
    if longest + max_new_tokens > self.max_cache_len:
      raise ValueError(f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} = "
                       f"{longest + max_new_tokens} exceeds the cache length max_cache_len={self.max_cache_len}")
    rows = [list(p) for p in prompt_ids for _ in range(n)]
    batch = _bucket(len(rows), self.batch_buckets, "batch of rows")
    prompt_len = min(_bucket(longest, self.prompt_buckets, "prompt length"), self.max_cache_len - max_new_tokens)
    out_len = _bucket(max_new_tokens, self.output_buckets, "max_new_tokens")
    cache_len = min(_bucket(prompt_len + out_len, self.prompt_buckets, "cache length"), self.max_cache_len)
    cache_len = max(cache_len, prompt_len + max_new_tokens)
    tokens = np.full((batch, prompt_len), self.pad_id, np.int32)
    mask = np.zeros((batch, prompt_len), np.int32)
    for i, row in enumerate(rows):
      tokens[i, prompt_len - len(row):] = row
      mask[i, prompt_len - len(row):] = 1
    mask[len(rows):, -1] = 1  # padding rows: one dummy token so no row is fully masked
    tokens_in, mask_in = jnp.asarray(tokens), jnp.asarray(mask)
    if self.mesh is not None:
      from leafe_jax import parallel

      sharding = parallel.batch_sharding(self.mesh)
      if batch % np.prod([self.mesh.shape[a] for a in ("data", "fsdp")]) == 0:
        tokens_in, mask_in = jax.device_put(tokens_in, sharding), jax.device_put(mask_in, sharding)
    out, logp = self._generate(self.params, tokens_in, mask_in, jax.random.PRNGKey(seed),
                               jnp.float32(temperature), jnp.float32(top_p), jnp.int32(max_new_tokens),
                               cache_len=cache_len, out_len=out_len, top_k=int(top_k))
    out, logp = np.asarray(out)[: len(rows), :max_new_tokens], np.asarray(logp)[: len(rows), :max_new_tokens]
    samples = [self._finish(out[i], logp[i], stop_strings) for i in range(len(rows))]
    return [samples[i * n:(i + 1) * n] for i in range(len(prompt_ids))]

  def __hash__(self):  # the jitted method takes `self` as a static argument
    return id(self)

  def __eq__(self, other):
    return self is other

  def _decode(self, ids) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=False) if self.tokenizer is not None else ""

  def _finish(self, tokens: np.ndarray, logprobs: np.ndarray, stop_strings: Sequence[str]) -> Sample:
    ids = [int(t) for t in tokens]
    end, reason = len(ids), "length"
    for i, t in enumerate(ids):
      if t in self.eos_ids:
        end, reason = i, "eos"
        break
    ids, lps = ids[:end], [float(x) for x in logprobs[:end]]
    text = self._decode(ids)
    if stop_strings and self.tokenizer is not None:
      hits = [(text.find(s), s) for s in stop_strings if s and s in text]
      if hits:
        cut, _ = min(hits)
        # The shortest token prefix whose text reaches the stop string.
        k = next(k for k in range(1, len(ids) + 1) if any(s in self._decode(ids[:k]) for _, s in hits))
        ids, lps, text, reason = ids[:k], lps[:k], text[:cut], "stop"
    return Sample(tuple(ids), tuple(lps), text, reason)
