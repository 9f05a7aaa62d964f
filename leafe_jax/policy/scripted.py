"""ScriptedPolicy: a policy whose text is a function of the prompt (tests, benchmarks, debugging prompts)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from leafe_jax.policy.base import Completion, Message


class ScriptedPolicy:
  """Answers `respond(messages)` for every prompt; records each call's batch size; optional fixed latency."""

  def __init__(self, respond: Callable[[Sequence[Message]], str], latency_s: float = 0.0):
    self.respond = respond
    self.latency_s = latency_s
    self.calls: list[int] = []

  def generate(self, prompts, *, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, stop=(), seed=0):
    self.calls.append(len(prompts))
    if self.latency_s:
      time.sleep(self.latency_s)
    return [[Completion(text=self.respond(messages)) for _ in range(n)] for messages in prompts]
