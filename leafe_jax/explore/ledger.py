"""The interaction ledger: what exploration cost, per task and in total, and the optional global budget."""

from __future__ import annotations

import collections

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
  """Counters per task and totals; `interaction` = env + replayed steps, the quantity budgets compare."""

  def __init__(self, env_step_budget: int = 0, num_tasks: int = 0):
    self.env_step_budget = env_step_budget
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

  def budget_left(self) -> bool:
    return self.env_step_budget <= 0 or self.interaction < self.env_step_budget

  def to_json(self) -> dict:
    return {
        "total": {c: self.total[c] for c in COUNTERS},
        "per_task": {t: dict(c) for t, c in sorted(self.per_task.items())},
        "env_step_budget": self.env_step_budget,
        "num_tasks": self.num_tasks,
    }

  def load_task_counts(self, per_task: dict[str, dict]) -> None:
    """Adds the counters of tasks finished in an earlier run (resume)."""
    for task_id, counts in per_task.items():
      for counter, value in counts.items():
        self.add(counter, value, task_id)

  def save(self, path: str) -> None:
    durable.write_json(path, self.to_json())
