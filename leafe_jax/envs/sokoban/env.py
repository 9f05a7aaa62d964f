"""SokobanEnv: the text Sokoban of verl-agent with gym-sokoban's rules and rewards.

Actions "up" / "down" / "left" / "right" move the player, pushing a box when one is in the way (no pulling).
Reward per step (gym-sokoban): -0.1, +1 when a box reaches a target, -1 when a box leaves one, +10 when all
boxes are on targets. An unparsable action is a step that changes nothing. Tasks: "seed:<int>" (a procedural
room fully determined by the seed) or "level:<file>:<index>" (a shipped XSB level).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import itertools
import random
from typing import Any

from leafe_jax.envs.base import INVALID_ACTION, Step
from leafe_jax.envs.prompts import PromptTemplate
from leafe_jax.envs.sokoban import generator, solver
from leafe_jax.envs.sokoban.level import ACTION_OF_LETTER, DIRECTIONS, Level, load_xsb, render_text

ACTIONS = ("up", "down", "left", "right")

PENALTY_STEP = -0.1
REWARD_BOX_ON_TARGET = 1.0
PENALTY_BOX_OFF_TARGET = -1.0
REWARD_FINISHED = 10.0

# verl-agent's seed ranges: training rooms from [0, 2^16), evaluation rooms from [2^16, 2^32).
TRAIN_SEED_RANGE = (0, 2**16)
TEST_SEED_RANGE = (2**16, 2**32)
DEFAULT_NUM_TEST_TASKS = 1000
# "test_unseen" scans at most this many test seeds per room it returns before saying the room space is exhausted.
UNSEEN_SCAN_PER_TASK = 200
# Generation attempts per seed before giving up (each attempt derives its own stream from the seed).
MAX_GENERATION_ATTEMPTS = 1000
GENERATED_ROOM_CACHE = 4096  # rooms kept per process; rollback resets the same task many times

LEVELS_PACKAGE = "leafe_jax.envs.levels"

INSTRUCTION = "Push every box (X) onto a target (O). You can push a box but never pull it."

SOKOBAN_TEMPLATE = PromptTemplate(
    system="You are an expert Sokoban player. Think before you act, then give exactly one action.",
    task_intro=(
        "You are the player in a Sokoban puzzle. {instruction}\n"
        "Grid symbols: # wall, _ floor, O target, X box, √ box on target, P you, S you standing on a target.\n"
        "Moving into a box pushes it one cell in the same direction if the cell behind it is free; walls and "
        "other boxes stop it. A box pushed into a corner can never be moved out again."),
    first_step="You have not taken any action yet.",
    history_intro=("Prior to this step, you have already taken {step_count} step(s). Below are the most recent "
                   "{num_shown} observation(s) and the action you took after each:"),
    history_item="[Observation {step}]\n{observation}\n[Action {step}]: {action}",
    current_observation="You are now at step {step}. Current grid:\n{observation}",
    admissible_actions="Admissible actions: [{actions}].",
    experience=("Advice from reflecting on an earlier attempt at this puzzle (use it to choose a better action):\n"
                "<experience>\n{experience}\n</experience>"),
    output_format=("Reason step-by-step about where the boxes must go inside <think> </think> tags, then give "
                   "exactly one admissible action inside <action> </action> tags."),
)

# For tiny demo models: just the grid, the reflection's experience when branching, and a cue.
SOKOBAN_COMPACT_TEMPLATE = PromptTemplate(
    task_intro="",
    current_observation="{observation}",
    experience="hint: {experience}",
    output_format="action:",
)


@functools.lru_cache(maxsize=GENERATED_ROOM_CACHE)
def generate_level(seed: int, params: generator.RoomParams) -> Level:
  """The room of `seed`: the first attempt whose room `solve` proves solvable within params.max_steps."""
  for attempt in range(MAX_GENERATION_ATTEMPTS):
    level = generator.generate_room(seed, params, attempt)
    if level is not None and solver.solve(level, max_steps=params.max_steps) is not None:
      return level
  raise RuntimeError(f"sokoban: no solvable room for seed {seed} with {params} after "
                     f"{MAX_GENERATION_ATTEMPTS} attempts (room too small for num_boxes?)")


@functools.cache
def shipped_levels(name: str) -> tuple[Level, ...]:
  """Levels of the shipped XSB file `<name>.xsb`."""
  resource = importlib.resources.files(LEVELS_PACKAGE) / f"{name}.xsb"
  if not resource.is_file():
    available = sorted(p.name[:-4] for p in importlib.resources.files(LEVELS_PACKAGE).iterdir()
                       if p.name.endswith(".xsb"))
    raise ValueError(f"sokoban: no level file {name!r}; shipped: {', '.join(available)}")
  return tuple(load_xsb(resource.read_text(encoding="utf-8"), name=name))


@functools.cache
def _train_seeds() -> tuple[int, ...]:
  """Every training seed once, in a fixed shuffled order."""
  seeds = list(range(*TRAIN_SEED_RANGE))
  random.Random("sokoban-tasks:train").shuffle(seeds)
  return tuple(seeds)


def _test_seed_stream():
  """Distinct seeds of a fixed stream over the test range."""
  rng = random.Random("sokoban-tasks:test")
  seen = set()
  while True:
    s = rng.randrange(*TEST_SEED_RANGE)
    if s not in seen:
      seen.add(s)
      yield s


def _test_seeds(n: int) -> list[int]:
  """The first n distinct seeds of the test stream."""
  return list(itertools.islice(_test_seed_stream(), n))


def _room(level: Level) -> tuple:
  """What makes two start states the same room (not the level's name)."""
  return level.width, level.height, level.walls, level.targets, level.boxes, level.player


@functools.cache
def _train_rooms(params: generator.RoomParams) -> frozenset:
  """The room of every training seed under `params` (2^16 rooms: ~10 s on one core, once per process)."""
  return frozenset(_room(generate_level(s, params)) for s in range(*TRAIN_SEED_RANGE))


def _unseen_test_seeds(n: int, params: generator.RoomParams) -> list[int]:
  """The first n seeds of the test stream whose rooms are new: no training seed's room, no earlier one's."""
  seen, seeds = set(_train_rooms(params)), []
  for scanned, seed in enumerate(_test_seed_stream(), 1):
    if len(seeds) == n:
      return seeds
    if scanned > UNSEEN_SCAN_PER_TASK * n:
      raise ValueError(f"sokoban: only {len(seeds)} of {n} test rooms unseen in training after {scanned - 1} test "
                       f"seeds: the room space of {params} is nearly exhausted by the training seeds")
    room = _room(generate_level(seed, params))
    if room not in seen:
      seen.add(room)
      seeds.append(seed)
  raise AssertionError("unreachable: the test seed stream is endless")


@dataclasses.dataclass(frozen=True)
class SokobanSnapshot:
  task_id: str | None
  player: int
  boxes: frozenset[int]
  steps: int
  boxes_on_target: int
  done: bool


class SokobanEnv:
  """Text Sokoban implementing the Env and SnapshotEnv protocols."""

  name = "sokoban"

  def __init__(self, dim: tuple[int, int] = (6, 6), num_boxes: int = 1, max_steps: int = 15,
               search_depth: int = 100, p_change_directions: float = 0.35, num_gen_steps: int | None = None,
               max_reverse_states: int = 300_000, level: Level | None = None, compact_prompt: bool = False):
    """Room knobs as `generator.RoomParams` (defaults: verl-agent 6x6, 1 box, 15 steps); `level` fixes one level;
    `compact_prompt` selects the short prompt for tiny models."""
    self.params = generator.RoomParams(tuple(dim), num_boxes, max_steps, search_depth, p_change_directions,
                                       num_gen_steps, max_reverse_states)
    self.max_steps = max_steps
    self.prompt_template = SOKOBAN_COMPACT_TEMPLATE if compact_prompt else SOKOBAN_TEMPLATE
    self._fixed_level = level
    self._level: Level | None = None
    self._task_id: str | None = None

  # --- tasks -------------------------------------------------------------------------------------------------
  def tasks(self, split: str, n: int | None = None) -> list[str]:
    """Task ids of `split`: "train" / "test" (seeds, verl-agent ranges) or "levels:<file>" (shipped XSB).

    The seed ranges are disjoint, not the rooms: a small room space repeats itself (6x6 with one box: 2^16
    training seeds give ~11k distinct rooms, and most test seeds give one of them). "test_unseen" is the
    subsequence of "test" whose rooms are new (in no training seed's room, nor an earlier test seed's).
    The ids are the first `n` of a fixed sequence per split, so tasks(split, 10) is a prefix of tasks(split, 20).
    """
    if self._fixed_level is not None:
      return ["level"]
    if split.startswith("levels:"):
      name = split.split(":", 1)[1]
      ids = [f"level:{name}:{i}" for i in range(len(shipped_levels(name)))]
      return ids[:n] if n is not None else ids
    if split == "train":
      return [f"seed:{s}" for s in _train_seeds()[:n]]
    if split == "test":
      return [f"seed:{s}" for s in _test_seeds(DEFAULT_NUM_TEST_TASKS if n is None else n)]
    if split == "test_unseen":
      return [f"seed:{s}" for s in _unseen_test_seeds(DEFAULT_NUM_TEST_TASKS if n is None else n, self.params)]
    raise ValueError(f"sokoban: unknown split {split!r}; use 'train', 'test', 'test_unseen' or 'levels:<file>'")

  def level_of(self, task_id: str | None) -> Level:
    if task_id in (None, "level") and self._fixed_level is not None:
      return self._fixed_level
    if task_id is None:
      raise ValueError("sokoban: reset needs a task id (or an env built with level=...)")
    kind, _, rest = task_id.partition(":")
    try:
      if kind == "seed":
        return generate_level(int(rest), self.params)
      if kind == "level":
        name, _, index = rest.rpartition(":")
        levels = shipped_levels(name)
        return levels[int(index)]
    except (ValueError, IndexError) as e:
      raise ValueError(f"sokoban: bad task id {task_id!r}: {e}") from e
    raise ValueError(f"sokoban: bad task id {task_id!r}; expected 'seed:<int>' or 'level:<file>:<index>'")

  # --- episode -----------------------------------------------------------------------------------------------
  def reset(self, task_id: str | None = None) -> str:
    level = self.level_of(task_id)
    if level is not self._level:
      self._level = level
      self._offsets = level.offsets()
      self._dead = solver.dead_squares(level)
    self._task_id = task_id
    self._player = level.player
    self._boxes = set(level.boxes)
    self._steps = 0
    self._boxes_on_target = len(level.boxes & level.targets)
    self._done = False
    self._irreversible = solver.is_irreversible(level, self._boxes, self._dead)
    return self.render()

  @property
  def level(self) -> Level:
    if self._level is None:
      raise RuntimeError("sokoban: call reset() first")
    return self._level

  @property
  def instruction(self) -> str:
    return INSTRUCTION

  def admissible_actions(self) -> list[str]:
    return list(ACTIONS)

  def render(self) -> str:
    return render_text(self.level, self._player, self._boxes)

  def _move(self, action: str) -> tuple[bool, bool]:
    d = self._offsets[action]
    nxt = self._player + d
    walls = self._level.walls
    if nxt in walls:
      return False, False
    if nxt in self._boxes:
      dest = nxt + d
      if dest in walls or dest in self._boxes:
        return False, False
      self._boxes.remove(nxt)
      self._boxes.add(dest)
      self._player = nxt
      return True, True
    self._player = nxt
    return True, False

  def step(self, action: str) -> Step:
    level = self.level
    if self._done:
      raise RuntimeError("sokoban: step() after the episode ended; call reset()")
    self._steps += 1
    key = action.strip().lower() if isinstance(action, str) else ""
    invalid = key not in DIRECTIONS
    moved_player = moved_box = False
    if not invalid:
      moved_player, moved_box = self._move(key)
    on_target = len(self._boxes & level.targets)
    terms = {"step": PENALTY_STEP, "box_on_target": 0.0, "box_off_target": 0.0, "finished": 0.0}
    if on_target > self._boxes_on_target:
      terms["box_on_target"] = REWARD_BOX_ON_TARGET
    elif on_target < self._boxes_on_target:
      terms["box_off_target"] = PENALTY_BOX_OFF_TARGET
    self._boxes_on_target = on_target
    success = on_target == len(level.targets)
    if success:
      terms["finished"] = REWARD_FINISHED
    if moved_box:  # deadlocks only change when a box moves
      self._irreversible = (not success) and solver.is_irreversible(level, self._boxes, self._dead)
    self._done = success or self._steps >= self.max_steps
    observation = self.render()
    if invalid:
      observation = f"{INVALID_ACTION} Choose one of: {', '.join(ACTIONS)}.\n{observation}"
    info: dict[str, Any] = {
        "reward_terms": terms,
        "boxes_on_target": on_target,
        "irreversible": self._irreversible,
        "invalid_action": invalid,
        "moved_player": moved_player,
        "moved_box": moved_box,
        "steps": self._steps,
    }
    return Step(observation, sum(terms.values()), self._done, success, info)

  # --- expert ------------------------------------------------------------------------------------------------
  def gold_actions(self, task_id: str) -> list[str]:
    """A move-optimal solution within the step limit (the exact solver); [] if the room has none."""
    plan = solver.solve(self.level_of(task_id), max_steps=self.max_steps) or ""
    return [ACTION_OF_LETTER[letter.lower()] for letter in plan]

  # --- snapshots ---------------------------------------------------------------------------------------------
  def snapshot(self) -> SokobanSnapshot:
    return SokobanSnapshot(self._task_id, self._player, frozenset(self._boxes), self._steps, self._boxes_on_target,
                           self._done)

  def restore(self, snapshot: SokobanSnapshot) -> None:
    if self._level is None or snapshot.task_id != self._task_id:
      self.reset(snapshot.task_id)
    self._player = snapshot.player
    self._boxes = set(snapshot.boxes)
    self._steps = snapshot.steps
    self._boxes_on_target = snapshot.boxes_on_target
    self._done = snapshot.done
    self._irreversible = solver.is_irreversible(self._level, self._boxes, self._dead)
