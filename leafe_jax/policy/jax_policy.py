"""JaxPolicy: the in-process policy client, a HF directory served by the jitted sampler."""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Sequence

import jax.numpy as jnp
from absl import logging

from leafe_jax.policy.base import (
  DEFAULT_PREFILL_CHUNK,
  PROMPT_TOO_LONG,
  Completion,
  Message,
  per_prompt,
  prompt_seeds,
  stops_per_prompt,
)
from leafe_jax.policy.chat import encode_prompt

_FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def _eos_ids(hf_dir: str, tokenizer) -> tuple[int, ...]:
  """End-of-sequence ids: generation_config.json's eos_token_id (int or list) and the tokenizer's eos."""
  ids: list[int] = []
  generation_config = os.path.join(hf_dir, "generation_config.json")
  if os.path.exists(generation_config):
    with open(generation_config) as f:
      eos = json.load(f).get("eos_token_id")
    ids.extend([eos] if isinstance(eos, int) else list(eos or []))
  if tokenizer.eos_token_id is not None:
    ids.append(tokenizer.eos_token_id)
  if not ids:
    raise ValueError(f"{hf_dir}: neither generation_config.json nor the tokenizer defines an eos token")
  return tuple(dict.fromkeys(ids))


class JaxPolicy:
  """Policy over a local HF directory (config.json, safetensors, tokenizer files).

  Tokenization and chat templating happen here, once; the sampler sees token ids only.
  """

  def __init__(self, hf_dir: str, *, mesh=None, dtype=jnp.float32, max_cache_len: int = 4096, model=None,
               params=None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
    """Loads `hf_dir`; or, with `model` and `params` (already placed on `mesh`), serves those and reads only
    the tokenizer and eos ids from `hf_dir` (an RL loop's current policy)."""
    # Imported here so that explorer hosts using a remote policy never import the model code.
    from transformers import AutoTokenizer

    from leafe_jax.models import from_hf
    from leafe_jax.sampling import Sampler

    self.hf_dir = hf_dir
    self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    if model is None:
      model, params = from_hf(hf_dir, dtype=dtype, mesh=mesh)
    self.sampler = Sampler(
        model,
        params,
        tokenizer=self.tokenizer,
        mesh=mesh,
        pad_id=self.pad_id,
        eos_ids=_eos_ids(hf_dir, self.tokenizer),
        max_cache_len=max_cache_len,
        prefill_chunk=prefill_chunk,
    )

  @property
  def pad_id(self) -> int:
    pad_id = self.tokenizer.pad_token_id
    return pad_id if pad_id is not None else (self.tokenizer.eos_token_id or 0)

  def update_params(self, params) -> None:
    """Serve `params` from now on (same model, same placement): the RL loop's policy after an update."""
    self.sampler.params = params

  def generate(
      self,
      prompts: Sequence[Sequence[Message]],
      *,
      n: int = 1,
      temperature: float | Sequence[float] = 1.0,
      top_p: float | Sequence[float] = 1.0,
      max_new_tokens: int | Sequence[int] = 256,
      stop: Sequence[str] | Sequence[Sequence[str]] = (),
      seed: int | Sequence[int] = 0,
  ) -> list[list[Completion]]:
    if not prompts:
      return []
    prompt_ids = [encode_prompt(self.tokenizer, messages) for messages in prompts]
    count = len(prompt_ids)
    budgets = per_prompt(max_new_tokens, count, "max_new_tokens", int)
    limit = self.sampler.max_cache_len
    fits = []  # the prompts served; the others are answered PROMPT_TOO_LONG
    for i, (ids, new) in enumerate(zip(prompt_ids, budgets)):
      if len(ids) + new <= limit:
        fits.append(i)
      else:
        logging.warning("policy: prompt %d of %d tokens + max_new_tokens=%d exceeds the cache length %d; "
                        "answered %s", i, len(ids), new, limit, PROMPT_TOO_LONG)
    pick = lambda values: values if isinstance(values, numbers.Number) else [values[i] for i in fits]
    stops = stops_per_prompt(stop, count)
    seeds = prompt_seeds(seed, count)  # of every prompt: a prompt too long does not move the others' seeds
    samples = self.sampler.generate(
        [prompt_ids[i] for i in fits],
        n=n,
        max_new_tokens=[budgets[i] for i in fits],
        temperature=pick(temperature),
        top_p=pick(top_p),
        stop_strings=[stops[i] for i in fits],
        seed=[seeds[i] for i in fits],
    ) if fits else []
    too_long = [Completion(text="", finish_reason=PROMPT_TOO_LONG)] * n
    served = dict(zip(fits, samples))
    return [
        [
            Completion(
                text=s.text,
                token_ids=tuple(s.token_ids),
                logprobs=tuple(s.logprobs),
                finish_reason=_FINISH_REASONS.get(s.finish_reason, s.finish_reason),
                stop_token_id=s.eos_id,
            )
            for s in served[i]
        ] if i in served else list(too_long)
        for i in range(count)
    ]
