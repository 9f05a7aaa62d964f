"""Evaluation rollouts: n independent episodes per task, no reflection (the paper's test-time protocol).

Every live episode of every task advances one step per tick, and each tick makes ONE batched policy call for
all of them, so a batched sampler sees a full batch. Outcomes feed the unbiased Pass@k estimator.

Each prompt samples with a seed of its own, a function of (seed, task, sample index, step) only. An episode's
draws then do not depend on which episodes share its calls: a (task, sample) plays alike at any chunking,
`max_live` or resume (up to float rounding of the batch a prompt is padded into, which can flip a near-tie), and
two policies evaluated with one seed draw from the same random numbers (common random numbers), which makes
their paired difference (eval/paired.py) less noisy than independent draws would. A task listed k times (ACE's
batches over several epochs) plays samples k·n .. k·n + n - 1 at its k-th listing (from 0), so no two draw alike.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

from absl import logging

from leafe_jax.envs import Env, pooled
from leafe_jax.envs.pool import EpisodeError
from leafe_jax.envs.prompts import build_action_prompt, parse_action
from leafe_jax.policy.base import PROMPT_TOO_LONG, Completion, Policy, derived_seed


def _parse(env: Env, text: str) -> str | None:
  """The env's own action parser where it has one (coding: fenced programs), else the shared tag parser."""
  env_parser = getattr(env, "parse_action", None)
  if env_parser is not None:
    return env_parser(text)
  return parse_action(text, env.admissible_actions())


@dataclasses.dataclass
class SamplingParams:
  temperature: float = 0.4
  top_p: float = 1.0
  max_new_tokens: int = 64
  stop: tuple[str, ...] = ()


@dataclasses.dataclass
class Episode:
  task_id: str
  sample_index: int
  env: Env
  history: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  observation: str = ""
  instruction: str = ""  # the task instruction, read at reset (the env is released when the episode ends)
  steps: int = 0
  done: bool = False
  success: bool = False
  invalid_actions: int = 0
  generated_tokens: int = 0
  error: str | None = None  # why the env was lost (the episode then counts as unsuccessful)
  prompt_too_long: bool = False  # ended because its prompt outgrew the policy's context (unsuccessful)
  # With keep_turns: each turn's prompt (messages) and the completion the policy returned for it.
  turns: list[tuple[list, Completion]] = dataclasses.field(default_factory=list)

  def lose(self, error: EpisodeError) -> None:
    logging.warning("eval: task %s sample %d: env lost (%s); counted as unsuccessful", self.task_id,
                    self.sample_index, error.reason.splitlines()[0] if error.reason else "")
    self.error, self.done, self.success = error.reason, True, False


@dataclasses.dataclass(frozen=True)
class TaskOutcome:
  task_id: str
  successes: tuple[bool, ...]
  steps: tuple[int, ...]
  errors: int = 0  # samples whose env was lost (included in n as unsuccessful)
  prompts_too_long: int = 0  # samples ended by a prompt the policy's context could not hold (likewise)

  @property
  def n(self) -> int:
    return len(self.successes)

  @property
  def c(self) -> int:
    return sum(self.successes)


def _start(slots: Sequence[tuple[str, int]], make_env: Callable[[], Env], episodes: list[Episode]) -> list[Episode]:
  """New episodes for (task id, sample index) slots, reset with one batched call; appended to `episodes`."""
  started = [Episode(t, i, make_env()) for t, i in slots]
  for episode, first in zip(started, pooled.reset_all([e.env for e in started], [e.task_id for e in started])):
    if isinstance(first, EpisodeError):
      episode.lose(first)
    else:
      episode.observation = first
      episode.instruction = episode.env.instruction
  episodes.extend(started)
  return started


def run_episodes(policy: Policy, make_env: Callable[[], Env], task_ids: Sequence[str], **kwargs) -> list[TaskOutcome]:
  """`play_episodes`, summarised per task (in `task_ids` order) for the Pass@k estimator."""
  by_task: dict[str, list[Episode]] = {t: [] for t in task_ids}
  for episode in play_episodes(policy, make_env, task_ids, **kwargs):
    by_task[episode.task_id].append(episode)
  return [
      TaskOutcome(t, tuple(e.success for e in eps), tuple(e.steps for e in eps),
                  sum(e.error is not None for e in eps), sum(e.prompt_too_long for e in eps))
      for t, eps in by_task.items()
  ]


def play_episodes(
    policy: Policy,
    make_env: Callable[[], Env],
    task_ids: Sequence[str],
    *,
    num_samples: int,
    max_steps: int,
    sampling: SamplingParams,
    history_length: int,
    seed: int,
    on_tick: Callable[[int, int], None] | None = None,
    max_live: int = 0,
    keep_turns: bool = False,
    playbook: str | None = None,
) -> list[Episode]:
  """Plays `num_samples` independent episodes of each task to the end or `max_steps`; returns them all.

  `max_live` > 0 bounds the episodes (and so the envs) alive at once: the rest wait and start as others finish,
  and a finished episode's env is released at once (a ScienceWorld env holds a JVM). 0 = all at once.
  `keep_turns` records each turn's prompt and completion on its episode (what RL trains on). `playbook` (ACE)
  is shown in every action prompt.
  """
  listed = collections.Counter()
  waiting = collections.deque()
  for t in task_ids:  # the k-th listing of a task (from 0) plays its samples k*n .. k*n + n - 1
    waiting.extend((t, listed[t] * num_samples + i) for i in range(num_samples))
    listed[t] += 1
  episodes: list[Episode] = []
  live: list[Episode] = []
  tick = 0
  while True:
    live = [e for e in live if not e.done]
    while waiting and (max_live <= 0 or len(live) < max_live):  # again if a whole batch was lost at reset
      room = len(waiting) if max_live <= 0 else min(max_live - len(live), len(waiting))
      started = _start([waiting.popleft() for _ in range(room)], make_env, episodes)
      pooled.release_all([e.env for e in started if e.done])
      live += [e for e in started if not e.done]
    if on_tick is not None:
      on_tick(tick, len(live))
    if not live:
      break
    prompts = [
        build_action_prompt(
            e.env,
            instruction=e.env.instruction,
            history=e.history,
            current_observation=e.observation,
            admissible_actions=e.env.admissible_actions(),
            step_count=e.steps,
            history_length=history_length,
            playbook=playbook,
        )
        for e in live
    ]
    completions = policy.generate(
        prompts,
        n=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_new_tokens=sampling.max_new_tokens,
        stop=sampling.stop,
        seed=[derived_seed(seed, e.task_id, e.sample_index, e.steps) for e in live],
    )
    for episode, (completion,) in zip(live, completions):
      if completion.finish_reason == PROMPT_TOO_LONG:
        # Its later prompts would only be longer: the episode ends here, unsuccessful (as a model whose context
        # overflows fails the task), counted apart from env errors.
        logging.warning("eval: task %s sample %d: prompt after step %d exceeds the policy's context; counted as "
                        "unsuccessful", episode.task_id, episode.sample_index, episode.steps)
        episode.prompt_too_long, episode.done = True, True
    pooled.release_all([e.env for e in live if e.done])
    prompts = [p for e, p in zip(live, prompts) if not e.done]
    completions = [c for e, c in zip(live, completions) if not e.done]
    live = [e for e in live if not e.done]
    env_actions = []
    for episode, prompt, (completion,) in zip(live, prompts, completions):
      episode.generated_tokens += len(completion.token_ids)
      if keep_turns:
        episode.turns.append((list(prompt), completion))
      action = _parse(episode.env, completion.text)
      if action is None:
        episode.invalid_actions += 1
      env_actions.append(action if action is not None else completion.text)
    for episode, env_action, step in zip(live, env_actions, pooled.step_all([e.env for e in live], env_actions)):
      if isinstance(step, EpisodeError):
        episode.lose(step)
        continue
      episode.history.append((episode.observation, env_action))
      episode.observation = step.observation
      episode.steps += 1
      episode.success = step.success
      episode.done = step.done or episode.steps >= max_steps
    pooled.release_all([e.env for e in live if e.done])
    tick += 1
  return episodes
