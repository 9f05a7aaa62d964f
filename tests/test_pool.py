"""EnvPool: results match in-process envs; crashed and hung workers are replaced, other episodes go on."""

import os
import signal
import time

import pytest

from leafe_jax.envs import pooled
from leafe_jax.envs.base import Step
from leafe_jax.envs.pool import EnvPool, EnvView, EpisodeError
from leafe_jax.envs.sokoban import SokobanEnv

# Keeps tests quick while giving a spawned worker on a loaded 2-core host time to answer real requests.
STEP_TIMEOUT_S = 10.0


class SleepyEnv:
  """Test-only env: action "hang" never returns, "boom" raises, "end" ends the episode, anything else echoes."""

  name = "sleepy"

  def __init__(self, tag: str = ""):
    self.tag = tag
    self.count = 0

  def tasks(self, split):
    return ["t0"]

  def reset(self, task_id):
    self.count, self.ended = 0, False
    return f"{self.tag}{task_id}:0"

  def step(self, action):
    if action == "hang":
      time.sleep(3600)
    if action == "boom" or self.ended:
      raise ValueError("boom")
    self.count += 1
    self.ended = action == "end"
    return Step(f"{action}:{self.count}", 0.0, self.ended, False, {"pid": os.getpid()})

  @property
  def instruction(self):
    return "echo"

  def admissible_actions(self):
    return None


SLEEPY = f"{__name__}:SleepyEnv"


@pytest.fixture(scope="module")
def sokoban_pool():
  pool = EnvPool("sokoban", {"max_steps": 30}, num_workers=2, step_timeout_s=STEP_TIMEOUT_S)
  yield pool
  pool.close()


def test_pool_matches_in_process_env_and_spreads_episodes(sokoban_pool):
  pool = sokoban_pool
  ids, tasks = ["e0", "e1", "e2", "e3"], ["seed:1", "seed:2", "seed:3", "seed:1"]
  observations = pool.reset(ids, tasks)
  local = [SokobanEnv(max_steps=30) for _ in ids]
  assert observations == [env.reset(t) for env, t in zip(local, tasks)]
  assert {pool.worker_of(i) for i in ids} == {0, 1}
  live = list(range(len(ids)))
  for actions in (["up", "left", "down", "right"], ["left", "left", "nope", "up"], ["down"] * 4):
    steps = pool.step([ids[i] for i in live], [actions[i] for i in live])
    expected = [local[i].step(actions[i]) for i in live]
    assert steps == expected
    live = [i for i, s in zip(live, expected) if not s.done]
  replayed = pool.replay("e9", "seed:2", ["up", "left", "left"])
  fresh = SokobanEnv(max_steps=30)
  assert replayed == [fresh.reset("seed:2")] + [fresh.step(a).observation for a in ["up", "left", "left"]]


def test_pool_snapshot_restore(sokoban_pool):
  pool = sokoban_pool
  pool.reset(["a"], ["seed:5"])
  pool.step(["a"], ["up"])
  (snap,) = pool.snapshot(["a"])
  (first,) = pool.step(["a"], ["left"])
  assert pool.restore(["a"], [snap]) == [None]
  assert pool.step(["a"], ["left"]) == [first]


def test_views_and_pooled_env_mirror_the_in_process_env(sokoban_pool):
  pool = sokoban_pool
  local = SokobanEnv(max_steps=30)
  ((first, view),) = pool.reset(["v0"], ["seed:4"], view=True)
  assert first == local.reset("seed:4")
  assert view == EnvView(local.instruction, local.admissible_actions(), False,
                         {"name": "sokoban", "prompt_template": local.prompt_template})
  ((step, view),) = pool.step(["v0"], ["up"], view=True)
  assert step == local.step("up") and view.attributes is None and not view.done
  # A PooledEnv reads like the in-process env, and a batch of pooled and in-process envs steps in one call.
  env, other = pooled.PooledEnv(pool), SokobanEnv(max_steps=30)
  assert pooled.reset_all([env, other], ["seed:4", "seed:4"]) == [first, first]
  assert env.prompt_template == local.prompt_template and env.name == "sokoban"
  assert env.instruction == local.instruction and env.admissible_actions() == local.admissible_actions()
  assert pooled.step_all([env, other], ["up", "up"]) == [step, step]
  (replay,) = pooled.replay_all([env], ["seed:4"], [["up", "left"]])
  fresh = SokobanEnv(max_steps=30)
  assert replay == pooled.Replay([fresh.reset("seed:4")] + [fresh.step(a).observation for a in ["up", "left"]], False)
  pooled.release_all([env, other])
  assert pool.worker_of(env.episode_id) is None


def test_replay_stops_where_the_episode_ends_and_a_lost_pooled_env_raises():
  with EnvPool(SLEEPY, {}, num_workers=1, step_timeout_s=STEP_TIMEOUT_S) as pool:
    (observations, view), = pool.replay_many(["a"], ["t"], [["go", "end", "go"]], view=True, stop_on_done=True)
    assert observations == ["t:0", "go:1", "end:2"] and view.done
    assert isinstance(pool.replay("b", "t", ["end", "go"]), EpisodeError)  # without stop_on_done: the env raises
    env = pooled.PooledEnv(pool)
    env.reset("t")
    with pytest.raises(pooled.EpisodeLostError, match="boom"):
      env.step("boom")


def test_killed_worker_reports_its_episodes_others_go_on():
  with EnvPool(SLEEPY, {"tag": "x"}, num_workers=2, step_timeout_s=STEP_TIMEOUT_S) as pool:
    ids = ["a", "b", "c", "d"]
    pool.reset(ids, ["t"] * 4)
    victim = pool.worker_of("a")
    survivors = [i for i in ids if pool.worker_of(i) != victim]
    lost = [i for i in ids if pool.worker_of(i) == victim]
    old_pid = pool.worker_pids()[victim]
    os.kill(old_pid, signal.SIGKILL)
    results = pool.step(ids, ["go"] * 4)
    for episode_id, result in zip(ids, results):
      if episode_id in lost:
        assert isinstance(result, EpisodeError) and "crashed" in result.reason
      else:
        assert result.observation == "go:1"
    assert pool.restarts == 1 and pool.worker_pids()[victim] != old_pid
    # The survivors keep their state; lost episodes are unknown until reset, then work on the new worker.
    again = pool.step(survivors + lost, ["go"] * 4)
    assert [r.observation for r in again[:len(survivors)]] == ["go:2"] * len(survivors)
    assert all(isinstance(r, EpisodeError) and "unknown episode" in r.reason for r in again[len(survivors):])
    assert pool.reset(lost, ["t"] * len(lost)) == ["xt:0"] * len(lost)
    assert all(r.observation == "go:1" for r in pool.step(lost, ["go"] * len(lost)))


def test_hung_worker_is_replaced_after_timeout():
  with EnvPool(SLEEPY, {}, num_workers=2, step_timeout_s=3.0) as pool:
    pool.reset(["slow", "fast"], ["t", "t"])
    assert pool.worker_of("slow") != pool.worker_of("fast")
    hung_pid = pool.worker_pids()[pool.worker_of("slow")]
    slow, fast = pool.step(["slow", "fast"], ["hang", "go"])  # returns although the env sleeps for an hour
    assert isinstance(slow, EpisodeError) and "timed out" in slow.reason
    assert fast.observation == "go:1"
    assert hung_pid not in pool.worker_pids() and pool.restarts == 1
    assert pool.reset(["slow"], ["t"]) == ["t:0"]


def test_env_exception_errors_only_that_episode():
  with EnvPool(SLEEPY, {}, num_workers=1, step_timeout_s=STEP_TIMEOUT_S) as pool:
    pool.reset(["a", "b"], ["t", "t"])
    bad, good = pool.step(["a", "b"], ["boom", "go"])
    assert isinstance(bad, EpisodeError) and "ValueError: boom" in bad.reason
    assert good.observation == "go:1" and pool.restarts == 0
    with pytest.raises(ValueError, match="duplicate"):
      pool.step(["b", "b"], ["go", "go"])


class KeyErrorEnv:
  """Test-only env whose step raises KeyError (a bug inside an env, e.g. a missing dict entry)."""

  name = "keyerror"

  def tasks(self, split):
    return ["t"]

  def reset(self, task_id):
    return "start"

  def step(self, action):
    return {}["missing-" + action]

  @property
  def instruction(self):
    return ""

  def admissible_actions(self):
    return None


def test_pool_reports_an_env_keyerror_as_the_env_error():
  with EnvPool(f"{__name__}:KeyErrorEnv", {}, num_workers=1, step_timeout_s=60.0) as pool:
    pool.reset(["a"], ["t"])
    (result,) = pool.step(["a"], ["x"])
    assert isinstance(result, EpisodeError)
    assert "KeyError" in result.reason and "missing-x" in result.reason and "unknown episode" not in result.reason
    (again,) = pool.step(["a"], ["x"])  # the env was dropped: now the episode is unknown
    assert isinstance(again, EpisodeError) and "unknown episode" in again.reason


class SlowEchoEnv:
  """Test-only env: step(action) sleeps for actions starting with "slow" and echoes the action."""

  name = "slowecho"

  def tasks(self, split):
    return ["t"]

  def reset(self, task_id):
    return f"{task_id}:0"

  def step(self, action):
    if action.startswith("slow"):
      time.sleep(1.0)
    return Step(f"echo {action}", 0.0, False, False, {})

  @property
  def instruction(self):
    return ""

  def admissible_actions(self):
    return None


class _Interrupted(Exception):
  pass


def test_a_call_interrupted_in_the_parent_does_not_shift_replies_onto_the_next_call():
  """E.g. Ctrl-C (KeyboardInterrupt) in a notebook during a long step, then the pool is used again: the late reply
  of the interrupted call was read as the reply of the next one, i.e. given to the wrong episodes/actions."""
  def interrupt(signum, frame):
    raise _Interrupted()

  with EnvPool(f"{__name__}:SlowEchoEnv", {}, num_workers=1, step_timeout_s=30.0) as pool:
    pool.reset(["a", "b"], ["t", "t"])
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
      signal.setitimer(signal.ITIMER_REAL, 0.3)
      with pytest.raises(_Interrupted):
        pool.step(["a", "b"], ["slow-1", "slow-2"])
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, old)
    (step,) = pool.step(["b"], ["fast-3"])
    assert step.observation == "echo fast-3"
    a, b = pool.step(["a", "b"], ["fast-4", "fast-5"])
    assert (a.observation, b.observation) == ("echo fast-4", "echo fast-5")
