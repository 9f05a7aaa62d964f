"""ACE (Agentic Context Engineering, arXiv 2510.04618), the paper's prompting baseline: the weights stay fixed
and an itemised playbook in the prompt evolves from environment feedback.

Three roles, all played by the same policy (LEAFE applies ACE on top of the GRPO model):
- Generator: acts with the playbook in its action prompt (`build_action_prompt(..., playbook=...)`);
- Reflector: reads one finished episode (its steps and outcome) and the playbook; tags the bullets the episode
  used as helpful or harmful and states one lesson;
- Curator: reads a batch of lessons and the playbook and proposes bullets to ADD.
Merging is deterministic, not by the model: ACE's incremental delta updates, append-only, with exact-duplicate
bullets skipped and the playbook capped at `max_bullets` (a note on LEAFE reports the authors ran ACE
append-only and capped at 100 items). Bullets carry helpful / harmful counters from the reflections.
Unparsable reflector or curator output changes nothing and is counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence

from leafe_jax.policy.base import Message

REFLECTOR_PROMPT = """You review one attempt of an agent at a task, to improve the playbook of strategies it \
works from.

Task: {instruction}
Outcome: {outcome} after {steps} step(s).

Steps (observation, then the action taken):
{trajectory}

Current playbook:
{playbook}

Which playbook bullets did this attempt follow, and did they help or hurt? What is the one most useful lesson \
for future attempts at tasks like this (a concrete, reusable strategy, or a mistake to avoid)? Answer with one \
JSON object and nothing else:
{{"bullet_tags": [{{"id": "<bullet id>", "tag": "helpful" | "harmful" | "neutral"}}], "lesson": "<one or two \
sentences>"}}"""

CURATOR_PROMPT = """You maintain a playbook of strategies for an agent. Below are the playbook and lessons drawn \
from recent attempts.

Current playbook:
{playbook}

Lessons:
{lessons}

Propose new bullets that add what the playbook does not already say. Each bullet is one short, concrete \
instruction. Do not repeat existing bullets. Answer with one JSON object and nothing else:
{{"operations": [{{"type": "ADD", "content": "<bullet>"}}]}}"""

STEP_ITEM = "[{step}] {observation}\n  -> {action}"
EMPTY_PLAYBOOK = "(empty)"
TAGS = ("helpful", "harmful", "neutral")


@dataclasses.dataclass
class Bullet:
  id: str
  content: str
  helpful: int = 0
  harmful: int = 0


@dataclasses.dataclass
class Playbook:
  """An itemised context: bullets with ids and helpful / harmful counts."""

  bullets: list[Bullet] = dataclasses.field(default_factory=list)

  def render(self) -> str:
    """The text the generator sees (empty string when there are no bullets)."""
    return "\n".join(f"[{b.id}] {b.content} (helpful {b.helpful}, harmful {b.harmful})" for b in self.bullets)

  def add(self, contents: Sequence[str], max_bullets: int) -> int:
    """Appends new bullets (exact duplicates, ignoring case and spacing, are skipped) up to `max_bullets`;
    returns how many were added."""
    seen = {_normalise(b.content) for b in self.bullets}
    added = 0
    for content in contents:
      content = " ".join(content.split())
      if not content or _normalise(content) in seen or len(self.bullets) >= max_bullets:
        continue
      self.bullets.append(Bullet(f"b{len(self.bullets) + 1:03d}", content))
      seen.add(_normalise(content))
      added += 1
    return added

  def tag(self, tags: Sequence[tuple[str, str]]) -> None:
    by_id = {b.id: b for b in self.bullets}
    for bullet_id, tag in tags:
      if bullet_id in by_id and tag == "helpful":
        by_id[bullet_id].helpful += 1
      elif bullet_id in by_id and tag == "harmful":
        by_id[bullet_id].harmful += 1

  def to_json(self) -> dict:
    return {"bullets": [dataclasses.asdict(b) for b in self.bullets]}

  @classmethod
  def from_json(cls, data: dict) -> Playbook:
    return cls([Bullet(**b) for b in data.get("bullets", [])])


def load_playbook(path: str) -> Playbook:
  """The playbook of an ace stage's playbook.json."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"ACE playbook {path} does not exist: run the ace stage first")
  with open(path) as f:
    return Playbook.from_json(json.load(f)["playbook"])


def _normalise(text: str) -> str:
  return " ".join(text.lower().split())


def _json_object(text: str) -> dict | None:
  """The first JSON object in a model's reply (models wrap it in prose or code fences), or None."""
  start = text.find("{")
  while start != -1:
    try:
      value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
      start = text.find("{", start + 1)
      continue
    return value if isinstance(value, dict) else None
  return None


def reflector_messages(instruction: str, history: Sequence[tuple[str, str]], success: bool,
                       playbook: Playbook, max_steps_shown: int) -> list[Message]:
  """The reflector's prompt for one finished episode (its last `max_steps_shown` steps)."""
  shown = list(history)[-max_steps_shown:] if max_steps_shown > 0 else list(history)
  first = len(history) - len(shown) + 1
  trajectory = "\n".join(STEP_ITEM.format(step=first + i, observation=o, action=a) for i, (o, a) in enumerate(shown))
  text = REFLECTOR_PROMPT.format(instruction=instruction, outcome="success" if success else "failure",
                                 steps=len(history), trajectory=trajectory or "(no step)",
                                 playbook=playbook.render() or EMPTY_PLAYBOOK)
  return [{"role": "user", "content": text}]


def curator_messages(lessons: Sequence[str], playbook: Playbook) -> list[Message]:
  text = CURATOR_PROMPT.format(playbook=playbook.render() or EMPTY_PLAYBOOK,
                               lessons="\n".join(f"- {lesson}" for lesson in lessons))
  return [{"role": "user", "content": text}]


_ID = re.compile(r"^b\d+$")


def parse_reflection(text: str) -> tuple[list[tuple[str, str]], str] | None:
  """(bullet tags, lesson) from the reflector's reply, or None when it holds no usable JSON object."""
  value = _json_object(text)
  if value is None:
    return None
  tags = []
  items = value.get("bullet_tags")
  for item in items if isinstance(items, list) else []:
    if isinstance(item, dict) and _ID.match(str(item.get("id", ""))) and item.get("tag") in TAGS:
      tags.append((str(item["id"]), item["tag"]))
  lesson = value.get("lesson")
  lesson = " ".join(lesson.split()) if isinstance(lesson, str) else ""
  if not tags and not lesson:
    return None
  return tags, lesson


def parse_curation(text: str) -> list[str] | None:
  """The contents of the curator's ADD operations, or None when its reply holds no usable JSON object."""
  value = _json_object(text)
  if value is None or not isinstance(value.get("operations"), list):
    return None
  return [op["content"] for op in value["operations"]
          if isinstance(op, dict) and str(op.get("type", "")).upper() == "ADD" and isinstance(op.get("content"), str)]
