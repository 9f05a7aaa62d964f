"""Action prompts in the verl-agent style, and a tolerant parser for the action a model writes.

Every env module defines a `PromptTemplate` with its own wording and exposes it as `env.prompt_template`;
`build_action_prompt` is the one code path that turns (instruction, history, observation, admissible actions,
optional experience) into chat messages, for the full template and for the compact one used by tiny models.

The experience block (LEAFE's a'_tau ~ pi(. | h_tau, q, e)) is a separate part that is absent when
`experience is None`, so the prompt without experience is byte-identical to the normal prompt: the distilled
target is the same action under the prompt without e.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

# (observation, action) pairs of the history an action prompt shows by default (explore, eval, grpo and play):
# a short window of recent steps, as verl-agent's prompts keep.
DEFAULT_HISTORY_LENGTH = 2

Message = dict[str, str]  # {"role": ..., "content": ...}; same shape as leafe_jax.policy.base.Message

PART_SEPARATOR = "\n\n"


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
  """The wording of an env's action prompt. Empty strings drop a part; `{...}` fields are filled in.

  Fields: task_intro {instruction}; history_intro {step_count} {num_shown}; history_item {step} {observation}
  {action}; current_observation {step} {observation}; admissible_actions {actions}; experience {experience};
  playbook {playbook}.
  """

  system: str = ""
  task_intro: str = "{instruction}"
  first_step: str = ""  # shown instead of the history before the first action
  history_intro: str = ""
  history_item: str = ""
  current_observation: str = "{observation}"
  admissible_actions: str = ""
  action_separator: str = ", "
  experience: str = ""
  # ACE's playbook (baselines/ace.py): strategies curated over earlier tasks, shown before the task when given.
  playbook: str = "Playbook of strategies learned on earlier tasks:\n<playbook>\n{playbook}\n</playbook>"
  output_format: str = ""


GENERIC_TEMPLATE = PromptTemplate(
    system="You are an agent acting in a text environment. Think before you act, then give exactly one action.",
    task_intro="Your task: {instruction}",
    first_step="You have not taken any action yet.",
    history_intro=("Prior to this step, you have already taken {step_count} step(s). Below are the most recent "
                   "{num_shown} observation(s) and the action you took after each:"),
    history_item="[Step {step} observation]\n{observation}\n[Step {step} action]: {action}",
    current_observation="You are now at step {step}. Current observation:\n{observation}",
    admissible_actions="Admissible actions now: [{actions}].",
    experience=("Advice from reflecting on an earlier attempt at this task (use it to choose a better action):\n"
                "<experience>\n{experience}\n</experience>"),
    output_format=("First reason step-by-step about the current state inside <think> </think> tags. Then give "
                   "exactly one admissible action inside <action> </action> tags."),
)


def template_of(env_or_template: Any) -> PromptTemplate:
  if isinstance(env_or_template, PromptTemplate):
    return env_or_template
  return getattr(env_or_template, "prompt_template", None) or GENERIC_TEMPLATE


def build_action_prompt(
    env_or_template: Any,
    *,
    instruction: str,
    history: Sequence[tuple[str, str]],
    current_observation: str,
    admissible_actions: Sequence[str] | None,
    step_count: int,
    history_length: int,
    experience: str | None = None,
    playbook: str | None = None,
) -> list[Message]:
  """Chat messages asking for the next action.

  Args:
    env_or_template: an env (its `prompt_template` is used) or a PromptTemplate.
    instruction: the task instruction q.
    history: all (observation, action) pairs so far, oldest first; the last `history_length` are shown.
    current_observation: the observation the action answers.
    admissible_actions: valid actions now, or None where the env has no list.
    step_count: steps taken so far (numbering of shown steps ends at step_count).
    history_length: how many past pairs to show (0 = none).
    experience: reflection text e, shown as its own delimited block; None leaves the prompt unchanged.
    playbook: ACE's rendered playbook, shown before the task; None (or empty) leaves the prompt unchanged.

  Raises ValueError for an experience the template has no part for: a LEAFE branch (or an IR retry) would be
  sampled without its e, a plain resample that nothing would tell apart from a correction.
  """
  t = template_of(env_or_template)
  if experience is not None and not t.experience:
    owner = getattr(env_or_template, "name", type(env_or_template).__name__)
    raise ValueError(f"build_action_prompt: {owner!r}'s prompt template has no experience part, so the experience "
                     "would be dropped from the prompt; give the template an `experience` field")
  parts = [t.playbook.format(playbook=playbook)] if playbook and t.playbook else []
  parts.append(_task_intro(t.task_intro, instruction))
  shown = list(history[-history_length:]) if history_length > 0 else []
  if step_count == 0:
    parts.append(t.first_step)
  if shown and t.history_intro:
    first = step_count - len(shown) + 1
    items = [t.history_item.format(step=first + i, observation=obs, action=act) for i, (obs, act) in enumerate(shown)]
    parts.append(t.history_intro.format(step_count=step_count, num_shown=len(shown)) + "\n" + "\n".join(items))
  parts.append(t.current_observation.format(step=step_count + 1, observation=current_observation))
  if admissible_actions is not None and t.admissible_actions:
    parts.append(t.admissible_actions.format(actions=t.action_separator.join(admissible_actions)))
  if experience is not None and t.experience:
    parts.append(t.experience.format(experience=experience))
  parts.append(t.output_format)
  content = PART_SEPARATOR.join(p for p in parts if p)
  messages: list[Message] = []
  if t.system:
    messages.append({"role": "system", "content": t.system})
  messages.append({"role": "user", "content": content})
  return messages


@functools.lru_cache(maxsize=1024)
def _task_intro(task_intro: str, instruction: str) -> str:
  """The task part of the prompt: the same for every step of an episode, so formatted once (a pure function of
  its two strings: nothing to go stale)."""
  return task_intro.format(instruction=instruction)


_OPEN = re.compile(r"<\s*action\s*>", re.IGNORECASE)
# A block's content holds no opening tag: "<action>" mentioned in the reasoning before the real block must not
# swallow it (the block then ends at the LAST opening tag before its closing one).
_BLOCK = re.compile(r"<\s*action\s*>((?:(?!<\s*action\s*>).)*?)<\s*/\s*action\s*>", re.IGNORECASE | re.DOTALL)
# Decoration models put around an action: quotes, backticks, bold, brackets, trailing punctuation.
_STRIP_CHARS = " \t\r\n\"'`*[](){}.,;:!"


def _normalise(text: str) -> str:
  return " ".join(text.strip(_STRIP_CHARS).split()).lower()


_LABEL = re.compile(r"^\s*(?:action|answer)\s*[:=]\s*", re.IGNORECASE)


def _match(candidate: str, admissible: Sequence[str] | None) -> str | None:
  if admissible is None:
    value = candidate.strip()
    return value or None
  for text in (candidate, _LABEL.sub("", candidate, count=1)):  # "Action: up" is common in untagged replies
    wanted = _normalise(text)
    for action in admissible:
      if _normalise(action) == wanted:
        return action
  return None


def parse_action(text: str, admissible: Sequence[str] | None = None) -> str | None:
  """The action a model wrote, in canonical spelling, or None.

  Rules: the content of the LAST complete `<action>...</action>` block (tags in any case, spaces allowed); if
  no block is complete, the text after the last `<action>` (a missing closing tag, e.g. cut by a stop string)
  up to the end of its line; with no tag at all, the whole text, then its first non-empty line, must be a bare
  action. An "Action:" / "Answer:" label in front of the action is dropped. With `admissible`, the candidate
  must equal an admissible action ignoring case, surrounding quotes / punctuation and repeated spaces, and the
  admissible spelling is returned; without it the stripped candidate is returned (never for untagged text,
  which is then None).
  """
  if not text:
    return None
  blocks = _BLOCK.findall(text)
  if blocks:
    return _match(blocks[-1], admissible)
  opens = list(_OPEN.finditer(text))
  if opens:
    tail = text[opens[-1].end():].strip()
    return _match(tail.splitlines()[0], admissible) if tail else None
  if admissible is None:
    return None
  found = _match(text, admissible)
  if found is not None:
    return found
  lines = [line for line in text.splitlines() if line.strip()]
  return _match(lines[0], admissible) if lines else None
