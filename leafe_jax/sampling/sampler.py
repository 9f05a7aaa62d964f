"""Batched generation: one jitted prefill (in chunks of `prefill_chunk` positions) + `lax.while_loop` decode over an
explicit, static-size KV cache.

Shapes are bucketed (prompt rows, prompt length, cache length, output length), so calls with similar sizes reuse
one compiled program. A call whose prompts differ widely in length (an explorer tick's short action prompts and
long reflection prompts) runs as one program per length group, each padded to at most `max_padding_factor` x
the token slots its rows need alone. The decode loop runs on device and stops when every row has finished (no
per-token host sync). Prompts are left-padded so that every row writes the same cache slot at each decode step.
With `n > 1` each prompt is prefilled once and its cache rows are repeated `n` times before decoding.

Log-probs are those of the unmodified model distribution (log-softmax of the logits at temperature 1) for the
chosen tokens, whatever temperature / top-p / top-k shaped the sampling: what importance ratios and RL need.

Stop strings (one list for every prompt, or one list per prompt) are applied on the host after generation (they
need detokenization): the sample is cut at the shortest token prefix whose text contains a stop string, and the
text ends just before the stop string.
Generation of that row is not stopped early on device, so a stop string costs decode steps, not correctness.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from leafe_jax import parallel
from leafe_jax.models import init_cache
from leafe_jax.parallel import distributed
from leafe_jax.policy.base import DEFAULT_PREFILL_CHUNK, per_prompt, prompt_seeds, stops_per_prompt

DEFAULT_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_OUTPUT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# A call's prompts run as one program while padding them to the longest costs at most this many times the token
# slots (KV cache, prefill) they need alone; beyond it they split into groups by length (one program each).
# On an accelerator a decode step of a few rows costs about what a full batch's does, so fewer, fuller programs
# pay. On CPU a program's time grows with its padded rows x slots, so a second program for the few rows that need
# the next prompt bucket is cheap: the demo's eval ticks (1,024 prompts of 34-75 tokens) took 2.3 s as one program
# of 128-token prompts and 1.2 s as two (64-token prompts, then 16 rows of 128).
DEFAULT_MAX_PADDING_FACTOR = 2.0
MAX_PADDING_FACTOR_BY_BACKEND = {"cpu": 1.5}


def default_max_padding_factor() -> float:
  """`max_padding_factor` for the backend jax runs on now."""
  return MAX_PADDING_FACTOR_BY_BACKEND.get(jax.default_backend(), DEFAULT_MAX_PADDING_FACTOR)
_MIN_TEMPERATURE = 1e-6  # guards the division when a tiny positive temperature is asked for

_traces = {"generate": 0}  # how many times the generate program was traced (compile-cache behaviour)


def trace_count() -> int:
  """Number of times the generation program has been traced (= compiled) in this process."""
  return _traces["generate"]


@dataclasses.dataclass(frozen=True)
class Sample:
  token_ids: tuple[int, ...]  # generated tokens, eos excluded
  logprobs: tuple[float, ...]  # model log-prob of each generated token (temperature 1)
  text: str  # decoded tokens (stop string and what follows removed); "" without a tokenizer
  finish_reason: str  # "eos" | "stop" | "length"
  eos_id: int | None = None  # the eos token that ended the sample (not in token_ids), when finish_reason is "eos"


def _bucket(value: int, buckets: Sequence[int], cap: int | None = None) -> int:
  """The smallest bucket >= value, at most `cap`; `cap` (or an error) when every bucket is too small."""
  fits = [b for b in sorted(buckets) if b >= value]
  if cap is not None:
    return min(fits[0], cap) if fits else cap
  if not fits:
    raise ValueError(f"{value} exceeds the largest bucket {max(buckets)}; pass larger buckets to Sampler")
  return fits[0]


def _power_of_two(value: int) -> int:
  return 1 << max(value - 1, 0).bit_length()


def _first_max_index(logits_BxV, max_B):
  """argmax (first index of the maximum) given the maximum: two plain reductions instead of XLA's variadic
  (value, index) reduce, which costs XLA:CPU more than the whole softmax over the vocabulary."""
  vocab = logits_BxV.shape[-1]
  index_BxV = jnp.where(logits_BxV == max_B[:, None], jnp.arange(vocab, dtype=jnp.int32), vocab)
  return jnp.minimum(jnp.min(index_BxV, axis=-1), vocab - 1)  # a row of NaNs has no maximum: last id


def _choose(logits_BxV, max_B, keys_B, temperature_B, top_p_B, *, greedy: bool, top_k: int, nucleus: bool):
  """The next token per row: argmax, or a draw with the row's own key from its temperature / top-k / top-p shaped
  distribution.

  `greedy` (static): every row is greedy. Otherwise rows with temperature <= 0 still take the argmax, and rows
  with top_p >= 1 keep their whole distribution.
  """
  argmax_B = _first_max_index(logits_BxV, max_B)
  if greedy:
    return argmax_B
  logits_BxV = logits_BxV / jnp.maximum(temperature_B, _MIN_TEMPERATURE)[:, None]
  top_k = min(top_k, logits_BxV.shape[-1])  # as transformers: a k above the vocabulary keeps every token
  if top_k > 0:
    # top_k values come sorted (descending): the nucleus below needs only them, not a full-vocab sort.
    sorted_BxK = jax.lax.top_k(logits_BxV, top_k)[0]
    logits_BxV = jnp.where(logits_BxV < sorted_BxK[:, -1:], -jnp.inf, logits_BxV)
  if nucleus:
    if top_k <= 0:
      sorted_BxK = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxK = jax.nn.softmax(sorted_BxK, axis=-1)
    mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
    # The smallest logit still inside the nucleus; the most likely token is always kept (also at top_p = 0,
    # where no mass is below the threshold: transformers keeps it too).
    inside_BxK = (mass_before_BxK < top_p_B[:, None]) | (jnp.arange(sorted_BxK.shape[-1]) == 0)
    threshold_B = jnp.min(jnp.where(inside_BxK, sorted_BxK, jnp.inf), axis=-1)
    # A row with top_p >= 1 keeps every token (rounding can push the cumulated mass of its tail to 1).
    threshold_B = jnp.where(top_p_B >= 1.0, -jnp.inf, threshold_B)
    logits_BxV = jnp.where(logits_BxV < threshold_B[:, None], -jnp.inf, logits_BxV)
  sampled_B = jax.vmap(jax.random.categorical)(keys_B, logits_BxV).astype(jnp.int32)
  return jnp.where(temperature_B <= 0.0, argmax_B, sampled_B)


def _prefill(params, model, tokens_BxP, mask_BxP, cache, chunk: int):
  """Runs the prompts into `cache` in chunks of `chunk` positions (0: at once); returns the logits at the last
  position [B, V] and the cache. A remainder chunk goes first, the full chunks run in one `lax.scan` (one copy of
  the model in the program however long the prompt)."""
  b, p = tokens_BxP.shape

  def run(cache, tokens_BxC, mask_BxC, empty_cache=False):
    last_Bx1 = jnp.full((b, 1), tokens_BxC.shape[1] - 1, jnp.int32)
    logits_Bx1xV, cache = model.apply({"params": params}, tokens_BxC, attention_mask=mask_BxC, cache=cache,
                                      logits_positions=last_Bx1, empty_cache=empty_cache)
    return logits_Bx1xV[:, 0], cache

  # The first chunk goes into the empty cache: its tokens attend to each other only (Decoder `empty_cache`).
  if not chunk or p <= chunk:
    return run(cache, tokens_BxP, mask_BxP, empty_cache=True)
  first = p % chunk or chunk
  logits_BxV, cache = run(cache, tokens_BxP[:, :first], mask_BxP[:, :first], empty_cache=True)
  n = (p - first) // chunk
  chunks = lambda x_BxP: x_BxP[:, first:].reshape(b, n, chunk).swapaxes(0, 1)

  def body(carry, tokens_and_mask):
    logits_BxV, cache = run(carry[1], *tokens_and_mask)
    return (logits_BxV, cache), None

  (logits_BxV, cache), _ = jax.lax.scan(body, (logits_BxV, cache), (chunks(tokens_BxP), chunks(mask_BxP)))
  return logits_BxV, cache


@functools.partial(jax.jit, static_argnames=("model", "pad_id", "eos_ids", "cache_len", "out_len", "n", "greedy",
                                             "top_k", "nucleus", "prefill_chunk"))
def _generate(params, tokens_BxP, mask_BxP, keys_B, temperature_B, top_p_B, max_new_B, *, model, pad_id: int,
              eos_ids: tuple[int, ...], cache_len: int, out_len: int, n: int, greedy: bool, top_k: int,
              nucleus: bool, prefill_chunk: int):
  """Prefill B prompts once, repeat each row n times, decode up to `max_new_B` tokens for the B*n rows.

  Sampling settings and PRNG keys are per prompt ([B] arrays, repeated n times with the rows; sample j of a
  prompt draws with its key folded with j, then with the step): a row's draws depend on its own key only. A row
  past its own `max_new_B` is done (pad tokens, log-prob 0), and the loop ends when every row is.
  """
  _traces["generate"] += 1
  choose = functools.partial(_choose, greedy=greedy, top_k=top_k, nucleus=nucleus)
  eos_E = jnp.asarray(eos_ids or (-1,), jnp.int32)
  cache = init_cache(model.config, tokens_BxP.shape[0], cache_len)
  logits_BxV, cache = _prefill(params, model, tokens_BxP, mask_BxP, cache, prefill_chunk)
  if n > 1:  # sample rows of prompt i are rows i*n .. i*n+n-1
    cache = cache.repeat_rows(n)
    logits_BxV = jnp.repeat(logits_BxV, n, axis=0)
  temperature_R, top_p_R, max_new_R = (jnp.repeat(x, n, axis=0) for x in (temperature_B, top_p_B, max_new_B))
  rows = logits_BxV.shape[0]
  keys_R = jax.vmap(jax.random.fold_in)(jnp.repeat(keys_B, n, axis=0), jnp.tile(jnp.arange(n), keys_B.shape[0]))
  ones_Rx1 = jnp.ones((rows, 1), jnp.int32)

  def emit(step, logits_RxV, out_RxO, logp_RxO, done_R):
    max_R = jnp.max(logits_RxV, axis=-1)  # shared by argmax and the log-normaliser
    step_keys_R = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_R, step)
    token_R = choose(logits_RxV, max_R, step_keys_R, temperature_R, top_p_R)
    token_R = jnp.where(done_R, pad_id, token_R)
    log_norm_R = max_R + jnp.log(jnp.sum(jnp.exp(logits_RxV - max_R[:, None]), axis=-1))
    logp_R = jnp.take_along_axis(logits_RxV, token_R[:, None], axis=-1)[:, 0] - log_norm_R
    out_RxO = jax.lax.dynamic_update_slice(out_RxO, token_R[:, None], (0, step))
    logp_RxO = jax.lax.dynamic_update_slice(logp_RxO, jnp.where(done_R, 0.0, logp_R)[:, None], (0, step))
    return token_R, out_RxO, logp_RxO, done_R | jnp.isin(token_R, eos_E) | (step + 1 >= max_new_R)

  out_RxO = jnp.full((rows, out_len), pad_id, jnp.int32)
  logp_RxO = jnp.zeros((rows, out_len), jnp.float32)
  token_R, out_RxO, logp_RxO, done_R = emit(0, logits_BxV, out_RxO, logp_RxO, jnp.zeros((rows,), bool))

  def body(state):
    step, cache, token_R, out_RxO, logp_RxO, done_R = state
    logits_Rx1xV, cache = model.apply({"params": params}, token_R[:, None], attention_mask=ones_Rx1, cache=cache)
    token_R, out_RxO, logp_RxO, done_R = emit(step, logits_Rx1xV[:, 0], out_RxO, logp_RxO, done_R)
    return step + 1, cache, token_R, out_RxO, logp_RxO, done_R

  def cond(state):
    step, *_, done_R = state
    return ~jnp.all(done_R)  # a row is done at its own max_new, so this also bounds the loop

  state = (jnp.int32(1), cache, token_R, out_RxO, logp_RxO, done_R)
  _, _, _, out_RxO, logp_RxO, _ = jax.lax.while_loop(cond, body, state)
  return out_RxO, logp_RxO


@jax.jit
def _prompt_keys(seed_hi_B, seed_lo_B):
  """The PRNG keys of 64-bit prompt seeds given as their high and low 32 bits (`PRNGKey` alone keeps a seed's low
  32 bits without x64, so seeds 2^32 apart would sample alike)."""
  return jax.vmap(lambda hi, lo: jax.random.fold_in(jax.random.PRNGKey(lo), hi))(seed_hi_B, seed_lo_B)


def prompt_keys(seeds: Sequence[int]) -> jax.Array:
  """[B] PRNG keys of per-prompt seeds (non-negative, up to 64 bits)."""
  seeds_B = np.asarray([int(x) % 2**64 for x in seeds], np.uint64)
  return _prompt_keys((seeds_B >> np.uint64(32)).astype(np.uint32), (seeds_B & np.uint64(2**32 - 1)).astype(np.uint32))


class Sampler:
  """Generates from `model` with `params` (sharded on `mesh` when given: params by their logical axes, rows over
  the data axes). Compiled programs are shared by every Sampler of an equal model in the process.

  On a mesh that spans several processes (jax.distributed), every process calls `generate` with the same
  prompts and settings and gets all the samples back (replicated host work, as the GRPO stage does on a pod);
  a call whose prompts differ between processes raises `distributed.ProcessesDisagreeError` on all of them.
  """

  def __init__(self, model, params, tokenizer=None, mesh=None, pad_id: int = 0, eos_ids: Sequence[int] = (),
               max_cache_len: int = 4096, prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
               batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
               output_buckets: Sequence[int] = DEFAULT_OUTPUT_BUCKETS,
               max_padding_factor: float | None = None,
               prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
    if prefill_chunk < 0:
      raise ValueError(f"Sampler: prefill_chunk must be >= 0 (0 = the whole prompt at once), got {prefill_chunk}")
    self.model = model
    self.prefill_chunk = int(prefill_chunk)
    # None: the backend's default (default_max_padding_factor).
    self.max_padding_factor = float(default_max_padding_factor() if max_padding_factor is None
                                    else max_padding_factor)
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.pad_id = int(pad_id)
    self.eos_ids = tuple(int(e) for e in eos_ids)
    self.max_cache_len = int(max_cache_len)
    self.prompt_buckets = tuple(prompt_buckets)
    self.batch_buckets = tuple(batch_buckets)
    self.output_buckets = tuple(output_buckets)
    if mesh is not None:
      params = jax.device_put(params, parallel.param_shardings(model, mesh))
    self.params = params

  def generate(self, prompt_ids: Sequence[Sequence[int]], *, n: int = 1,
               max_new_tokens: int | Sequence[int] = 64, temperature: float | Sequence[float] = 1.0,
               top_p: float | Sequence[float] = 1.0, top_k: int = 0,
               stop_strings: Sequence[str] | Sequence[Sequence[str]] = (),
               seed: int | Sequence[int] = 0) -> list[list[Sample]]:
    """`n` samples for each prompt (lists of token ids); temperature 0 is greedy; same seed => same samples.

    `seed`: one for the call, or one per prompt (`policy.base.prompt_seeds`); a prompt draws from its own seed's
    key whatever else is in the call (up to float rounding of the batch it is padded into).

    `max_new_tokens`, `temperature` and `top_p` are one value for every prompt or one per prompt (an explorer
    tick serves action and reflection prompts, with their own settings, in one call); `stop_strings` likewise
    is one list of strings for every prompt or one list per prompt.
    """
    if not prompt_ids:
      return []
    if any(len(p) == 0 for p in prompt_ids):
      raise ValueError("generate: every prompt needs at least one token")
    count = len(prompt_ids)
    max_new = per_prompt(max_new_tokens, count, "max_new_tokens", int)
    temperatures = per_prompt(temperature, count, "temperature", float)
    top_ps = per_prompt(top_p, count, "top_p", float)
    stops = stops_per_prompt(stop_strings, count)
    seeds = prompt_seeds(seed, count)
    if n < 1 or min(max_new) < 1:
      raise ValueError(f"generate: n={n} and max_new_tokens={min(max_new)} must both be >= 1")
    for i, (prompt, new) in enumerate(zip(prompt_ids, max_new)):
      if len(prompt) + new > self.max_cache_len:
        raise ValueError(f"prompt {i} of {len(prompt)} tokens + max_new_tokens={new} = {len(prompt) + new} "
                         f"exceeds the cache length max_cache_len={self.max_cache_len}")
    def request_digest() -> str:  # what every process of a multi-process mesh must ask alike (class docstring)
      request = ([tuple(p) for p in prompt_ids], max_new, temperatures, top_ps, stops, n, top_k, seeds)
      return hashlib.sha256(repr(request).encode()).hexdigest()

    distributed.check_processes_agree(request_digest, "Sampler.generate")
    samples: list[list[Sample]] = [[] for _ in prompt_ids]
    for rows in self._length_groups([len(p) for p in prompt_ids], max_new):
      group = self._generate_group([prompt_ids[i] for i in rows], [max_new[i] for i in rows],
                                   [temperatures[i] for i in rows], [top_ps[i] for i in rows], n, top_k,
                                   [stops[i] for i in rows], [seeds[i] for i in rows])
      for i, row_samples in zip(rows, group):
        samples[i] = row_samples
    return samples

  def _bucketed(self, prompt_len: int, max_new: int) -> tuple[int, int]:
    """(prompt length, output length) of the program that serves this longest prompt and largest budget."""
    return (_bucket(prompt_len, self.prompt_buckets, cap=self.max_cache_len - max_new),
            _bucket(max_new, self.output_buckets, cap=_power_of_two(max_new)))

  def _slots(self, prompt_len: int, max_new: int) -> int:
    """Token slots (cache positions) a row occupies in a program of these bucketed lengths."""
    return sum(self._bucketed(prompt_len, max_new))

  def _length_groups(self, lengths: Sequence[int], max_new: Sequence[int]) -> list[list[int]]:
    """Prompt indices in groups that each run as one program: rows sorted by length join a group while its
    padded token slots stay within `max_padding_factor` x the slots its rows would take alone. Short action
    prompts are not padded to (and do not hold KV cache for) a long reflection prompt of the same call.

    A group's longest prompt + largest budget must fit in the cache (every row of a program writes the same
    slots), so a row that would push its group past `max_cache_len` starts a new group."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], max_new[i]))
    groups: list[list[int]] = []
    own = most_new = 0  # the current group's rows' own slots, summed, and its largest token budget
    for i in order:
      alone = self._slots(lengths[i], max_new[i])
      fits = lengths[i] + max(most_new, max_new[i]) <= self.max_cache_len
      if groups and fits:  # rows come sorted by length: this one is the group's longest
        padded = (len(groups[-1]) + 1) * self._slots(lengths[i], max(most_new, max_new[i]))
        if padded <= self.max_padding_factor * (own + alone):
          groups[-1].append(i)
          own, most_new = own + alone, max(most_new, max_new[i])
          continue
      groups.append([i])
      own, most_new = alone, max_new[i]
    return [sorted(g) for g in groups]

  def _generate_group(self, prompt_ids, max_new, temperatures, top_ps, n, top_k, stops,
                      seeds) -> list[list[Sample]]:
    """One compiled program over these prompts (padded to the group's longest prompt and largest budget)."""
    count, longest, most_new = len(prompt_ids), max(len(p) for p in prompt_ids), max(max_new)
    batch = _bucket(count, self.batch_buckets)
    prompt_len, out_len = self._bucketed(longest, most_new)
    # The cache holds prompt + output: a power of two when it fits, else exactly max_cache_len.
    cache_len = max(min(_power_of_two(prompt_len + out_len), self.max_cache_len), prompt_len + most_new)
    tokens = np.full((batch, prompt_len), self.pad_id, np.int32)
    mask = np.zeros((batch, prompt_len), np.int32)
    for i, row in enumerate(prompt_ids):
      tokens[i, prompt_len - len(row):] = row
      mask[i, prompt_len - len(row):] = 1
    mask[count:, -1] = 1  # padding rows: one dummy token so no row is fully masked
    # Padding rows: one greedy token each, so they never keep the decode loop running.
    pad = batch - count
    temperature_B = np.asarray(list(temperatures) + [0.0] * pad, np.float32)
    top_p_B = np.asarray(list(top_ps) + [1.0] * pad, np.float32)
    max_new_B = np.asarray(list(max_new) + [1] * pad, np.int32)
    keys_B = prompt_keys(list(seeds) + [0] * pad)
    if self.mesh is None:
      tokens_in, mask_in = jnp.asarray(tokens), jnp.asarray(mask)
    else:
      sharding = parallel.batch_sharding(self.mesh)
      if batch % parallel.batch_shards(self.mesh):  # too few rows to split: every device gets all of them
        sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      tokens_in, mask_in = (distributed.global_from_host(x, sharding) for x in (tokens, mask))
    greedy = max(temperatures) <= 0.0
    out, logp = _generate(self.params, tokens_in, mask_in, keys_B, temperature_B, top_p_B,
                          max_new_B, model=self.model, pad_id=self.pad_id, eos_ids=self.eos_ids,
                          cache_len=cache_len, out_len=out_len, n=int(n), greedy=greedy,
                          top_k=0 if greedy else int(top_k), nucleus=(not greedy) and min(top_ps) < 1.0,
                          prefill_chunk=self.prefill_chunk)
    out, logp = distributed.to_host(out), distributed.to_host(logp)  # rows may sit on other processes' devices
    samples = [self._finish(out[i, :max_new[i // n]], logp[i, :max_new[i // n]], stops[i // n])
               for i in range(count * n)]
    return [samples[i * n:(i + 1) * n] for i in range(count)]

  def _decode(self, ids) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=False) if self.tokenizer is not None else ""

  def _finish(self, tokens: np.ndarray, logprobs: np.ndarray, stop_strings: Sequence[str]) -> Sample:
    ids = [int(t) for t in tokens]
    end, reason, eos_id = len(ids), "length", None
    for i, t in enumerate(ids):
      if t in self.eos_ids:
        end, reason, eos_id = i, "eos", t
        break
    ids, lps = ids[:end], [float(x) for x in logprobs[:end]]
    text = self._decode(ids)
    if stop_strings and self.tokenizer is not None:
      hits = [s for s in stop_strings if s and s in text]
      if hits:
        # As a streaming server stops: at the shortest token prefix whose text completes a stop string; the
        # text ends before the earliest stop string in that prefix's text.
        k = next(k for k in range(1, len(ids) + 1) if any(s in self._decode(ids[:k]) for s in hits))
        prefix = self._decode(ids[:k])
        cut = min(prefix.find(s) for s in hits if s in prefix)
        ids, lps, text, reason, eos_id = ids[:k], lps[:k], prefix[:cut], "stop", None
    return Sample(tuple(ids), tuple(lps), text, reason, eos_id)
