"""Chat templating shared by the policy (inference) and distillation (training records).

Training records must tokenize a turn exactly as the policy saw it at inference, so both sides go through
these two functions: the prompt is the chat template with the generation prompt appended, and the target is
what the template adds for the assistant message (its text and end-of-turn tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

from leafe_jax.policy.base import Message


def encode_prompt(tokenizer, messages: Sequence[Message]) -> list[int]:
  """Token ids of `messages` rendered with the chat template, ending with the assistant generation prompt."""
  return list(
      tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True, return_dict=False)
  )


def encode_turn(tokenizer, messages: Sequence[Message], response: str) -> tuple[list[int], list[int]]:
  """(input_ids, loss_mask) of one agent turn: the prompt, then the response as the target (mask 1).

  The target is the suffix the template adds for the assistant message, end-of-turn token included, so a
  model trained on it learns to stop. Raises ValueError when the template is not prefix-stable (the rendered
  prompt is not a prefix of the rendered conversation), which would make the mask wrong.
  """
  prompt_ids = encode_prompt(tokenizer, messages)
  conversation = [*messages, {"role": "assistant", "content": response}]
  full_ids = list(
      tokenizer.apply_chat_template(conversation, add_generation_prompt=False, tokenize=True, return_dict=False)
  )
  if full_ids[: len(prompt_ids)] != prompt_ids:
    raise ValueError(
        "chat template is not prefix-stable: the prompt with the generation prompt is not a prefix of the "
        f"conversation with the assistant turn (tokenizer {type(tokenizer).__name__}); cannot build a loss mask"
    )
  target = full_ids[len(prompt_ids) :]
  if not target:
    raise ValueError("the chat template rendered the assistant response as zero tokens")
  return full_ids, [0] * len(prompt_ids) + [1] * len(target)
