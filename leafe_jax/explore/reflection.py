"""The reflection prompt and its parser: the policy names a rollback step tau and an experience e.

LEAFE reflects with the same policy (paper_notes §2.2); the paper's p_refl text was not found, so this wording is
ours. The output format is `<rollback_step>k</rollback_step><experience>...</experience>`, k in 1..t; anything
else is "no branch".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from leafe_jax.envs.prompts import template_of

REFLECTION_SYSTEM = "You review your own attempts at a task and find where they went wrong."

FULL_INTRO = (
    "Your task was: {instruction}\n\n"
    "Below is your attempt so far: the observation you saw at each step and the action you took.\n\n{steps}\n\n"
    "{final}Outcome: {outcome}.\n\n"
    "Find the step whose action caused the failure or put you off track (the earliest one that matters), and "
    "write a brief, concrete instruction that would fix it when that step is retried. Answer exactly as\n"
    "<rollback_step>k</rollback_step><experience>your instruction</experience>\nwith k between 1 and {num_steps}."
)
FULL_STEP = "[Step {step} observation]\n{observation}\n[Step {step} action]: {action}"
FULL_FINAL = "[Observation after the last action]\n{observation}\n\n"

# For tiny models (configs whose env uses a compact prompt): the start, the numbered actions, the end, a cue.
COMPACT_INTRO = "{first}\n{steps}\n{final}{outcome}\nreflect:"
COMPACT_STEP = "{step} {action}"

_ROLLBACK = re.compile(r"<\s*rollback_step\s*>\s*(-?\d+)\s*<\s*/\s*rollback_step\s*>", re.IGNORECASE)
_EXPERIENCE = re.compile(r"<\s*experience\s*>(.*?)<\s*/\s*experience\s*>", re.IGNORECASE | re.DOTALL)


def _is_compact(env) -> bool:
  return bool(getattr(env, "compact_prompt", False)) or not template_of(env).task_intro


def build_reflection_prompt(env, *, instruction: str, steps: Sequence[tuple[str, str]],
                            final_observation: str | None, outcome: str) -> list[dict[str, str]]:
  """Messages asking the policy to reflect on `steps` = [(observation before the action, action)], 1-based."""
  if _is_compact(env):
    first = steps[0][0] if steps else (final_observation or "")
    lines = "\n".join(COMPACT_STEP.format(step=i + 1, action=a) for i, (_, a) in enumerate(steps))
    final = f"{final_observation}\n" if final_observation else ""
    return [{"role": "user", "content": COMPACT_INTRO.format(first=first, steps=lines, final=final,
                                                             outcome=outcome)}]
  lines = "\n".join(FULL_STEP.format(step=i + 1, observation=o, action=a) for i, (o, a) in enumerate(steps))
  final = FULL_FINAL.format(observation=final_observation) if final_observation else ""
  content = FULL_INTRO.format(instruction=instruction, steps=lines, final=final, outcome=outcome,
                              num_steps=len(steps))
  return [{"role": "system", "content": REFLECTION_SYSTEM}, {"role": "user", "content": content}]


def format_reflection(rollback_step: int, experience: str) -> str:
  """The target text of a reflection (used to build warm-up data)."""
  return f"<rollback_step>{rollback_step}</rollback_step><experience>{experience}</experience>"


def parse_reflection(text: str, num_steps: int) -> tuple[int, str] | None:
  """(tau, e) from a reflection, or None when unparsable, tau is outside 1..num_steps, or e is empty."""
  steps = _ROLLBACK.findall(text or "")
  experiences = _EXPERIENCE.findall(text or "")
  if not steps or not experiences:
    return None
  tau, experience = int(steps[-1]), " ".join(experiences[-1].split())
  if not 1 <= tau <= num_steps or not experience:
    return None
  return tau, experience
