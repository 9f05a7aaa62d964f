"""The Env protocol every environment implements (DESIGN.md §3 "Env").

`leafe_jax.envs` imports nothing from the JAX side: the explorer runs on hosts without an accelerator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

Observation = str

INVALID_ACTION = "Invalid action."


@dataclasses.dataclass(frozen=True)
class Step:
  """The result of one `Env.step`."""

  observation: Observation
  reward: float
  done: bool
  success: bool
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Env(Protocol):
  """A text environment with deterministic resets.

  Same task id => same start state, always. An action the env cannot parse returns an "invalid action"
  observation, counts against the step limit and never raises. `info["irreversible"]` (bool) marks a state
  from which success is impossible; the explorer uses it as a failure signal for reflection.
  """

  name: str

  def tasks(self, split: str) -> list[str]:
    """Task ids of a split ("train", "dev", "test", ...)."""
    ...

  def reset(self, task_id: str) -> Observation:
    """Starts task `task_id` and returns the first observation."""
    ...

  def step(self, action: str) -> Step:
    """Executes one action (already parsed out of the model's text)."""
    ...

  @property
  def instruction(self) -> str:
    """The task instruction q of the current task."""
    ...

  def admissible_actions(self) -> list[str] | None:
    """Valid actions in the current state, or None where the env has no such list."""
    ...


@runtime_checkable
class SnapshotEnv(Env, Protocol):
  """An env that can save and restore its full state more cheaply than reset + replay."""

  def snapshot(self) -> Any:
    ...

  def restore(self, snapshot: Any) -> None:
    ...


@runtime_checkable
class ExpertEnv(Env, Protocol):
  """An env with an expert: a gold action sequence per task (the Early Experience baseline's D_expert)."""

  def gold_actions(self, task_id: str) -> list[str]:
    """Actions that solve `task_id` from its start state. May change the env's state: reset afterwards."""
    ...
