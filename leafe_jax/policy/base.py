"""The Policy protocol (DESIGN.md §3 "Policy"): every client the explorer and evaluator call."""

from __future__ import annotations

import dataclasses
import hashlib
import numbers
from collections.abc import Sequence
from typing import Protocol, TypedDict, TypeVar, runtime_checkable

T = TypeVar("T", int, float)

# `Completion.finish_reason` of a prompt that does not fit the model's context with its token budget: nothing was
# generated. Clients return it (for each of the prompt's samples) instead of failing the whole batched call, so
# that one over-long prompt ends its own rollout or episode, counted, and not a run of hours.
PROMPT_TOO_LONG = "prompt_too_long"

# Prompt positions per prefill step of the in-process sampler (sampling/sampler.py): a prefill then holds the
# activations of rows x this many tokens, not rows x prompt (a 7B model's MLP: ~150 KB per token in bf16).
# 0 = the whole prompt at once.
DEFAULT_PREFILL_CHUNK = 1024


class Message(TypedDict):
  role: str  # "system" | "user" | "assistant"
  content: str


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sampled completion: its text, token ids and per-token log-probs (same length as token_ids)."""

  text: str
  token_ids: tuple[int, ...] = ()
  logprobs: tuple[float, ...] = ()
  finish_reason: str = "stop"  # "stop" (eos or stop string) | "length" | PROMPT_TOO_LONG (nothing generated)
  # The end-of-sequence token that ended the completion (not in token_ids), where the client knows it; a model
  # trained on the completion (RL) must also learn to emit it.
  stop_token_id: int | None = None


def per_prompt(value: T | Sequence[T], count: int, name: str, kind: type[T]) -> list[T]:
  """A sampling setting given once for all prompts, or once per prompt, as one value per prompt."""
  if isinstance(value, numbers.Number):
    return [kind(value)] * count
  values = [kind(v) for v in value]
  if len(values) != count:
    raise ValueError(f"generate: {name} has {len(values)} values for {count} prompts")
  return values


# A call's seed given once is spread over its prompts as seed * PROMPT_SEED_STRIDE + i: no two (call seed, prompt
# index) pairs share a prompt seed, also for consecutive call seeds (with seed + i, prompt i of one call had the
# seed of prompt i - 1 of the next, and a seeded server repeated its sample).
PROMPT_SEED_STRIDE = 1 << 20
_SEED_MODULUS = 2**63  # non-negative 63-bit seeds, as servers take


def prompt_seeds(seed: int | Sequence[int], count: int) -> list[int]:
  """One sampling seed per prompt: `seed` given once for the call (prompt i gets seed * PROMPT_SEED_STRIDE + i),
  or one per prompt (a prompt's samples then depend on its own seed only, not on the call's other prompts)."""
  if isinstance(seed, numbers.Integral):
    if count > PROMPT_SEED_STRIDE:
      raise ValueError(f"generate: at most {PROMPT_SEED_STRIDE} prompts per call with one seed, got {count}")
    return [(int(seed) * PROMPT_SEED_STRIDE + i) % _SEED_MODULUS for i in range(count)]
  seeds = [int(s) % _SEED_MODULUS for s in seed]
  if len(seeds) != count:
    raise ValueError(f"generate: seed has {len(seeds)} values for {count} prompts")
  return seeds


def derived_seed(*parts) -> int:
  """A 63-bit seed that is a function of `parts` only (reprs of ints and strings): a prompt's own seed, from what
  it is about (settings seed, task, step), so it samples alike whichever prompts share its call."""
  return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def stops_per_prompt(stop: str | Sequence[str] | Sequence[Sequence[str]], count: int) -> list[tuple[str, ...]]:
  """Stop strings given once for every prompt (a flat list, or one string) or as one list per prompt."""
  if isinstance(stop, str):
    return [(stop,)] * count
  items = list(stop)
  nested = [not isinstance(s, str) for s in items]
  if not any(nested):
    return [tuple(items)] * count
  if not all(nested) or len(items) != count:
    raise ValueError(f"generate: stop must be one list of strings, or one list per prompt ({count} lists); "
                     f"got {items!r}")
  return [tuple(s) for s in items]


@runtime_checkable
class Policy(Protocol):
  """Chat templating and tokenization happen once, inside the policy, with the model's tokenizer.

  `temperature`, `top_p` and `max_new_tokens` are one value for every prompt or a sequence with one per prompt:
  the explorer serves a tick's action and reflection prompts, whose settings differ, in ONE call. `stop` is one
  list of strings for every prompt or one list per prompt. `seed` is one seed for the call or one per prompt
  (`prompt_seeds`); with one per prompt a prompt samples alike whichever prompts share its call (the explorer's
  resume after a kill relies on it).
  A prompt that does not fit the model's context gets completions with finish_reason PROMPT_TOO_LONG (no text,
  no tokens); the other prompts of the call are served as usual.
  """

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
    """Returns, for each prompt, `n` completions."""
    ...
