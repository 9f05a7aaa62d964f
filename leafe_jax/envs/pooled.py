"""Envs in an EnvPool behind the Env protocol, and batched reset / step / replay over any mix of envs.

`PooledEnv` is one pool episode seen as an Env: the worker sends the env's instruction, admissible actions and
prompt attributes (`prompt_template`, `compact_prompt`, `parse_action`, ...) with every reply, so prompt builders
and action parsers treat it exactly like the in-process env. Its own methods make one pool call each and raise
`EpisodeLostError` when the pool loses the episode.

The batch functions are what loops over many envs use (explorer, evaluation): every PooledEnv of one pool is
served by ONE pool call, so the pool's workers run concurrently; in-process envs are stepped in a loop as before.
Lost pooled episodes come back as `EpisodeError` values for the caller to drop; in-process envs raise as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from leafe_jax.envs.base import Env, Step
from leafe_jax.envs.pool import EnvPool, EnvView, EpisodeError, replay_prefix

_EPISODE_IDS = itertools.count()  # episode ids are unique per parent process, whichever pool they use


class EpisodeLostError(RuntimeError):
  """A PooledEnv call failed: its worker crashed or hung, or the env raised inside the worker."""

  def __init__(self, error: EpisodeError):
    super().__init__(error.reason)
    self.error = error


@dataclasses.dataclass(frozen=True)
class Replay:
  """Reset + an action prefix: o_0..o_k, stopped early (k < len(actions)) when an action ended the episode."""

  observations: list[str]
  ended: bool  # some action of the prefix ended the episode (the last one replayed)


class PooledEnv:
  """One EnvPool episode implementing the Env protocol (`tasks` excepted: list tasks on a local env)."""

  def __init__(self, pool: EnvPool):
    self.pool = pool
    self.episode_id = f"pooled-{next(_EPISODE_IDS)}"
    self.name = pool.env_name  # replaced by the worker env's own `name` at the first reset
    self._view: EnvView | None = None

  def apply(self, view: EnvView) -> None:
    """Takes the worker env's state from a reply (the batch functions call this)."""
    self._view = view
    for attribute, value in (view.attributes or {}).items():
      setattr(self, attribute, value)

  def _unwrap(self, reply: Any) -> Any:
    if isinstance(reply, EpisodeError):
      self._view = None
      raise EpisodeLostError(reply)
    result, view = reply
    self.apply(view)
    return result

  def reset(self, task_id: str) -> str:
    (reply,) = self.pool.reset([self.episode_id], [task_id], view=True)
    return self._unwrap(reply)

  def step(self, action: str) -> Step:
    (reply,) = self.pool.step([self.episode_id], [action], view=True)
    return self._unwrap(reply)

  def tasks(self, split: str) -> list[str]:
    raise NotImplementedError("PooledEnv.tasks: list the tasks on an in-process env of the same config")

  @property
  def instruction(self) -> str:
    return self._view.instruction if self._view is not None else ""

  def admissible_actions(self) -> list[str] | None:
    return self._view.admissible_actions if self._view is not None else None

  def close(self) -> None:
    """Drops the episode's env in its worker."""
    self.pool.release([self.episode_id])


def _by_pool(envs: Sequence[Env]) -> tuple[dict[EnvPool, list[int]], list[int]]:
  """Positions of the PooledEnvs grouped by pool, and positions of the in-process envs."""
  pooled: dict[EnvPool, list[int]] = {}
  local = []
  for pos, env in enumerate(envs):
    if isinstance(env, PooledEnv):
      pooled.setdefault(env.pool, []).append(pos)
    else:
      local.append(pos)
  return pooled, local


def _fill(results: list[Any], envs: Sequence[Env], positions: list[int], replies: list[Any],
          convert: Callable[[Any, EnvView], Any] = lambda result, view: result) -> None:
  """Stores each (result, view) reply as `convert(result, view)` after handing the view to its PooledEnv."""
  for pos, reply in zip(positions, replies):
    if isinstance(reply, EpisodeError):
      results[pos] = reply
    else:
      result, view = reply
      envs[pos].apply(view)
      results[pos] = convert(result, view)


def _each(envs: Sequence[Env], args: Sequence[Any], op: str) -> list[Any]:
  """`getattr(env, op)(arg)` for each env: one `pool.<op>` call per pool for the pooled ones, a loop for the rest."""
  results: list[Any] = [None] * len(envs)
  pooled, local = _by_pool(envs)
  for pool, positions in pooled.items():
    replies = getattr(pool, op)([envs[p].episode_id for p in positions], [args[p] for p in positions], view=True)
    _fill(results, envs, positions, replies)
  for pos in local:
    results[pos] = getattr(envs[pos], op)(args[pos])
  return results


def reset_all(envs: Sequence[Env], task_ids: Sequence[str]) -> list[str | EpisodeError]:
  """`env.reset(task_id)` for each env; one pool call per pool."""
  return _each(envs, task_ids, "reset")


def step_all(envs: Sequence[Env], actions: Sequence[str]) -> list[Step | EpisodeError]:
  """`env.step(action)` for each env; one pool call per pool."""
  return _each(envs, actions, "step")


def replay_all(envs: Sequence[Env], task_ids: Sequence[str],
               action_lists: Sequence[Sequence[str]]) -> list[Replay | EpisodeError]:
  """Reset + action prefix for each env (a rollback), stopping after an action that ends the episode.

  One pool call per pool, whatever the prefix lengths; with an empty prefix this is a reset.
  """
  results: list[Any] = [None] * len(envs)
  pooled, local = _by_pool(envs)
  for pool, positions in pooled.items():
    replies = pool.replay_many([envs[p].episode_id for p in positions], [task_ids[p] for p in positions],
                               [action_lists[p] for p in positions], view=True, stop_on_done=True)
    _fill(results, envs, positions, replies, lambda observations, view: Replay(observations, view.done))
  for pos in local:
    results[pos] = Replay(*replay_prefix(envs[pos], task_ids[pos], action_lists[pos], stop_on_done=True))
  return results


def release_all(envs: Sequence[Env]) -> None:
  """Frees finished envs: PooledEnvs drop their worker envs (one call per pool); in-process envs that hold an
  engine (a `release()` method: a ScienceWorld env's JVM) hand it back."""
  pooled, local = _by_pool(envs)
  for pool, positions in pooled.items():
    pool.release([envs[p].episode_id for p in positions])
  for pos in local:
    release = getattr(envs[pos], "release", None)
    if release is not None:
      release()


@contextlib.contextmanager
def env_factory(env_name: str, env_config: dict[str, Any], workers: int,
                step_timeout_s: float) -> Iterator[Callable[[], Env]]:
  """`make_env` for a stage: in-process envs (`workers` = 0) or PooledEnvs of one EnvPool of `workers` processes,
  closed on exit."""
  if workers < 0:
    raise ValueError(f"env_workers must be >= 0, got {workers}")
  if workers == 0:
    from leafe_jax.envs import registry

    yield lambda: registry.make(env_name, **env_config)
    return
  with EnvPool(env_name, env_config, num_workers=workers, step_timeout_s=step_timeout_s) as pool:
    yield lambda: PooledEnv(pool)


__all__ = ["EpisodeLostError", "PooledEnv", "Replay", "env_factory", "release_all", "replay_all", "reset_all",
           "step_all"]
