"""The interaction ledger: what exploration cost, per task and in total, and the optional global budget."""

from __future__ import annotations

import collections
import os
import re

from leafe_jax import durable

COUNTERS = (
    "env_steps",  # actions executed in new rollouts
    "replayed_steps",  # actions re-executed to restore a rollback prefix (interaction too: they cost env time)
    "policy_calls",  # Policy.generate calls (each batched over every rollout that needed one; totals only)
    "policy_requests",  # prompts served (actions + reflections): per task, what its share of the calls cost
    "generated_tokens",
    "rollouts",
    "successes",
    "reflections",
    "unparsable_reflections",  # no tag, tau outside 1..t, empty experience: "no branch"
    "invalid_actions",
    "branches",  # branch requests queued
    "divergences",  # replays whose observations differed from the recorded ones (branch dropped)
    "errors",  # env errors (crashed worker, exception in the env)
    "prompts_too_long",  # prompts that did not fit the policy's context (action: rollout ended; reflection: no branch)
)


class Ledger:
  """Counters per task and totals; `interaction` = env + replayed steps, the quantity budgets compare.

  The budget is a hard cap: a rollout starts only when the most it can take fits beside what the rollouts alive
  may still take (`affords`), so `interaction` never exceeds `env_step_budget`. `budget_exhausted` records that
  the budget refused a rollout or a reflection (the trees alive then ended without those branches).
  """

  def __init__(self, env_step_budget: int = 0, num_tasks: int = 0):
    self.env_step_budget = env_step_budget
    self.budget_exhausted = False
    self.num_tasks = num_tasks  # tasks assigned to this run (coverage denominators); 0 = not known
    self.per_task: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    self.total: collections.Counter = collections.Counter()

  def add(self, counter: str, value: int = 1, task_id: str | None = None) -> None:
    if counter not in COUNTERS:
      raise KeyError(f"unknown ledger counter {counter!r}")
    self.total[counter] += value
    if task_id is not None:
      self.per_task[task_id][counter] += value

  @property
  def interaction(self) -> int:
    return self.total["env_steps"] + self.total["replayed_steps"]

  @property
  def has_budget(self) -> bool:
    return self.env_step_budget > 0

  def affords(self, steps: int, reserved: int = 0) -> bool:
    """Whether `steps` more interaction fit in the budget beside `reserved` steps already promised to rollouts
    alive (always, without a budget)."""
    return not self.has_budget or self.interaction + reserved + steps <= self.env_step_budget

  def to_json(self) -> dict:
    return {
        "total": {c: self.total[c] for c in COUNTERS},
        "per_task": {t: dict(c) for t, c in sorted(self.per_task.items())},
        "env_step_budget": self.env_step_budget,
        "budget_exhausted": self.budget_exhausted,
        "num_tasks": self.num_tasks,
    }

  def load_task_counts(self, per_task: dict[str, dict]) -> None:
    """Adds the counters of tasks finished in an earlier run (resume)."""
    for task_id, counts in per_task.items():
      for counter, value in counts.items():
        self.add(counter, value, task_id)

  def save(self, path: str) -> None:
    durable.write_json(path, self.to_json())


_LEDGER_FILE = re.compile(r"ledger(?:-shard-(\d+)-of-(\d+))?\.json")


def ledger_name(index: int, count: int) -> str:
  """The file name of explore shard `index` of `count`'s ledger, in the stage dir (saved when the shard ends)."""
  return "ledger.json" if count == 1 else f"ledger-shard-{index}-of-{count}.json"


def stage_ledger_files(folder: str) -> list[str]:
  """The ledgers of one explore stage dir: its ledger.json (one shard), or every ledger-shard-<i>-of-<n>.json of
  one sharded run; [] when it has none. Refuses ledgers of two shard counts (an earlier run's ledgers beside a
  later one's: summed, the interaction would be counted twice) and a sharded run with a shard's ledger missing
  (the shard is still running or was killed: its interaction would be left out)."""
  shards: dict[int, dict[int, str]] = {}
  for name in sorted(os.listdir(folder)):
    match = _LEDGER_FILE.fullmatch(name)
    if match is not None:
      index, count = (0, 1) if match.group(1) is None else (int(match.group(1)), int(match.group(2)))
      shards.setdefault(count, {})[index] = os.path.join(folder, name)
  if len(shards) > 1:
    raise ValueError(f"{folder} holds the ledgers of explore runs of {len(shards)} shard counts "
                     f"({', '.join(str(c) for c in sorted(shards))}); remove the stale shard ledgers")
  for count, files in shards.items():
    missing = [i for i in range(count) if i not in files]
    if missing:
      raise RuntimeError(f"{folder}: explore shard {missing[0]}/{count} has not finished (no ledger-shard-"
                         f"{missing[0]}-of-{count}.json; {len(missing)} of {count} shard ledgers missing)")
    return [files[i] for i in range(count)]
  return []
