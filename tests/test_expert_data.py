"""Noisy-expert warm-up data: solver play, the fatal step, and the examples the warm policy is trained on."""

import dataclasses
import random

import ml_collections
import pytest

from leafe_jax.baselines import expert_stage
from leafe_jax.baselines.sokoban_expert import best_other_action, noisy_expert_trajectory
from leafe_jax.envs.sokoban import SokobanEnv, load_xsb, solve
from leafe_jax.explore import reflection

# A box two pushes from its target: right, right wins; pushing it anywhere else first loses within the limit.
ROOM = load_xsb("#######\n#     #\n# @$ .#\n#     #\n#######")[0]


def _env(max_steps=4):
  return SokobanEnv(level=ROOM, max_steps=max_steps, compact_prompt=True)


def _solvable_in_remaining_steps(actions, max_steps):
  """Independent check: replay `actions` on a fresh env, then ask the solver for a plan in the steps left."""
  env = _env(max_steps)
  env.reset("level")
  for action in actions:
    env.step(action)
  snap = env.snapshot()
  state = dataclasses.replace(env.level, player=snap.player, boxes=snap.boxes)
  return solve(state, max_steps=max_steps - len(actions)) is not None


def test_mistake_free_expert_plays_the_solver_and_wins():
  trajectory = noisy_expert_trajectory(_env(), "level", mistake_prob=0.0, rng=random.Random(0))
  assert trajectory.success
  assert trajectory.fatal_step is None
  assert [t.action for t in trajectory.turns] == ["right", "right", "right"][: len(trajectory.turns)]
  assert all(t.action == t.optimal_action for t in trajectory.turns)


def test_fatal_step_is_the_first_action_after_which_the_room_is_lost():
  failures = 0
  for seed in range(20):
    trajectory = noisy_expert_trajectory(_env(), "level", mistake_prob=0.7, rng=random.Random(seed))
    failures += not trajectory.success
    actions = [t.action for t in trajectory.turns]
    lost_after = [k for k in range(1, len(actions) + 1) if not _solvable_in_remaining_steps(actions[:k], 4)]
    if trajectory.success:
      assert trajectory.fatal_step is None
    else:
      assert lost_after, "a failed trajectory must have lost the room at some step"
      assert trajectory.fatal_step == lost_after[0]
  assert 0 < failures < 20  # both outcomes were exercised


def _cfg(**overrides):
  cfg = expert_stage.default_config()
  cfg.update(overrides)
  return cfg


def test_failed_trajectory_gives_a_reflection_naming_the_fatal_step_and_repeats_it():
  env = _env()
  rng = random.Random(0)
  trajectory = next(t for t in (noisy_expert_trajectory(env, "level", 0.7, rng) for _ in range(50))
                    if not t.success and t.fatal_step is not None)
  fatal = trajectory.turns[trajectory.fatal_step - 1]
  e = f"avoid {fatal.action}"
  examples = expert_stage.build_examples(env, _cfg(reflection_repeats=3, experience_examples_per_task=0),
                                         trajectory, random.Random(1))
  reflections = [response for _, response, _ in examples if response.startswith("<rollback_step>")]
  assert reflections == [reflection.format_reflection(trajectory.fatal_step, e)] * 3
  # The prompt is the one the explorer builds after this rollout (final observation included): replay it.
  replay = _env()
  observations = [replay.reset("level")] + [replay.step(t.action).observation for t in trajectory.turns]
  explorer_prompt = reflection.build_reflection_prompt(
      replay, instruction=replay.instruction, steps=list(zip(observations[:-1], [t.action for t in trajectory.turns])),
      final_observation=observations[-1], outcome="failure")
  assert [m for m, r, _ in examples if r.startswith("<rollback_step>")] == [explorer_prompt] * 3
  assert reflection.parse_reflection(reflections[0], len(trajectory.turns)) == (trajectory.fatal_step, e)
  # The corrected action at the fatal step, with e in the prompt, is the solver's action.
  with_e = [(messages, response) for messages, response, experience in examples if experience == e]
  assert with_e and all(response == f"<action>{fatal.optimal_action}</action>" for _, response in with_e)
  assert all(e in messages[-1]["content"] for messages, _ in with_e)


def test_acting_examples_cover_every_turn_without_experience():
  env = _env()
  trajectory = noisy_expert_trajectory(env, "level", 0.0, random.Random(0))
  examples = expert_stage.build_examples(env, _cfg(experience_examples_per_task=0), trajectory, random.Random(0))
  assert [response for _, response, _ in examples] == [f"<action>{t.action}</action>" for t in trajectory.turns]
  assert all(experience == "" and "avoid" not in messages[-1]["content"] for messages, _, experience in examples)


def test_acting_in_lost_states_off_leaves_out_exactly_the_moves_after_the_room_was_lost():
  env = _env()
  rng = random.Random(3)
  trajectory = next(t for t in (noisy_expert_trajectory(env, "level", 0.7, rng) for _ in range(50))
                    if t.fatal_step is not None and t.fatal_step < len(t.turns))
  acting = lambda cfg: [(m[-1]["content"], r) for m, r, e in expert_stage.build_examples(env, cfg, trajectory,
                                                                                            random.Random(1))
                        if not e and not r.startswith("<rollback_step>")]
  every = acting(_cfg(experience_examples_per_task=0))
  live = acting(_cfg(experience_examples_per_task=0, acting_in_lost_states=False))
  # Turns after the fatal step are played in a lost room: the solver has no move there (independent check).
  lost = [i for i, t in enumerate(trajectory.turns)
          if not _solvable_in_remaining_steps([u.action for u in trajectory.turns[:i]], 4)]
  assert lost and lost == [t.step - 1 for t in trajectory.turns if t.optimal_action is None]
  assert live == [example for i, example in enumerate(every) if i not in lost]


def test_stage_writes_tokenizer_records_and_is_skipped_when_done(tmp_path):
  from leafe_jax.data import records

  config = ml_collections.ConfigDict({"expert_data": _cfg(
      num_tasks=4, trajectories_per_task=1, tokenizer_vocab_size=300,
      env_config=ml_collections.ConfigDict({"dim": (6, 6), "num_boxes": 1, "max_steps": 8, "compact_prompt": True}),
  )})
  stage_dir = str(tmp_path / "expert_data")
  expert_stage.run(config, str(tmp_path), stage_dir)
  manifest = records.read_manifest(str(tmp_path / "expert_data" / "records"))
  assert manifest["counts"]["sft"] > 0
  assert (tmp_path / "expert_data" / "tokenizer" / "tokenizer.json").exists()
  stamp = (tmp_path / "expert_data" / "DONE").stat().st_mtime_ns
  expert_stage.run(config, str(tmp_path), stage_dir)  # complete: not redone
  assert (tmp_path / "expert_data" / "DONE").stat().st_mtime_ns == stamp
  config.expert_data.mistake_prob = 0.3  # other records than the finished ones
  with pytest.raises(ValueError, match=r"expert_data: the records and tokenizer in .* \(mistake_prob changed"):
    expert_stage.run(config, str(tmp_path), stage_dir)


def test_end_on_irreversible_stops_at_the_deadlocking_push_which_is_the_fatal_step():
  ended_at_deadlock = 0
  for seed in range(30):
    env = _env(max_steps=8)
    trajectory = noisy_expert_trajectory(env, "level", 0.7, random.Random(seed), end_on_irreversible=True)
    # Independent replay: the first step after which the env reports a deadlock.
    replay = _env(max_steps=8)
    replay.reset("level")
    deadlocks = [i + 1 for i, t in enumerate(trajectory.turns) if replay.step(t.action).info["irreversible"]]
    if trajectory.success:
      assert not deadlocks
      continue
    if deadlocks:
      ended_at_deadlock += 1
      assert deadlocks == [len(trajectory.turns)]  # the episode ended at its first deadlock
      assert trajectory.fatal_step <= len(trajectory.turns)
      assert not _solvable_in_remaining_steps([t.action for t in trajectory.turns], 8)
    else:
      assert len(trajectory.turns) == 8  # a failure without a deadlock runs to the step limit
    # Without the switch the same play runs on past the deadlock to the step limit.
    same = noisy_expert_trajectory(_env(max_steps=8), "level", 0.7, random.Random(seed))
    assert same.turns[: len(trajectory.turns)] == trajectory.turns
    assert len(same.turns) == 8 or same.success
  assert ended_at_deadlock > 0


# The wall above the player's start makes "up" a wasted step there, one shorter than any real detour.
WALLED = load_xsb("#######\n###   #\n# @$ .#\n#     #\n#######")[0]


def _walled_env(max_steps):
  env = SokobanEnv(level=WALLED, max_steps=max_steps, compact_prompt=True)
  env.reset("level")
  return env


def test_best_other_move_is_the_shortest_real_detour_and_leaves_the_env_as_it_was():
  # From the start, avoiding "right": "up" bumps the wall (never chosen although one step shorter), "down" and
  # "left" each need 3 more moves; ACTIONS order picks "down".
  env = _walled_env(4)
  before = env.snapshot()
  assert best_other_action(env, avoid="right") == "down"
  assert env.snapshot() == before
  # With 3 steps in all, no detour finishes in time.
  assert best_other_action(_walled_env(3), avoid="right") is None
  # Walls on every side but the right: nothing else is a move.
  env = SokobanEnv(level=load_xsb("######\n#@$ .#\n######")[0], max_steps=6, compact_prompt=True)
  env.reset("level")
  assert best_other_action(env, avoid="right") is None


def test_overriding_experience_examples_avoid_the_solver_move_and_answer_the_best_other():
  env = _walled_env(4)
  trajectory = noisy_expert_trajectory(env, "level", 0.0, random.Random(0))
  assert [t.action for t in trajectory.turns] == ["right", "right"]
  examples = expert_stage.build_examples(
      env, _cfg(experience_examples_per_task=0, overriding_experience_examples_per_task=2), trajectory,
      random.Random(0))
  turn_of_grid = {t.observation: t for t in trajectory.turns}
  with_e = {turn_of_grid[m[-1]["content"].split("\n\n")[0]].step: (m[-1]["content"], r, e)
            for m, r, e in examples if e}
  assert sorted(with_e) == [1, 2]
  assert all(e == "avoid right" and "avoid right" in prompt for prompt, _, e in with_e.values())
  # Hand-computed: at the start as above; after one push (3 steps left) "up", then down and right, finishes.
  assert with_e[1][1] == "<action>down</action>" and with_e[2][1] == "<action>up</action>"


def test_no_overriding_experience_examples_by_default():
  env = _walled_env(4)
  trajectory = noisy_expert_trajectory(env, "level", 0.0, random.Random(0))
  examples = expert_stage.build_examples(env, _cfg(experience_examples_per_task=2), trajectory, random.Random(0))
  with_e = [r for m, r, e in examples if e]
  assert with_e == ["<action>right</action>"] * 2  # "avoid <a mistake>" -> the solver's move, never a detour
