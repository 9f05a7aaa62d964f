"""Noisy-expert Sokoban trajectories from the exact solver, for warm-up data of from-scratch policies.

The expert plays the solver's move-optimal action, except that with probability `mistake_prob` it plays another
action. A trajectory that fails therefore contains a *fatal* step: the first action after which the room can no
longer be solved within the remaining steps. That step is what a reflection should name as the rollback step,
and "avoid <that action>" is the experience that fixes it.
"""

from __future__ import annotations

import dataclasses
import random

from leafe_jax.envs.pool import replay_prefix
from leafe_jax.envs.sokoban import ACTIONS, SokobanEnv, solve
from leafe_jax.envs.sokoban.level import ACTION_OF_LETTER


@dataclasses.dataclass(frozen=True)
class Turn:
  """One agent turn: what the agent saw, what it did, and what the solver would have done."""

  step: int  # 1-based step number
  observation: str
  action: str
  optimal_action: str | None  # None when the state was already lost


@dataclasses.dataclass(frozen=True)
class ExpertTrajectory:
  task_id: str
  turns: tuple[Turn, ...]
  success: bool
  fatal_step: int | None  # 1-based step whose action made the room unsolvable in time; None if never
  final_observation: str = ""  # what the agent saw after its last action (the explorer's reflection shows it)


def _plan_from_here(env: SokobanEnv) -> str | None:
  """A move-optimal solution (LURD letters) from the env's current state within its remaining steps, or None."""
  snap = env.snapshot()
  state = dataclasses.replace(env.level, player=snap.player, boxes=snap.boxes)
  return solve(state, max_steps=env.max_steps - snap.steps)


def optimal_action(env: SokobanEnv) -> str | None:
  """The first move of a move-optimal solution from the env's current state within its remaining steps."""
  plan = _plan_from_here(env)
  if not plan:
    return None
  return ACTION_OF_LETTER[plan[0].lower()]


def noisy_expert_trajectory(env: SokobanEnv, task_id: str, mistake_prob: float, rng: random.Random,
                            end_on_irreversible: bool = False) -> ExpertTrajectory:
  """Plays one episode of `task_id` with the noisy expert.

  With `end_on_irreversible` the episode stops at the first deadlock (`info["irreversible"]`), where the
  explorer's "irreversible" failure signal ends a rollout; the deadlocking push is then the last, fatal step.
  """
  observation = env.reset(task_id)
  turns: list[Turn] = []
  fatal_step = None
  success = False
  step_number = 0
  while True:
    step_number += 1
    best = optimal_action(env)
    if best is not None and rng.random() >= mistake_prob:
      action = best
    else:
      action = rng.choice([a for a in ACTIONS if a != best])
    turns.append(Turn(step_number, observation, action, best))
    result = env.step(action)
    observation = result.observation
    if fatal_step is None and best is not None and not result.success and optimal_action_after(env, result) is None:
      fatal_step = step_number
    if result.done or (end_on_irreversible and result.info["irreversible"]):
      success = result.success
      break
  return ExpertTrajectory(task_id, tuple(turns), success, fatal_step, observation)


def best_other_action(env: SokobanEnv, avoid: str) -> str | None:
  """The move other than `avoid` after which the room is solved soonest within the remaining steps.

  None when no other move keeps the room solvable. Moves that change nothing (into a wall or an unpushable box)
  are never chosen: one wasted step ties with a real detour and is not a move worth teaching. Ties go to the
  first of ACTIONS. The env is restored to the state it was in.
  """
  before = env.snapshot()
  best, best_length = None, None
  for action in ACTIONS:
    if action == avoid:
      continue
    result = env.step(action)
    moved = env.snapshot().player != before.player
    length = None
    if moved and result.success:
      length = 0
    elif moved and not result.done:
      plan = _plan_from_here(env)
      length = None if plan is None else len(plan)
    env.restore(before)
    if length is not None and (best_length is None or length < best_length):
      best, best_length = action, length
  return best


def replay_to(env: SokobanEnv, trajectory: ExpertTrajectory, index: int) -> None:
  """Puts `env` in the state of `trajectory.turns[index]` (reset + replay of the turns before it)."""
  observations, _ = replay_prefix(env, trajectory.task_id, [t.action for t in trajectory.turns[:index]],
                                  stop_on_done=False)
  if observations[-1] != trajectory.turns[index].observation:
    raise RuntimeError(f"replay of {trajectory.task_id} to turn {index + 1} reached another state than the "
                       "trajectory recorded")


def optimal_action_after(env: SokobanEnv, result) -> str | None:
  """Like `optimal_action`, but None at once when the episode is over."""
  if result.done:
    return None
  return optimal_action(env)
