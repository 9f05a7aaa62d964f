"""OpenAIPolicy: a client of an OpenAI-compatible chat-completions server (vLLM, SGLang, TGI) for scale.

Uses only the standard library, so explorer hosts need no extra package. Requests for different prompts run
concurrently in a thread pool; each asks for `n` choices with per-token log-probs.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from leafe_jax.policy.base import PROMPT_TOO_LONG, Completion, Message, per_prompt, prompt_seeds, stops_per_prompt


class PolicyServerError(RuntimeError):
  """The server answered with an error, or did not answer within the retries."""


class ContextLengthError(PolicyServerError):
  """The server refused a request because prompt + max_tokens exceed the model's context (HTTP 400)."""


# How OpenAI-compatible servers word that refusal: OpenAI's error code, vLLM's and SGLang's messages
# ("This model's maximum context length is 4096 tokens. However, you requested ..."), TGI's ("must have less
# than N tokens", "Input validation error: `inputs` tokens + `max_new_tokens` must be <= N").
_CONTEXT_LENGTH = re.compile(r"context_length_exceeded|context length|"
                             r"max_new_tokens` must be|must have less than \d+ tokens|prompt is too long", re.I)


class OpenAIPolicy:
  """Policy served by `base_url` (e.g. http://host:8000/v1) under `model` name."""

  def __init__(
      self,
      base_url: str,
      model: str,
      *,
      api_key: str = "EMPTY",
      timeout_s: float = 600.0,
      max_retries: int = 3,
      retry_backoff_s: float = 2.0,
      max_concurrency: int = 64,
  ):
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.model = model
    self.api_key = api_key
    self.timeout_s = timeout_s
    self.max_retries = max_retries
    self.retry_backoff_s = retry_backoff_s
    self.max_concurrency = max_concurrency

  def _post(self, payload: dict) -> dict:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        self.url,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
    )
    last_error: Exception | None = None
    for attempt in range(self.max_retries + 1):
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          return json.loads(response.read())
      except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        if e.code < 500:  # a client error will not go away by retrying
          error = ContextLengthError if e.code == 400 and _CONTEXT_LENGTH.search(detail) else PolicyServerError
          raise error(f"{self.url}: HTTP {e.code}: {detail}") from e
        last_error = e
      except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        last_error = e
      if attempt < self.max_retries:
        time.sleep(self.retry_backoff_s * (2**attempt))
    raise PolicyServerError(f"{self.url}: no answer after {self.max_retries + 1} tries: {last_error}")

  def _one(self, messages, n, temperature, top_p, max_new_tokens, stop, seed) -> list[Completion]:
    payload = {
        "model": self.model,
        "messages": list(messages),
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_new_tokens,
        "seed": seed,
        "logprobs": True,
    }
    if stop:
      payload["stop"] = list(stop)
    try:
      answer = self._post(payload)
    except ContextLengthError:
      return [Completion(text="", finish_reason=PROMPT_TOO_LONG) for _ in range(n)]
    choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
    if len(choices) != n:
      raise PolicyServerError(f"{self.url}: asked for n={n} choices, got {len(choices)}")
    completions = []
    for choice in choices:
      content = (choice.get("logprobs") or {}).get("content") or []
      completions.append(
          Completion(
              text=choice["message"].get("content") or "",
              logprobs=tuple(float(t["logprob"]) for t in content),
              finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
          )
      )
    return completions

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
    count = len(prompts)
    seeds = prompt_seeds(seed, count)  # distinct per prompt: independent prompts, a reproducible call
    settings = zip(per_prompt(temperature, count, "temperature", float), per_prompt(top_p, count, "top_p", float),
                   per_prompt(max_new_tokens, count, "max_new_tokens", int), stops_per_prompt(stop, count))
    workers = min(self.max_concurrency, count)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      futures = [
          pool.submit(self._one, m, n, temp, p, max_new, prompt_stop, prompt_seed)
          for m, (temp, p, max_new, prompt_stop), prompt_seed in zip(prompts, settings, seeds)
      ]
      return [f.result() for f in futures]
