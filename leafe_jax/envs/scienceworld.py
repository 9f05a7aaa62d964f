"""ScienceWorld (Wang et al. 2022) through the `scienceworld` package: one long-lived JVM per env instance.

Task ids are "<task-name>/<variation>" (e.g. "boil/0"); splits come from the package's own variation lists.
Rollback is reset + replay: the package has no state save/restore (its Python API exposes load/reset/step only).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

from leafe_jax.envs import prompts
from leafe_jax.envs.base import Step
from leafe_jax.envs.prompts import PromptTemplate

logger = logging.getLogger(__name__)

# Step limits per task name. Our choice, in the range AgentBench/verl-agent use (they cap episodes at 30-100
# steps); the long multi-stage tasks (genetics, growing, inclined planes) get the package default of 100.
DEFAULT_MAX_STEPS = 50
LONG_TASK_MAX_STEPS = 100
LONG_TASK_PREFIXES = ("mendelian-genetics", "grow-", "inclined-plane", "identify-life-stages", "lifespan-")
# Cap on listed admissible actions: ScienceWorld offers hundreds of template fills per state; the first N in
# (word count, text) order are shown: deterministic, and the short general actions (look around, go to X,
# open X) come before the long object-pair fills (connect X to Y). Our choice, sized for a prompt of a few
# thousand tokens.
DEFAULT_MAX_ADMISSIBLE = 200
SUCCESS_SCORE = 100
# Engines (JVMs) of dropped env instances are kept for the next instance in the same process: an EnvPool worker
# builds one env per episode, and a JVM launch costs seconds. At most this many idle JVMs are kept per process.
MAX_IDLE_ENGINES = 1
_IDLE_ENGINES: list[Any] = []
SPLITS = ("train", "dev", "test")
TASK_DESCRIPTION_HEADER = "Task Description:"  # the package prefixes every task description with this line

SCIENCEWORLD_TEMPLATE = PromptTemplate(
    system="You are an expert agent operating in the ScienceWorld environment. Think before you act.",
    task_intro="{instruction}",
    first_step="You have not taken any action yet.",
    history_intro=("Prior to this step, you have already taken {step_count} step(s). Below are the most recent "
                   "{num_shown} observation(s) and the action you took after each:"),
    history_item="[Observation {step}]\n{observation}\n[Action {step}]: {action}",
    current_observation="You are now at step {step}. Current observation:\n{observation}",
    admissible_actions="Admissible actions (a selection): [{actions}].",
    experience=("Advice from reflecting on an earlier attempt at this task:\n<experience>\n{experience}\n"
                "</experience>"),
    output_format=("First reason step-by-step about the current situation inside <think> </think> tags. Then give "
                   "exactly one action inside <action> </action> tags."),
)


_TAG = re.compile(r"<\s*/?\s*[a-z_]+\s*>", re.IGNORECASE)  # <think>, <action>, ...: not a bare action
_LABEL = re.compile(r"^\s*(?:action|answer)\s*[:=]\s*", re.IGNORECASE)
_DECORATION = " \t\r\n\"'`*[](){}.,;:!"  # quotes, bold, brackets and trailing punctuation around an action


def parse_task_id(task_id: str) -> tuple[str, int]:
  name, sep, variation = task_id.rpartition("/")
  if not sep or not name or not variation.isdigit():
    raise ValueError(f"ScienceWorld task id {task_id!r} is not '<task-name>/<variation>', e.g. 'boil/0'")
  return name, int(variation)


def _admissible_order(action: str) -> tuple[int, str]:
  return len(action.split()), action


def max_steps_for(task_name: str) -> int:
  return LONG_TASK_MAX_STEPS if task_name.startswith(LONG_TASK_PREFIXES) else DEFAULT_MAX_STEPS


def _jvm_alive(engine) -> bool:
  """False when the engine's JVM process has exited (py4j keeps the process handle on its gateway)."""
  process = getattr(getattr(engine, "_gateway", None), "java_process", None)
  return process is None or process.poll() is None


class ScienceWorldEnv:
  """The Env protocol over `scienceworld.ScienceWorldEnv`.

  Config: max_steps (None = per-task default above), max_admissible, simplifications (package string,
  e.g. "easy"), task_names (restrict `tasks()` to these names; None = all 30), variations_per_task (`tasks()`
  lists at most this many variations of each task name, the lowest ids, so a small evaluation set still covers
  every task name; None = all).
  """

  name = "scienceworld"
  prompt_template = SCIENCEWORLD_TEMPLATE

  def __init__(self, max_steps: int | None = None, max_admissible: int = DEFAULT_MAX_ADMISSIBLE,
               simplifications: str = "", task_names: list[str] | None = None,
               variations_per_task: int | None = None, **unknown: Any):
    if unknown:
      raise ValueError(f"unknown scienceworld config keys: {sorted(unknown)}")
    if variations_per_task is not None and variations_per_task < 1:
      raise ValueError(f"scienceworld config variations_per_task must be >= 1, got {variations_per_task}")
    self._variations_per_task = variations_per_task
    self._max_steps_override = max_steps
    self.max_admissible = max_admissible
    self.simplifications = simplifications
    self._task_names = list(task_names) if task_names else None
    self._engine = None
    self.jvm_restarts = 0
    self._task_id: str | None = None
    self._instruction = ""
    self._valid: list[str] = []
    self._steps = 0
    self._actions: list[str] = []
    self._done = False

  # --- engine --------------------------------------------------------------------------------------------------
  def _launch(self):
    from scienceworld import ScienceWorldEnv as _Engine

    while _IDLE_ENGINES:
      engine = _IDLE_ENGINES.pop()
      if _jvm_alive(engine):
        self._engine = engine
        return self._engine
      with contextlib.suppress(Exception):  # a JVM that died while idle: drop it rather than restart on first use
        engine.close()
    # The package's own step limit is disabled: ours is enforced here, per task.
    self._engine = _Engine("", envStepLimit=10**9)
    return self._engine

  @property
  def engine(self):
    return self._engine or self._launch()

  def _with_restart(self, fn):
    """Runs fn(engine); if the JVM died (py4j error), relaunches it once, restores the episode by reloading the
    task and replaying the actions taken so far, and retries fn."""
    from py4j.protocol import Py4JError

    try:
      return fn(self.engine)
    except Py4JError as e:
      logger.warning("ScienceWorld JVM failed (%s); relaunching once", e)
      self.close()
      self.jvm_restarts += 1
      engine = self._launch()
      if self._task_id is not None:
        name, variation = parse_task_id(self._task_id)
        engine.load(name, variation, self.simplifications)
        engine.reset()
        for action in self._actions:
          engine.step(action)
      return fn(engine)

  def close(self) -> None:
    if self._engine is not None:
      with contextlib.suppress(Exception):  # a dead JVM cannot be closed cleanly; it is gone either way
        self._engine.close()
      self._engine = None

  # --- Env protocol --------------------------------------------------------------------------------------------
  def tasks(self, split: str) -> list[str]:
    if split not in SPLITS:
      raise ValueError(f"unknown ScienceWorld split {split!r}; expected one of {SPLITS}")
    engine = self.engine
    ids = []
    for name in self._task_names or engine.get_task_names():
      engine.load(name, 0, self.simplifications)
      variations = {"train": engine.get_variations_train, "dev": engine.get_variations_dev,
                    "test": engine.get_variations_test}[split]()
      ids.extend(f"{name}/{v}" for v in sorted(variations)[: self._variations_per_task])
    return ids

  def reset(self, task_id: str) -> str:
    name, variation = parse_task_id(task_id)

    def _reset(engine):
      engine.load(name, variation, self.simplifications)
      obs, info = engine.reset()
      return obs, info

    self._task_id = None  # nothing to restore if the JVM dies while loading
    self._actions = []
    obs, info = self._with_restart(_reset)
    self._task_id = task_id
    self._instruction = info["taskDesc"].strip().removeprefix(TASK_DESCRIPTION_HEADER).strip()
    self._valid = list(info["valid"])
    self._steps = 0
    self._done = False
    self.max_steps = self._max_steps_override or max_steps_for(name)
    return obs

  def step(self, action: str) -> Step:
    if self._task_id is None:
      raise RuntimeError("ScienceWorldEnv.step before reset")
    if self._done:
      return Step("The episode is over.", 0.0, True, False, {"score": 0, "irreversible": False})
    obs, reward, completed, info = self._with_restart(lambda engine: engine.step(action))
    self._steps += 1
    self._actions.append(action)
    self._valid = list(info["valid"])
    score = int(info["score"])
    success = completed and score >= SUCCESS_SCORE
    irreversible = score < 0  # the package ends the episode with a negative score on a failed task
    truncated = self._steps >= self.max_steps and not completed
    self._done = completed or truncated
    return Step(obs, float(reward), self._done, success,
                {"score": score, "irreversible": irreversible, "truncated": truncated, "moves": info["moves"]})

  @property
  def instruction(self) -> str:
    return self._instruction

  def admissible_actions(self) -> list[str] | None:
    return sorted(self._valid, key=_admissible_order)[: self.max_admissible]

  @staticmethod
  def parse_action(text: str) -> str | None:
    """The action a model wrote: its <action> block (else a bare one-line reply), undecorated, or None.

    Not matched against `admissible_actions()`: that is a selection (the first `max_admissible` of thousands, and
    the engine accepts actions its own valid list omits), so matching would turn most task-critical actions
    (pick up, move, pour, focus on) into invalid ones. The engine's parser judges the action. A staticmethod, so
    it crosses an EnvPool.
    """
    candidate = prompts.parse_action(text or "", None)
    if candidate is None:
      stripped = (text or "").strip()
      if not stripped or "\n" in stripped or _TAG.search(stripped):
        return None
      candidate = stripped
    action = " ".join(_LABEL.sub("", candidate, count=1).strip(_DECORATION).split())
    return action or None

  def gold_actions(self, task_id: str) -> list[str]:
    """The package's gold action sequence for a task (loads the task; call reset afterwards)."""
    name, variation = parse_task_id(task_id)
    self.engine.load(name, variation, self.simplifications, generateGoldPath=True)
    return list(self.engine.get_gold_action_sequence())

  def release(self) -> None:
    """Hands this instance's JVM to the next ScienceWorldEnv built in this process (or closes it)."""
    if self._engine is not None and len(_IDLE_ENGINES) < MAX_IDLE_ENGINES:
      _IDLE_ENGINES.append(self._engine)
      self._engine = None
    self.close()

  def __del__(self):
    self.release()
