"""ALFWorld (Shridhar et al. 2021), text-only: TextWorld's PDDL engine over ALFWorld game files.

Games live under `$ALFWORLD_DATA/json_2.1.1/{train,valid_seen,valid_unseen}/<task dir>/<trial>/game.tw-pddl`
(what `alfworld-download` writes). Task ids are game paths relative to `json_2.1.1`. The env is run exactly
as `alfworld.agents.environment.alfred_tw_env` runs it (AlfredDemangler without shuffling + AlfredInfos,
won/admissible_commands requested). Rollback is reset + replay, checked against the recorded observations.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from typing import Any

from leafe_jax.envs.base import Step
from leafe_jax.envs.prompts import PromptTemplate

# verl-agent's ALFWorld episode limit (their default max_steps for alfworld is 50).
DEFAULT_MAX_STEPS = 50
DATA_ENV_VAR = "ALFWORLD_DATA"
SPLITS = ("train", "valid_seen", "valid_unseen")
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
TASK_PREFIX = "Your task is to: "
TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")

ALFWORLD_TEMPLATE = PromptTemplate(
    system="You are an expert agent operating in the ALFRED Embodied Environment.",
    task_intro="Your task is to: {instruction}",
    first_step="You have not taken any action yet.",
    history_intro=("Prior to this step, you have already taken {step_count} step(s). Below are the most recent "
                   "{num_shown} observation(s) and the action you took after each:"),
    history_item="[Observation {step}]\n{observation}\n[Action {step}]: {action}",
    current_observation="You are now at step {step}. Current observation:\n{observation}",
    admissible_actions="Your admissible actions in the current situation are: [{actions}].",
    experience=("Advice from reflecting on an earlier attempt at this task:\n<experience>\n{experience}\n"
                "</experience>"),
    output_format=("First reason step-by-step about the current situation inside <think> </think> tags. Then "
                   "choose exactly one admissible action and give it inside <action> </action> tags."),
)


class ReplayDivergence(RuntimeError):
  """A replayed episode did not reproduce its recorded observations (wrong game, or a non-deterministic env)."""


def task_type_of(task_id: str) -> str:
  """One of the six ALFWorld task types, from the game's directory name."""
  parts = task_id.replace(os.sep, "/").split("/")
  for part in parts:
    head = part.split("-", 1)[0]
    if head in TASK_TYPES:
      return head
  raise ValueError(f"ALFWorld task id {task_id!r} names none of the task types {TASK_TYPES}")


def _playable(root: str, game_file: str) -> bool:
  """Whether ALFWorld's own loader (`AlfredTWEnv.collect_game_files`, which verl-agent uses) keeps this game: not
  a movable-receptacle or sliced-object trial, one of the six task types, and marked solvable in its game file."""
  trial = os.path.dirname(game_file)
  name = os.path.relpath(trial, root)  # the task id: a data folder's own name must not match
  if "movable" in name or "Sliced" in name:
    return False
  try:
    with open(os.path.join(trial, TRAJ_FILE)) as f:
      if json.load(f).get("task_type") not in TASK_TYPES:
        return False
  except FileNotFoundError:
    return False
  with open(game_file) as f:
    return bool(json.load(f).get("solvable", False))


class ALFWorldEnv:
  """The Env protocol over one TextWorld PDDL game at a time.

  Config: data_dir (default $ALFWORLD_DATA), max_steps.
  """

  name = "alfworld"
  prompt_template = ALFWORLD_TEMPLATE

  def __init__(self, data_dir: str | None = None, max_steps: int = DEFAULT_MAX_STEPS, **unknown: Any):
    if unknown:
      raise ValueError(f"unknown alfworld config keys: {sorted(unknown)}")
    data_dir = data_dir or os.environ.get(DATA_ENV_VAR)
    if not data_dir:
      raise ValueError(f"ALFWorld needs data_dir=... or ${DATA_ENV_VAR} (run `alfworld-download` to fetch games)")
    self.root = os.path.join(data_dir, "json_2.1.1")
    if not os.path.isdir(self.root):
      raise FileNotFoundError(f"ALFWorld data folder {self.root} does not exist")
    self.max_steps = max_steps
    self._gym_ids: dict[str, str] = {}
    self._env = None
    self._env_game: str | None = None
    self._task_id: str | None = None
    self._instruction = ""
    self._admissible: list[str] = []
    self._steps = 0
    self._done = False

  def tasks(self, split: str) -> list[str]:
    if split not in SPLITS:
      raise ValueError(f"unknown ALFWorld split {split!r}; expected one of {SPLITS}")
    files = glob.glob(os.path.join(self.root, split, "*", "*", GAME_FILE))
    return sorted(os.path.relpath(os.path.dirname(f), self.root) for f in files if _playable(self.root, f))

  def _game_env(self, game_file: str):
    """A gym env bound to one game file, built once per game and kept (loading is the costly part)."""
    import textworld
    import textworld.gym
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    if self._env_game != game_file:
      if self._env is not None:
        self._env.close()
      if game_file not in self._gym_ids:
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
        self._gym_ids[game_file] = textworld.gym.register_games(
            [game_file], infos, batch_size=1, asynchronous=False, max_episode_steps=self.max_steps,
            wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])
      self._env = textworld.gym.make(self._gym_ids[game_file])
      self._env_game = game_file
    return self._env

  def reset(self, task_id: str) -> str:
    game_file = os.path.join(self.root, task_id, GAME_FILE)
    if not os.path.isfile(game_file):
      raise FileNotFoundError(f"ALFWorld game {game_file} (task {task_id!r}) does not exist")
    (obs,), info = self._game_env(game_file).reset()
    played = info["extra.gamefile"][0]
    if os.path.abspath(played) != os.path.abspath(game_file):  # the engine must run the game we asked for
      raise ReplayDivergence(f"asked for game {game_file}, the engine loaded {played}")
    self._task_id = task_id
    _, _, task = obs.partition(TASK_PREFIX)
    self._instruction = task.strip()
    self._admissible = list(info["admissible_commands"][0])
    self._steps = 0
    self._done = False
    return obs

  def step(self, action: str) -> Step:
    if self._task_id is None:
      raise RuntimeError("ALFWorldEnv.step before reset")
    if self._done:
      return Step("The episode is over.", 0.0, True, False, {"irreversible": False})
    (obs,), (score,), (done,), info = self._env.step([action])
    self._steps += 1
    won = bool(info["won"][0])
    self._admissible = list(info["admissible_commands"][0])
    truncated = self._steps >= self.max_steps and not won
    self._done = won or bool(done) or truncated
    # PDDL ALFWorld has no dead ends (every action can be undone), so nothing is irreversible.
    return Step(obs, float(score), self._done, won, {"won": won, "irreversible": False, "truncated": truncated})

  @property
  def instruction(self) -> str:
    return self._instruction

  @property
  def task_type(self) -> str:
    return task_type_of(self._task_id or "")

  def admissible_actions(self) -> list[str] | None:
    return list(self._admissible)

  def replay_prefix(self, task_id: str, actions: Sequence[str],
                    expected_observations: Sequence[str] | None = None) -> list[str]:
    """Rollback by reset + replay; with `expected_observations` (o_0..o_k recorded earlier) any mismatch raises
    ReplayDivergence naming the first differing step, so a wrong game is never silently continued."""
    observations = [self.reset(task_id)]
    for action in actions:
      observations.append(self.step(action).observation)
    if expected_observations is not None:
      for i, (got, want) in enumerate(zip(observations, expected_observations, strict=False)):
        if got != want:
          raise ReplayDivergence(f"replay of {task_id!r} diverged at observation {i}: got {got[:120]!r}, "
                                 f"recorded {want[:120]!r}")
    return observations

  def gold_actions(self, task_id: str) -> list[str]:
    """The game's walkthrough from TextWorld's PDDL planner (`policy_commands` at the start state).

    A separate engine instance with the planner switched on: the acting env does not pay for planning on every
    step. ALFWorld's handcoded expert is the other built-in expert; the planner's plan is the shortest.
    """
    import textworld
    import textworld.gym
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    game_file = os.path.join(self.root, task_id, GAME_FILE)
    if not os.path.isfile(game_file):
      raise FileNotFoundError(f"ALFWorld game {game_file} (task {task_id!r}) does not exist")
    infos = textworld.EnvInfos(policy_commands=True, extras=["gamefile"])
    gym_id = textworld.gym.register_games([game_file], infos, batch_size=1, asynchronous=False,
                                          max_episode_steps=self.max_steps,
                                          wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])
    planner = textworld.gym.make(gym_id)
    try:
      _, info = planner.reset()
      return list(info["policy_commands"][0] or [])
    finally:
      planner.close()

  def traj_data(self, task_id: str) -> dict[str, Any]:
    with open(os.path.join(self.root, task_id, TRAJ_FILE)) as f:
      return json.load(f)

  def close(self) -> None:
    if self._env is not None:
      self._env.close()
      self._env = None
      self._env_game = None
