"""ScienceWorld adapter over the real package (JVM): gold sequences win, replay is exact, bad input never raises."""

import pickle

import pytest

pytest.importorskip("scienceworld")

from leafe_jax.envs import registry
from leafe_jax.envs import scienceworld as sw_module
from leafe_jax.envs.pool import EnvPool, EpisodeError
from leafe_jax.envs.prompts import build_action_prompt
from leafe_jax.envs.scienceworld import parse_task_id
from leafe_jax.eval import rollout

GOLD_TASKS = ("find-living-thing/0", "use-thermometer/0")


@pytest.fixture(scope="module")
def env():
  e = registry.make("scienceworld")
  yield e
  e.close()


@pytest.mark.parametrize("task_id", GOLD_TASKS)
def test_gold_sequence_reaches_success(env, task_id):
  gold = env.gold_actions(task_id)
  env.reset(task_id)
  assert env.instruction.startswith("Your task is")
  step = None
  for action in gold:
    # What a model writing the gold action in its answer sends: the env's parser, as explore and eval call it
    # (matching against the listed selection turned most gold actions, e.g. "pick up metal pot", into None).
    sent = rollout._parse(env, f"<think>next</think>\n<action>{action}</action>")
    assert sent == action
    step = env.step(sent)
    if step.done:
      break
  assert step.success and step.done and step.info["score"] == 100


def test_replay_of_prefix_reproduces_observations(env):
  task_id = GOLD_TASKS[0]
  gold = env.gold_actions(task_id)[:5]
  first = [env.reset(task_id)] + [env.step(a).observation for a in gold]
  second = [env.reset(task_id)] + [env.step(a).observation for a in gold]
  assert first == second


def test_invalid_action_returns_engine_message(env):
  env.reset(GOLD_TASKS[0])
  step = env.step("fly to the moon")
  assert "No known action matches" in step.observation
  assert not step.success and not step.done
  admissible = env.admissible_actions()
  assert admissible == sorted(admissible, key=lambda a: (len(a.split()), a))
  assert len(admissible) <= env.max_admissible and "look around" in admissible
  prompt = build_action_prompt(env, instruction=env.instruction, history=[("o", "fly to the moon")],
                               current_observation=step.observation, admissible_actions=admissible,
                               step_count=1, history_length=3)
  assert "<action>" in prompt[-1]["content"] and env.instruction in prompt[-1]["content"]


def test_bad_task_id_names_the_format():
  with pytest.raises(ValueError, match="task-name"):
    parse_task_id("boil")


def test_pool_survives_killed_worker():
  import os
  import signal

  with EnvPool("scienceworld", {}, num_workers=2) as pool:
    obs = pool.reset(["a", "b"], [GOLD_TASKS[0], GOLD_TASKS[0]])
    assert obs[0] == obs[1]
    victim = pool.worker_of("a")
    assert victim != pool.worker_of("b")
    os.kill(pool.worker_pids()[victim], signal.SIGKILL)
    results = pool.step(["a", "b"], ["look around", "look around"])
    assert isinstance(results[0], EpisodeError)
    assert not isinstance(results[1], EpisodeError) and "hallway" in results[1].observation


def test_dead_jvm_is_relaunched_and_episode_restored(env):
  task_id = GOLD_TASKS[0]
  gold = env.gold_actions(task_id)
  env.reset(task_id)
  expected = [env.step(a).observation for a in gold[:3]]
  env.reset(task_id)
  for a in gold[:2]:
    env.step(a)
  restarts = env.jvm_restarts
  env.engine._gateway.java_process.kill()
  env.engine._gateway.java_process.wait()
  assert env.step(gold[2]).observation == expected[2]
  assert env.jvm_restarts == restarts + 1


def _close_idle_jvms():
  """Start from no idle JVM: one left by an earlier test may be dead (killed on purpose); an env taking it would
  restart, and the restart's logged exception keeps that env alive past `del`."""
  while sw_module._IDLE_ENGINES:
    sw_module._IDLE_ENGINES.pop().close()


def test_dropped_env_hands_its_jvm_to_the_next():
  _close_idle_jvms()
  first = registry.make("scienceworld")
  first.reset(GOLD_TASKS[0])
  engine = first.engine  # the live JVM (a py4j hiccup under load may have restarted the first one)
  # What dropping the env does (`__del__`), called directly: a logged py4j error can hold a frame that keeps
  # `first` alive past `del`, which made this test depend on garbage-collection timing.
  first.release()
  del first
  second = registry.make("scienceworld")
  assert second.engine is engine  # taken from the idle pool, checked before any call that could restart it
  assert second.reset(GOLD_TASKS[1])
  second.close()


def test_variations_per_task_keeps_the_lowest_ids_of_every_task_name():
  names = ["boil", "find-living-thing"]
  full = registry.make("scienceworld", task_names=names)
  capped = registry.make("scienceworld", task_names=names, variations_per_task=3)
  try:
    everything, few = full.tasks("test"), capped.tasks("test")
  finally:
    full.close()
    capped.close()
  for name in names:
    ids = sorted((t for t in everything if t.startswith(name + "/")), key=lambda t: int(t.split("/")[1]))
    assert [t for t in few if t.startswith(name + "/")] == ids[:3]
  assert len(few) == 6


def test_early_experience_replays_gold_prefixes_exactly(env):
  from leafe_jax.baselines import early_experience as ee

  builder = ee.Builder(env, None, ee.Settings(methods=("iwm",), iwm_alternatives=1, history_length=0))
  examples = builder.build([GOLD_TASKS[0]])
  states = builder.stats["states"]
  assert states > 0 and builder.stats["expert_failed"] == 0 and builder.stats["replay_divergences"] == 0
  assert sum(e.kind == "sft" for e in examples) == states and sum(e.kind == "iwm" for e in examples) == 2 * states


def test_an_idle_jvm_that_died_is_not_handed_out():
  _close_idle_jvms()
  first = registry.make("scienceworld")
  first.reset(GOLD_TASKS[0])
  dead = first.engine
  first.release()
  assert sw_module._IDLE_ENGINES == [dead]
  dead._gateway.java_process.kill()
  dead._gateway.java_process.wait()
  second = registry.make("scienceworld")
  assert second.reset(GOLD_TASKS[0]) and second.engine is not dead and second.jvm_restarts == 0
  second.close()


def _listed(n):
  """n valid actions as ScienceWorld lists them: short general ones first (by word count), long fills after."""
  return ["look around", "inventory"] + [f"look at thing {i}" for i in range(n)] + ["pick up metal pot",
                                                                                   "move metal pot to sink",
                                                                                   "focus on substance in metal pot"]


def test_scienceworld_valid_action_outside_the_shown_selection_is_not_rejected():
  env = sw_module.ScienceWorldEnv()  # no JVM is started until the engine is used
  env._valid = _listed(300)
  shown = env.admissible_actions()
  assert "pick up metal pot" not in shown  # beyond max_admissible=200
  text = "<think>The pot is on the counter.</think>\n<action>pick up metal pot</action>"
  assert rollout._parse(env, text) == "pick up metal pot"  # what explore and eval send to the env
  assert rollout._parse(env, "<action>Look around.</action>") == "Look around"
  assert rollout._parse(env, "look around") == "look around"  # a bare reply, and Early Experience's listed entries
  assert rollout._parse(env, "<think>no action given") is None
  assert rollout._parse(env, "I think the pot\nis hot") is None
  pickle.loads(pickle.dumps(env.parse_action))  # crosses an EnvPool (a staticmethod, not a bound method)
