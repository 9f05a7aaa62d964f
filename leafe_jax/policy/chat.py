"""Chat templating shared by the policy (inference) and distillation (training records).

Training records must tokenize a turn exactly as the policy saw it at inference, so both sides go through
these two functions: the prompt is the chat template with the generation prompt appended, and the target is
what the template adds for the assistant message (its text and end-of-turn tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from leafe_jax.policy.base import Message

# Rendering (the template) and tokenizing are separate steps, as transformers' own `apply_chat_template(...,
# tokenize=True)` does them (tokenizing with add_special_tokens=False: the template writes its own). Keeping them
# apart lets distillation tokenize thousands of rendered turns in one batched call of the fast tokenizer, and
# the policy and the records still share every line of it.
BATCH_SIZE = 256  # rendered texts per batched tokenizer call in encode_turns


def _render(tokenizer, conversations: Sequence[Sequence[Message]], generation_prompt: bool) -> list[str]:
  # One batched call: transformers renders each conversation exactly as alone, without its per-call overhead.
  return tokenizer.apply_chat_template([list(messages) for messages in conversations],
                                       add_generation_prompt=generation_prompt, tokenize=False)


def _tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
  return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def encode_prompt(tokenizer, messages: Sequence[Message]) -> list[int]:
  """Token ids of `messages` rendered with the chat template, ending with the assistant generation prompt."""
  return _tokenize(tokenizer, _render(tokenizer, [messages], True))[0]


def encode_turns(tokenizer, turns: Sequence[tuple[Sequence[Message], str]]) -> list[tuple[list[int], list[int]]]:
  """(input_ids, loss_mask) of each agent turn (messages, response): the prompt, then the response (mask 1).

  The target is the suffix the template adds for the assistant message, end-of-turn token included, so a
  model trained on it learns to stop. Raises ValueError when the template is not prefix-stable (the rendered
  prompt is not a prefix of the rendered conversation), which would make the mask wrong.
  """
  # Equal turns are encoded once: distillation repeats a turn in D_cf and D_reh and along rehearsed paths.
  index: dict[tuple, int] = {}
  unique, positions = [], []
  for messages, response in turns:
    key = (tuple(tuple(m.items()) for m in messages), response)
    if key not in index:
      index[key] = len(unique)
      unique.append((messages, response))
    positions.append(index[key])
  out = []
  for start in range(0, len(unique), BATCH_SIZE):
    chunk = unique[start:start + BATCH_SIZE]
    texts = _render(tokenizer, [messages for messages, _ in chunk], True)
    texts += _render(tokenizer, [[*messages, {"role": "assistant", "content": response}]
                                 for messages, response in chunk], False)
    ids = _tokenize(tokenizer, texts)
    for prompt_ids, full_ids in zip(ids[:len(chunk)], ids[len(chunk):]):
      if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            "chat template is not prefix-stable: the prompt with the generation prompt is not a prefix of the "
            f"conversation with the assistant turn (tokenizer {type(tokenizer).__name__}); cannot build a loss "
            "mask")
      target = full_ids[len(prompt_ids):]
      if not target:
        raise ValueError("the chat template rendered the assistant response as zero tokens")
      out.append((full_ids, [0] * len(prompt_ids) + [1] * len(target)))
  result, handed_out = [], set()
  for i in positions:
    ids, mask = out[i]
    result.append((list(ids), list(mask)) if i in handed_out else (ids, mask))  # a repeat gets its own lists
    handed_out.add(i)
  return result


def encode_turn(tokenizer, messages: Sequence[Message], response: str) -> tuple[list[int], list[int]]:
  """`encode_turns` of one turn."""
  return encode_turns(tokenizer, [(messages, response)])[0]
