"""ALFWorld adapter over the real TextWorld PDDL engine, on hand-written games in tests/data/alfworld."""

import json
import os
import shutil

import pytest

pytest.importorskip("alfworld")
pytest.importorskip("textworld")

from leafe_jax.envs import registry
from leafe_jax.envs.alfworld import ReplayDivergence, task_type_of

DATA = os.path.join(os.path.dirname(__file__), "data", "alfworld")
FRIDGE = "valid_seen/pick_and_place_simple-Apple-None-Fridge-1/trial_T00000000_000001"
COUNTER = "valid_seen/pick_and_place_simple-Apple-None-CounterTop-1/trial_T00000000_000002"
WIN_FRIDGE = ["go to countertop 1", "take apple 1 from countertop 1", "go to fridge 1", "open fridge 1",
              "move apple 1 to fridge 1"]


@pytest.fixture(scope="module")
def env():
  e = registry.make("alfworld", data_dir=DATA)
  yield e
  e.close()


def test_tasks_lists_split(env):
  assert env.tasks("valid_seen") == sorted([FRIDGE, COUNTER])
  assert env.tasks("train") == []
  with pytest.raises(ValueError, match="split"):
    env.tasks("dev")


def test_known_commands_win(env):
  obs = env.reset(FRIDGE)
  assert "countertop 1" in obs and env.instruction == "put an apple in fridge."
  assert task_type_of(FRIDGE) == "pick_and_place_simple"
  assert "go to countertop 1" in env.admissible_actions() and "go to fridge 1" in env.admissible_actions()
  steps = [env.step(a) for a in WIN_FRIDGE]
  assert [s.success for s in steps] == [False] * 4 + [True] and steps[-1].done


def test_invalid_command_is_nothing_happens(env):
  env.reset(FRIDGE)
  step = env.step("fly to the moon")
  assert step.observation == "Nothing happens." and not step.done


def test_replay_reproduces_observations(env):
  recorded = env.replay_prefix(FRIDGE, WIN_FRIDGE[:3])
  assert env.replay_prefix(FRIDGE, WIN_FRIDGE[:3], expected_observations=recorded) == recorded


def test_wrong_game_replay_is_caught(env):
  recorded = env.replay_prefix(FRIDGE, WIN_FRIDGE[:2])
  with pytest.raises(ReplayDivergence, match="observation"):
    env.replay_prefix(COUNTER, WIN_FRIDGE[:2], expected_observations=recorded)


def test_missing_game_names_the_file(env):
  with pytest.raises(FileNotFoundError, match="nope"):
    env.reset("valid_seen/nope/trial")


def test_pool_survives_killed_worker():
  import signal

  from leafe_jax.envs.pool import EnvPool, EpisodeError

  with EnvPool("alfworld", {"data_dir": DATA}, num_workers=2) as pool:
    pool.reset(["a", "b"], [FRIDGE, FRIDGE])
    victim = pool.worker_of("a")
    assert victim != pool.worker_of("b")
    os.kill(pool.worker_pids()[victim], signal.SIGKILL)
    results = pool.step(["a", "b"], [WIN_FRIDGE[0]] * 2)
    assert isinstance(results[0], EpisodeError)
    assert results[1].observation.startswith("You arrive at countertop 1")
    assert pool.step(["b"], [WIN_FRIDGE[1]])[0].observation.startswith("You pick up the apple 1")


@pytest.mark.parametrize("task", [FRIDGE, COUNTER])
def test_gold_actions_are_a_plan_that_wins_the_game(env, task):
  plan = env.gold_actions(task)
  assert plan and all(isinstance(a, str) for a in plan)
  env.reset(task)
  steps = [env.step(a) for a in plan]
  assert steps[-1].success and not any(s.success for s in steps[:-1])


def test_early_experience_world_model_targets_on_real_games(env):
  from leafe_jax.baselines import early_experience as ee

  builder = ee.Builder(env, None, ee.Settings(methods=("iwm",), iwm_alternatives=2, history_length=0))
  examples = builder.build([FRIDGE])
  plan = env.gold_actions(FRIDGE)
  assert [e.response for e in examples if e.kind == "sft"] == [f"<action>{a}</action>" for a in plan]
  iwm = [e for e in examples if e.kind == "iwm"]
  assert len(iwm) == 3 * len(plan) and builder.stats["replay_divergences"] == 0
  for example in iwm[:6]:  # the first two states: reference = a fresh reset, the expert prefix, the action
    action = example.messages[-1]["content"].rsplit("takes the action: ", 1)[1].split("\n")[0]
    env.reset(FRIDGE)
    for a in plan[:example.step]:
      env.step(a)
    assert env.step(action).observation == example.response


ALFWORLD_DATA = os.path.join(DATA, "json_2.1.1")
FRIDGE = "valid_seen/pick_and_place_simple-Apple-None-Fridge-1/trial_T00000000_000001"


def _copy_game(root, src, dst, solvable=True):
  shutil.copytree(os.path.join(ALFWORLD_DATA, src), os.path.join(root, "json_2.1.1", dst))
  game = os.path.join(root, "json_2.1.1", dst, "game.tw-pddl")
  with open(game) as f:
    data = json.load(f)
  data["solvable"] = solvable
  with open(game, "w") as f:
    json.dump(data, f)


def test_alfworld_tasks_match_the_packages_game_list(tmp_path):
  from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

  root = str(tmp_path)
  _copy_game(root, FRIDGE, FRIDGE)
  _copy_game(root, FRIDGE, "valid_seen/pick_and_place_simple-Apple-None-Fridge-2/trial_T00000000_000009",
             solvable=False)
  _copy_game(root, FRIDGE, "valid_seen/pick_heat_then_place_in_recep-AppleSliced-None-Fridge-1/trial_T1")
  _copy_game(root, FRIDGE, "valid_seen/pick_and_place_with_movable_recep-Apple-Bowl-Fridge-1/trial_T2")
  config = {"env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6]},
            "dataset": {"eval_id_data_path": os.path.join(root, "json_2.1.1", "valid_seen"), "num_eval_games": -1}}
  reference = AlfredTWEnv(config, train_eval="eval_in_distribution").game_files
  expected = sorted(os.path.relpath(os.path.dirname(f), os.path.join(root, "json_2.1.1")) for f in reference)
  assert expected == [FRIDGE]
  assert registry.make("alfworld", data_dir=root).tasks("valid_seen") == expected
