"""Sokoban rules, generation, solver, deadlocks, rendering and XSB parsing."""

import pytest

from leafe_jax.envs import INVALID_ACTION, SnapshotEnv, make
from leafe_jax.envs.sokoban import (
    Level,
    SokobanEnv,
    XsbError,
    apply_lurd,
    dead_squares,
    is_irreversible,
    load_xsb,
    render_text,
    solve,
    to_xsb,
)
from leafe_jax.envs.sokoban.env import shipped_levels

LURD_ACTION = {"u": "up", "d": "down", "l": "left", "r": "right"}


def level(text: str) -> Level:
  (lv,) = load_xsb(text)
  return lv


def env_of(text: str, max_steps: int = 50) -> SokobanEnv:
  env = SokobanEnv(level=level(text), max_steps=max_steps)
  env.reset()
  return env


def play(env: SokobanEnv, solution: str):
  step = None
  for ch in solution:
    step = env.step(LURD_ACTION[ch.lower()])
  return step


# --- rules ----------------------------------------------------------------------------------------------------
def test_move_into_wall_is_a_step_with_no_change():
  env = env_of("#####\n#@$.#\n#####")
  before = env.render()
  step = env.step("up")
  assert step.observation == before
  assert step.reward == pytest.approx(-0.1)
  assert not step.info["moved_player"] and not step.done
  assert step.info["steps"] == 1


def test_push_into_wall_and_into_box_is_blocked():
  env = env_of("######\n#@$$.#\n#---.#\n######")
  before = env.render()
  assert env.step("right").observation == before  # box pushed into another box
  env = env_of("#####\n#-$@#\n#.--#\n#####")
  env.step("left")  # box at the left wall now
  before = env.render()
  step = env.step("left")
  assert step.observation == before and not step.info["moved_box"]


def test_box_onto_and_off_target_reward_terms():
  env = env_of("#######\n#@$.-.#\n#--$--#\n#######")
  on = env.step("right")
  assert on.info["reward_terms"] == {"step": -0.1, "box_on_target": 1.0, "box_off_target": 0.0, "finished": 0.0}
  assert on.reward == pytest.approx(0.9) and on.info["boxes_on_target"] == 1
  off = env.step("right")
  assert off.info["reward_terms"]["box_off_target"] == -1.0
  assert off.reward == pytest.approx(-1.1) and off.info["boxes_on_target"] == 0


def test_win_gives_ten_and_ends():
  env = env_of("#####\n#@$.#\n#####")
  step = env.step("right")
  assert step.success and step.done
  assert step.reward == pytest.approx(-0.1 + 1.0 + 10.0)


def test_invalid_action_counts_as_step_and_keeps_state():
  env = env_of("#####\n#@$.#\n#####", max_steps=2)
  grid = env.render()
  step = env.step("jump")
  assert step.observation.startswith(INVALID_ACTION) and step.observation.endswith(grid)
  assert step.info["invalid_action"] and step.reward == pytest.approx(-0.1)
  assert env.step("  LEFT ").done  # canonical matching is case/space tolerant; max_steps=2 reached


def test_rendering_symbols():
  # Player on target shows S, box on target √, empty target O, box X, floor _, player P.
  lv = level("######\n#+$--#\n#-*--#\n######")
  assert render_text(lv, lv.player, lv.boxes) == "######\n#SX__#\n#_√__#\n######"
  assert render_text(lv, lv.player + 2, lv.boxes) == "######\n#OXP_#\n#_√__#\n######"


# --- generation -----------------------------------------------------------------------------------------------
def test_same_seed_same_room_and_seeds_differ():
  a, b = SokobanEnv(), SokobanEnv()
  rooms = [a.reset(f"seed:{s}") for s in range(12)]
  assert rooms == [b.reset(f"seed:{s}") for s in range(12)]
  assert len(set(rooms)) == len(rooms)


def test_task_splits_follow_verl_agent_ranges_and_are_prefix_stable():
  env = SokobanEnv()
  train, test = env.tasks("train", n=50), env.tasks("test", n=50)
  assert env.tasks("train", n=20) == train[:20] and env.tasks("test", n=20) == test[:20]
  assert all(0 <= int(t.split(":")[1]) < 2**16 for t in train)
  assert all(2**16 <= int(t.split(":")[1]) < 2**32 for t in test)
  assert len(set(train)) == 50 and len(env.tasks("train")) == 2**16
  with pytest.raises(ValueError, match="unknown split"):
    env.tasks("valid")


@pytest.mark.parametrize("config", [{}, {"num_boxes": 2}, {"dim": (7, 7), "num_boxes": 2, "max_steps": 25}])
def test_generated_rooms_are_solvable_within_max_steps(config):
  env = SokobanEnv(**config)
  for task_id in env.tasks("test", n=15):
    env.reset(task_id)
    lv = env.level
    assert len(lv.boxes) == env.params.num_boxes and not (lv.boxes & lv.targets) and lv.player not in lv.targets
    solution = solve(lv, max_steps=env.max_steps)
    assert solution is not None and len(solution) <= env.max_steps
    step = play(env, solution)
    assert step.success and step.done


def test_registry_builds_sokoban_with_snapshot_support():
  env = make("sokoban", num_boxes=1)
  assert isinstance(env, SnapshotEnv)
  assert env.reset("seed:3") == SokobanEnv().reset("seed:3")


# --- solver ---------------------------------------------------------------------------------------------------
def test_push_optimal_solutions_replay_on_shipped_levels():
  levels = shipped_levels("small")
  assert len(levels) >= 5 and all(2 <= len(lv.boxes) <= 4 for lv in levels)
  for lv in levels:
    solution = solve(lv)
    assert solution is not None, lv.name
    _, boxes = apply_lurd(lv, solution)
    assert boxes == lv.targets
    env = SokobanEnv(level=lv, max_steps=len(solution))
    env.reset()
    assert play(env, solution).success


def test_solver_push_optimal_and_move_limit():
  lv = level("########\n#@-$--.#\n########")
  assert solve(lv) == "rRRR"
  assert solve(lv, max_pushes=2) is None
  assert solve(lv, max_steps=3) is None and solve(lv, max_steps=4) == "rRRR"
  assert solve(level("#####\n#@$-#\n#--.#\n#####")) is None  # box must go down from a wall-side row: dead


def test_shipped_level_task_ids():
  env = SokobanEnv()
  ids = env.tasks("levels:small")
  assert ids[0] == "level:small:0"
  assert env.reset(ids[1]) == render_text(shipped_levels("small")[1], shipped_levels("small")[1].player,
                                          shipped_levels("small")[1].boxes)
  with pytest.raises(ValueError, match="no level file"):
    env.reset("level:nope:0")


# --- snapshots ------------------------------------------------------------------------------------------------
def test_snapshot_restore_equals_replay():
  env = SokobanEnv(max_steps=30)
  actions = ["left", "up", "right", "down", "down", "left", "xx", "right"]
  env.reset("seed:42")
  for a in actions[:4]:
    env.step(a)
  snap = env.snapshot()
  tail_a = [env.step(a) for a in actions[4:]]
  env.restore(snap)
  tail_b = [env.step(a) for a in actions[4:]]
  assert tail_a == tail_b
  fresh = SokobanEnv(max_steps=30)
  fresh.reset("seed:42")
  replayed = [fresh.step(a) for a in actions]
  assert replayed[4:] == tail_a
  other = SokobanEnv(max_steps=30)
  other.reset("seed:7")
  other.restore(snap)  # a snapshot carries its task: restoring on another task's env works too
  assert other.render() == replayed[3].observation


# --- deadlocks ------------------------------------------------------------------------------------------------
def test_irreversible_box_in_corner():
  lv = level("#####\n#$-.#\n#@--#\n#####")
  assert lv.boxes <= dead_squares(lv)
  assert is_irreversible(lv, lv.boxes, dead_squares(lv))


def test_irreversible_after_push_into_corner_and_not_on_target():
  env = env_of("######\n#-$@.#\n#----#\n######")
  assert not env.step("up").info["irreversible"]  # box can still go right along the wall onto the target
  snap = env.snapshot()
  step = env.step("left")
  assert step.info["irreversible"]  # box in the top-left corner
  assert env.step("down").info["irreversible"]  # walking away does not undo it
  env.restore(snap)
  assert not env.step("down").info["irreversible"]
  env = env_of("#####\n#.$@#\n#---#\n#####")
  step = env.step("left")
  assert step.success and not step.info["irreversible"]  # corner that is a target is fine


def test_dead_wall_segment():
  # No target along the top wall: every cell of that row is dead, though only two of them are corners.
  lv = level("#######\n#-----#\n#--$--#\n#--@.-#\n#######")
  top_row = {lv.width + c for c in range(1, 6)}
  assert top_row <= dead_squares(lv)
  env = SokobanEnv(level=lv)
  env.reset()
  step = env.step("up")  # box to the middle of the top row: not a corner, still lost
  assert step.info["moved_box"] and step.info["irreversible"] and not step.done


def test_two_by_two_freeze():
  lv = level("######\n#@---#\n#-$$-#\n#-$$-#\n#....#\n######")
  assert is_irreversible(lv, lv.boxes, frozenset())  # 2x2 boxes, none on target
  lv = level("######\n#-$$-#\n#-..@#\n######")
  assert is_irreversible(lv, lv.boxes, frozenset())  # two boxes against a wall
  lv = level("#######\n#-----#\n#-$$--#\n#-..-@#\n#######")
  assert not is_irreversible(lv, lv.boxes, frozenset())  # side by side in the open: still movable
  lv = level("#####\n#@--#\n#-**#\n#-**#\n#####")
  assert not is_irreversible(lv, lv.boxes, frozenset())  # frozen, but every box on a target


# --- XSB ------------------------------------------------------------------------------------------------------
def test_load_xsb_round_trip_and_comments():
  text = "; my set\n; first\n####\n#@*#\n####\n\n;second\n#####\n#+$-#\n#####\n"
  levels = load_xsb(text)
  assert [lv.name for lv in levels] == ["first", "second"]
  assert load_xsb(to_xsb(levels[1]))[0].boxes == levels[1].boxes
  (dash,) = load_xsb("#####\n#@$.#\n#_-_#\n#####")
  assert len(dash.floor()) == 6


@pytest.mark.parametrize("text, message", [
    ("####\n#@*#\n####\n\n#####\n#$.-#\n#####", r"level 1: expected exactly one player"),
    ("#####\n#@$$#\n#.--#\n#####", r"level 0 \(lines 1-4\): 2 boxes but 1 targets"),
    ("#####\n#@$.\n#####", r"level 0 \(line 2\): room is not closed"),
    ("#####\n#@$.#\n#-x-#\n#####", r"level 0 \(line 3\): unknown symbol 'x'"),
])
def test_load_xsb_errors_name_level_and_line(text, message):
  with pytest.raises(XsbError, match=message):
    load_xsb(text)


def test_unseen_test_rooms_are_the_test_rooms_no_training_seed_has(monkeypatch):
  from leafe_jax.envs.sokoban import env as env_module

  # A smaller training range keeps the test fast; 6x6 one-box rooms repeat enough for a thousand seeds.
  monkeypatch.setattr(env_module, "TRAIN_SEED_RANGE", (0, 1200))
  env_module._train_rooms.cache_clear()
  try:
    env = SokobanEnv(dim=(6, 6), num_boxes=1, max_steps=15)
    room = lambda task: env_module._room(env.level_of(task))
    train = {room(f"seed:{s}") for s in range(1200)}
    test = env.tasks("test", 40)
    assert sum(room(t) in train for t in test) > 5  # disjoint seeds, shared rooms
    unseen = env.tasks("test_unseen", 12)
    assert len({room(t) for t in unseen}) == 12 and not {room(t) for t in unseen} & train
    # The unseen split is the subsequence of the test stream that skips seen rooms.
    stream = env.tasks("test", 200)
    assert [t for t in stream if t in set(unseen)] == unseen and stream.index(unseen[-1]) > 12
  finally:
    env_module._train_rooms.cache_clear()
