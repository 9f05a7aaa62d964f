"""The Policy protocol (DESIGN.md §3 "Policy"): every client the explorer and evaluator call."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, TypedDict, runtime_checkable


class Message(TypedDict):
  role: str  # "system" | "user" | "assistant"
  content: str


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sampled completion: its text, token ids and per-token log-probs (same length as token_ids)."""

  text: str
  token_ids: tuple[int, ...] = ()
  logprobs: tuple[float, ...] = ()
  finish_reason: str = "stop"  # "stop" (eos or stop string) | "length"
  # The end-of-sequence token that ended the completion (not in token_ids), where the client knows it; a model
  # trained on the completion (RL) must also learn to emit it.
  stop_token_id: int | None = None


@runtime_checkable
class Policy(Protocol):
  """Chat templating and tokenization happen once, inside the policy, with the model's tokenizer."""

  def generate(
      self,
      prompts: Sequence[Sequence[Message]],
      *,
      n: int = 1,
      temperature: float = 1.0,
      top_p: float = 1.0,
      max_new_tokens: int = 256,
      stop: Sequence[str] = (),
      seed: int = 0,
  ) -> list[list[Completion]]:
    """Returns, for each prompt, `n` completions."""
    ...
