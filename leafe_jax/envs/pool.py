"""EnvPool: environments in worker processes that survive crashed and hung workers.

Each worker process owns env instances keyed by episode id; an episode lives on one worker from `reset` on.
A call sends one request to every worker concerned, then gathers the replies, so workers run concurrently.
A worker that dies (EOF on its pipe) or misses its deadline is killed and replaced; the episodes it held are
reported as `EpisodeError` and forgotten, every other episode goes on. An exception inside an env is reported as
an `EpisodeError` for that episode only (its env is dropped; the worker stays).

With `view=True`, reset / step / replay results come paired with an `EnvView` of the env after the call (its
instruction, admissible actions and, after reset and replay, its prompt attributes), so a proxy in the parent
(`leafe_jax.envs.pooled.PooledEnv`) can build prompts and parse actions without an env of its own.

`env_name` is a registry name ("sokoban") or a "module:Factory" string (used by tests for throwaway envs).
Workers are started with the 'spawn' context: the parent may hold threads (JAX, tf.data) that fork would copy
in a broken state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import multiprocessing
import multiprocessing.connection
import time
import traceback
from collections.abc import Sequence
from typing import Any

from leafe_jax.envs.base import Step

DEFAULT_STEP_TIMEOUT_S = 60.0
# Ready handshake of a fresh worker (imports can be slow on a loaded host).
WORKER_START_TIMEOUT_S = 120.0
_KILL_JOIN_TIMEOUT_S = 5.0
# Env attributes the prompt builders and action parsers read (envs/prompts.py, explore/reflection.py, the
# `parse_action` override of envs such as coding); shipped with every reset / replay view.
PROMPT_ATTRIBUTES = ("name", "prompt_template", "compact_prompt", "parse_action")


@dataclasses.dataclass(frozen=True)
class EpisodeError:
  """An episode lost to a crash, a timeout or an env exception; the caller should drop the episode."""

  episode_id: str
  reason: str


@dataclasses.dataclass(frozen=True)
class EnvView:
  """A worker env as the parent needs to see it after a call (`view=True`).

  `attributes` (reset and replay only; None after a step) holds those of PROMPT_ATTRIBUTES the env has and that
  are not None.
  """

  instruction: str
  admissible_actions: list[str] | None
  done: bool  # the last step ended the episode (False right after a reset)
  attributes: dict[str, Any] | None = None


def _view_of(env, done: bool, with_attributes: bool) -> EnvView:
  attributes = None
  if with_attributes:
    attributes = {a: getattr(env, a) for a in PROMPT_ATTRIBUTES if getattr(env, a, None) is not None}
    if inspect.ismethod(attributes.get("parse_action")):
      # A bound method would pickle the whole env; only the text -> action function may cross the pipe.
      raise TypeError(f"{type(env).__name__}.parse_action must be a staticmethod or a module-level function "
                      "to be used through an EnvPool")
  return EnvView(env.instruction, env.admissible_actions(), done, attributes)


def replay_prefix(env, task_id: str, actions: Sequence[str], stop_on_done: bool) -> tuple[list[str], bool]:
  """Reset + actions -> (observations o_0.., whether the last action replayed ended the episode); with
  `stop_on_done` the replay ends after the first action that ends the episode. Workers and in-process envs
  (`pooled.replay_all`) replay through this one function."""
  observations, done = [env.reset(task_id)], False
  for action in actions:
    step = env.step(action)
    observations.append(step.observation)
    done = step.done
    if done and stop_on_done:
      break
  return observations, done


def make_env_from_spec(env_name: str, env_config: dict[str, Any]):
  """A registry name or "module:Factory"."""
  if ":" in env_name:
    module_name, factory = env_name.split(":", 1)
    return getattr(importlib.import_module(module_name), factory)(**env_config)
  from leafe_jax.envs import registry

  return registry.make(env_name, **env_config)


def _worker_main(conn, env_name: str, env_config: dict[str, Any]) -> None:
  """Worker loop: (op, items, options) requests in, one list of per-item results out."""
  envs: dict[str, Any] = {}
  conn.send(("ready", None))
  while True:
    try:
      op, items, options, seq = conn.recv()
    except (EOFError, KeyboardInterrupt):
      return
    if op == "close":
      return
    view = options.get("view", False)
    results = []
    for episode_id, payload in items:
      try:
        if op == "reset":
          env = envs.get(episode_id) or make_env_from_spec(env_name, env_config)
          envs[episode_id] = env
          observation = env.reset(payload)
          results.append((observation, _view_of(env, False, True)) if view else observation)
        elif op == "step":
          step = envs[episode_id].step(payload)
          results.append((step, _view_of(envs[episode_id], step.done, False)) if view else step)
        elif op == "replay":
          task_id, actions = payload
          env = envs.get(episode_id) or make_env_from_spec(env_name, env_config)
          envs[episode_id] = env
          observations, done = replay_prefix(env, task_id, actions, options.get("stop_on_done", False))
          results.append((observations, _view_of(env, done, True)) if view else observations)
        elif op == "snapshot":
          results.append(envs[episode_id].snapshot())
        elif op == "restore":
          envs[episode_id].restore(payload)
          results.append(None)
        elif op == "release":
          envs.pop(episode_id, None)
          results.append(None)
        else:
          raise ValueError(f"unknown pool op {op!r}")
      except Exception as e:
        known = episode_id in envs
        envs.pop(episode_id, None)
        if isinstance(e, KeyError) and not known:  # a KeyError raised inside the env is the env's own error
          reason = f"unknown episode {episode_id!r} on this worker (not reset, or lost)"
        else:
          reason = f"{op} raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
        results.append(EpisodeError(episode_id, reason))
    conn.send(("ok", seq, results))  # the request's number: the parent drops replies of calls it gave up on


@dataclasses.dataclass
class _Worker:
  process: Any
  conn: Any
  episodes: set[str]


class EnvPool:
  """Envs in `num_workers` processes. All methods take parallel lists and return one result per episode."""

  def __init__(self, env_name: str, env_config: dict[str, Any] | None = None, num_workers: int = 2,
               step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S):
    if num_workers < 1:
      raise ValueError(f"EnvPool: num_workers must be >= 1, got {num_workers}")
    self.env_name = env_name
    self.env_config = dict(env_config or {})
    self.step_timeout_s = step_timeout_s
    self._ctx = multiprocessing.get_context("spawn")
    self._workers: list[_Worker | None] = [None] * num_workers
    self._owner: dict[str, int] = {}  # episode id -> worker index
    self.restarts = 0
    self._closed = False
    self._calls = 0  # number of the current call; a reply carries its request's number
    for i in range(num_workers):
      self._start(i)
    for i in range(num_workers):
      self._await_ready(i)

  # --- worker lifecycle --------------------------------------------------------------------------------------
  def _start(self, index: int) -> None:
    parent, child = self._ctx.Pipe()
    process = self._ctx.Process(target=_worker_main, args=(child, self.env_name, self.env_config), daemon=True,
                                name=f"envpool-{self.env_name}-{index}")
    process.start()
    child.close()
    self._workers[index] = _Worker(process, parent, set())

  def _await_ready(self, index: int) -> None:
    worker = self._workers[index]
    if not worker.conn.poll(WORKER_START_TIMEOUT_S):
      raise RuntimeError(f"EnvPool: worker {index} did not start within {WORKER_START_TIMEOUT_S}s")
    try:
      worker.conn.recv()
    except EOFError as e:
      raise RuntimeError(f"EnvPool: worker {index} for {self.env_name!r} died at start "
                         f"(exit code {worker.process.exitcode})") from e

  def _replace(self, index: int) -> list[str]:
    """Kills worker `index`, starts a fresh one, returns the episode ids it held."""
    worker = self._workers[index]
    if worker.process.is_alive():
      worker.process.kill()
    worker.process.join(_KILL_JOIN_TIMEOUT_S)
    worker.conn.close()
    lost = sorted(worker.episodes)
    for episode_id in lost:
      self._owner.pop(episode_id, None)
    self.restarts += 1
    self._start(index)
    self._await_ready(index)
    return lost

  def worker_pids(self) -> list[int]:
    return [w.process.pid for w in self._workers]

  def worker_of(self, episode_id: str) -> int | None:
    return self._owner.get(episode_id)

  @property
  def num_workers(self) -> int:
    return len(self._workers)

  # --- request fan-out ---------------------------------------------------------------------------------------
  def _call(self, op: str, episode_ids: Sequence[str], payloads: Sequence[Any], cost: Sequence[int],
            **options: Any) -> list[Any]:
    """Sends each worker its share, gathers all replies; lost workers give EpisodeErrors."""
    if self._closed:
      raise RuntimeError("EnvPool is closed")
    if len(set(episode_ids)) != len(episode_ids):
      raise ValueError("EnvPool: duplicate episode ids in one call")
    results: list[Any] = [None] * len(episode_ids)
    by_worker: dict[int, list[int]] = {}
    for pos, episode_id in enumerate(episode_ids):
      index = self._owner.get(episode_id)
      if index is None:
        if op not in ("reset", "replay"):
          results[pos] = EpisodeError(episode_id, "unknown episode (never reset, released, or lost with a worker)")
          continue
        index = min(range(self.num_workers), key=lambda i: len(self._workers[i].episodes))
        self._owner[episode_id] = index
        self._workers[index].episodes.add(episode_id)
      by_worker.setdefault(index, []).append(pos)

    deadlines, failed = {}, {}
    self._calls += 1
    call = self._calls
    start = time.monotonic()
    for index, positions in by_worker.items():
      items = [(episode_ids[p], payloads[p]) for p in positions]
      try:
        self._workers[index].conn.send((op, items, options, call))
      except (BrokenPipeError, OSError) as e:
        # Dead before the request reached it: the same crash as an EOF on the reply (whichever the kill races).
        failed[index] = (f"worker {index} crashed ({type(e).__name__} on send, exit code "
                         f"{self._workers[index].process.exitcode})")
        continue
      deadlines[index] = start + self.step_timeout_s * max(1, sum(cost[p] for p in positions))
    pending = {self._workers[i].conn: i for i in deadlines}
    while pending:
      timeout = max(0.0, min(deadlines[i] for i in pending.values()) - time.monotonic())
      ready = multiprocessing.connection.wait(list(pending), timeout=timeout)
      for conn in ready:
        index = pending[conn]
        try:
          _, number, replies = conn.recv()
        except (EOFError, OSError):
          pending.pop(conn)
          code = self._workers[index].process.exitcode
          failed[index] = f"worker {index} crashed (exit code {code})"
          continue
        if number != call:
          # The late reply of an earlier call that was interrupted in this process (e.g. KeyboardInterrupt) before
          # it read it: not this call's; this call's reply follows it.
          continue
        pending.pop(conn)
        for pos, reply in zip(by_worker[index], replies):
          results[pos] = reply
          if isinstance(reply, EpisodeError) or op == "release":
            self._forget(episode_ids[pos])
      now = time.monotonic()
      for conn, index in list(pending.items()):
        if now >= deadlines[index]:
          pending.pop(conn)
          failed[index] = f"worker {index} timed out after {deadlines[index] - start:.1f}s during {op}"
    for index, reason in failed.items():
      # Episodes of this worker that were not in this call are lost too; their next call reports it.
      self._replace(index)
      for pos in by_worker[index]:
        results[pos] = EpisodeError(episode_ids[pos], reason)
    return results

  def _forget(self, episode_id: str) -> None:
    index = self._owner.pop(episode_id, None)
    if index is not None:
      self._workers[index].episodes.discard(episode_id)

  # --- public API --------------------------------------------------------------------------------------------
  def reset(self, episode_ids: Sequence[str], task_ids: Sequence[str], *, view: bool = False) -> list[Any]:
    """Starts (or restarts) each episode on its task; returns first observations (with `view`: (obs, EnvView))."""
    return self._call("reset", episode_ids, list(task_ids), [1] * len(episode_ids), view=view)

  def step(self, episode_ids: Sequence[str], actions: Sequence[str], *,
           view: bool = False) -> list[Step | tuple[Step, EnvView] | EpisodeError]:
    """One action per episode; returns Steps (with `view`: (Step, EnvView)) or EpisodeErrors."""
    return self._call("step", episode_ids, list(actions), [1] * len(episode_ids), view=view)

  def replay(self, episode_id: str, task_id: str, actions: Sequence[str], *, view: bool = False,
             stop_on_done: bool = False) -> Any:
    """Reset + the action prefix; returns the observations [o_0, o_1, ..., o_len(actions)]."""
    (result,) = self.replay_many([episode_id], [task_id], [actions], view=view, stop_on_done=stop_on_done)
    return result

  def replay_many(self, episode_ids: Sequence[str], task_ids: Sequence[str], action_lists: Sequence[Sequence[str]],
                  *, view: bool = False, stop_on_done: bool = False) -> list[Any]:
    """`replay` of several episodes in one call (their workers replay concurrently).

    With `stop_on_done` a replay ends after the first action that ends the episode (an env may refuse steps after
    that), so its observation list is shorter; with `view` each result is (observations, EnvView) and
    `EnvView.done` says whether the episode ended.
    """
    payloads = [(t, list(a)) for t, a in zip(task_ids, action_lists)]
    return self._call("replay", episode_ids, payloads, [1 + len(a) for a in action_lists], view=view,
                      stop_on_done=stop_on_done)

  def snapshot(self, episode_ids: Sequence[str]) -> list[Any]:
    """Env snapshots (envs implementing SnapshotEnv); others get an EpisodeError."""
    return self._call("snapshot", episode_ids, [None] * len(episode_ids), [1] * len(episode_ids))

  def restore(self, episode_ids: Sequence[str], snapshots: Sequence[Any]) -> list[None | EpisodeError]:
    return self._call("restore", episode_ids, list(snapshots), [1] * len(episode_ids))

  def release(self, episode_ids: Sequence[str]) -> None:
    """Drops finished episodes' envs."""
    self._call("release", episode_ids, [None] * len(episode_ids), [1] * len(episode_ids))

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    for worker in self._workers:
      with contextlib.suppress(BrokenPipeError, OSError):
        worker.conn.send(("close", None, None, None))
    for worker in self._workers:
      worker.process.join(_KILL_JOIN_TIMEOUT_S)
      if worker.process.is_alive():
        worker.process.kill()
        worker.process.join(_KILL_JOIN_TIMEOUT_S)
      worker.conn.close()

  def __enter__(self) -> EnvPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self) -> None:
    with contextlib.suppress(Exception):
      self.close()


__all__ = ["EnvPool", "EnvView", "EpisodeError", "make_env_from_spec"]
