"""LEAFE stage 1: many tasks explored at once, each a breadth-first tree of rollouts with rollback branches.

Per tick, ONE `policy.generate` call serves every live rollout's next action and every reflection due (a step
of the previous tick asked for it), each prompt with its own sampling settings. A rollout that failed waits one
tick for its reflection; a periodic reflection shares its call with the rollout's next action. Each task runs one
rollout at a time (its tree is built breadth-first from a queue of branch requests); parallelism comes from
`concurrency` tasks alive at once.

Rollback is reset + replay of a_1..a_{tau-1}; every replayed observation must equal the recorded one, otherwise
the branch is dropped and counted as a divergence (never trained on). Envs may live in an EnvPool
(`leafe_jax.envs.pooled.PooledEnv`): each tick steps all of a pool's envs in ONE pool call and each round of
rollout starts replays them in one more, so the workers run concurrently. A pooled episode lost to a crashed or
hung worker ends its rollout as "error" (counted in the ledger's `errors`); its request goes back to the end of
the task's queue while the attempt budget allows, and every other rollout goes on. An action prompt that does not
fit the policy's context (Completion.finish_reason PROMPT_TOO_LONG) ends its rollout with outcome
"prompt_too_long", unreflected; such a reflection prompt gives no branch. Both are counted (`prompts_too_long`).
Methods:
  leafe  reflect every K steps or on failure, branch from tau with experience e (paper §2.2 / Algorithm 1); a
         reflection is asked for only while a branch could still run (attempts and interaction budget left);
  is     independent sampling: fresh rollouts from the start, no reflection (paper Table 3, IS);
  ir     iterative refinement: retry from the start with the previous attempt's outcome in the prompt (IR).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

from absl import logging

from leafe_jax.envs import Env, pooled
from leafe_jax.envs.pool import EpisodeError
from leafe_jax.envs.prompts import build_action_prompt, parse_action
from leafe_jax.explore import reflection as reflection_lib
from leafe_jax.explore.ledger import Ledger
from leafe_jax.explore.tree import Node, Reflection, Tree, Turn
from leafe_jax.policy.base import PROMPT_TOO_LONG, Policy, derived_seed

METHODS = ("leafe", "is", "ir")
FAILURE_SIGNALS = ("irreversible", "done_without_success", "step_limit")


@dataclasses.dataclass(frozen=True)
class ExploreSettings:
  method: str = "leafe"
  reflect_every: int = 0  # K: also reflect every K steps (0 = only on failure)
  failure_signals: tuple[str, ...] = FAILURE_SIGNALS
  max_depth: int = 2  # branch depth bound of a tree
  max_attempts: int = 8  # rollouts per task (root + branches), the attempt budget
  keep_experience_in_context: bool = False  # e in the prompt after a'_tau too
  history_length: int = 2
  max_steps: int = 15
  temperature: float = 1.0
  reflection_temperature: float = 1.0
  top_p: float = 1.0
  max_new_tokens: int = 256
  reflection_max_new_tokens: int = 256
  concurrency: int = 64  # tasks alive at once (their rollouts share each policy call)
  stop_on_success: bool = False  # end a task at its first success (IS / IR coverage runs)
  seed: int = 0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"explore.method {self.method!r} not in {METHODS}")
    for name in ("concurrency", "max_attempts", "max_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"explore.{name} must be >= 1, got {getattr(self, name)}")
    unknown = set(self.failure_signals) - set(FAILURE_SIGNALS)
    if unknown:
      raise ValueError(f"explore.failure_signals has unknown {sorted(unknown)}; known: {FAILURE_SIGNALS}")


@dataclasses.dataclass
class BranchRequest:
  parent: int | None
  depth: int
  rollback_step: int | None
  experience: str | None
  prefix_actions: list[str]
  prefix_observations: list[str]


@dataclasses.dataclass
class Rollout:
  node: Node
  observations: list[str]  # o_0..o_t of the whole trajectory (prefix included)
  actions: list[str]  # a_1..a_t
  done: bool = False
  success: bool = False
  failed: bool = False
  # The rollout was cut short and its node's outcome is already set: the env was lost mid-rollout (pooled env:
  # crashed or hung worker, env exception), or its prompt outgrew the policy's context.
  errored: bool = False
  reflection_due: str | None = None  # "failure" | "periodic"

  @property
  def t(self) -> int:
    return len(self.actions)


@dataclasses.dataclass
class TaskState:
  task_id: str
  env: Env
  tree: Tree
  queue: collections.deque
  attempts: int = 0
  active: Rollout | None = None
  finished: bool = False
  succeeded: bool = False
  calls: int = 0  # policy calls that served this task so far (its prompt seeds count them, not the global tick)


def _uniform(values: list):
  """One value when every prompt of the call has the same setting (any Policy takes it), else the list."""
  return values[0] if len(set(values)) == 1 else values


def _prompt_seed(seed: int, task: TaskState, kind: str) -> int:
  """The sampling seed of `task`'s `kind` ("act" or "reflect") prompt in its next call: a function of the
  settings' seed, the task and its own call count only, so a task samples alike whichever tasks share its calls
  (a resumed explore redoes its unfinished tasks beside other tasks, from its first tick)."""
  return derived_seed(seed, task.task_id, task.calls, kind)


def _parse(env: Env, text: str) -> str | None:
  env_parser = getattr(env, "parse_action", None)
  return env_parser(text) if env_parser is not None else parse_action(text, env.admissible_actions())


class Explorer:
  """Runs `settings.method` over tasks; calls `on_tree(tree)` as each task's tree completes."""

  def __init__(self, policy: Policy, make_env: Callable[[], Env], env_name: str, settings: ExploreSettings,
               ledger: Ledger):
    self.policy = policy
    self.make_env = make_env
    self.env_name = env_name
    self.s = settings
    self.ledger = ledger
    self.tick = 0
    self._live: list[TaskState] = []

  # --- the interaction budget --------------------------------------------------------------------------------
  def _reserved(self) -> int:
    """The most interaction the live tasks' current rollouts may still take. A rollout takes at most max_steps
    steps, its replayed prefix included (it ends at t = max_steps); a task admitted but not started holds one."""
    reserved = 0
    for task in self._live:
      if not task.tree.nodes:
        reserved += self.s.max_steps
      elif task.active is not None and not task.active.done:
        reserved += self.s.max_steps - task.active.t
    return reserved

  def _affords_rollout(self, starting: int = 0) -> bool:
    """Whether one more rollout fits in the interaction budget beside the live ones and `starting` rollouts being
    started now; a refusal marks the budget exhausted."""
    if not self.ledger.has_budget:  # skip the sum over live tasks (this runs per env step)
      return True
    if self.ledger.affords(self.s.max_steps, self._reserved() + starting * self.s.max_steps):
      return True
    self.ledger.budget_exhausted = True
    return False

  # --- rollouts ------------------------------------------------------------------------------------------------
  def _next_request(self, task: TaskState, starting: int = 0) -> BranchRequest | None:
    """The task's next rollout (root, or next queued branch), or None when the task is finished. A root always
    starts (its admission reserved it); a branch only when it fits in the budget beside `starting` others."""
    if not task.tree.nodes:
      return BranchRequest(None, 0, None, None, [], [])
    if (task.queue and task.attempts < self.s.max_attempts and not (self.s.stop_on_success and task.succeeded)
        and self._affords_rollout(starting)):
      return task.queue.popleft()
    return None

  def _may_branch(self, task: TaskState) -> bool:
    """Whether a branch requested now could still run: attempts left, interaction budget left, and the task not
    ended by its success. A reflection is only asked for then (else it would cost a policy request for nothing)."""
    return (task.attempts + len(task.queue) < self.s.max_attempts
            and not (self.s.stop_on_success and task.succeeded) and self._affords_rollout())

  def _new_node(self, task: TaskState, request: BranchRequest) -> Node:
    node = Node(len(task.tree.nodes), request.parent, request.depth, request.rollback_step, request.experience,
                list(request.prefix_actions), list(request.prefix_observations))
    task.tree.nodes.append(node)
    task.attempts += 1
    self.ledger.add("rollouts", task_id=task.task_id)
    return node

  def _env_error(self, task: TaskState, node: Node, reason: str) -> None:
    """Ends `node` as an env error and queues its request again (the crash, not the policy, ended it)."""
    node.outcome = "error"
    self.ledger.add("errors", task_id=task.task_id)
    logging.warning("explore: task %s node %d: env lost (%s); rollout ended as an error", task.task_id,
                    node.node_id, reason.splitlines()[0] if reason else "")
    if task.attempts + len(task.queue) < self.s.max_attempts:
      task.queue.append(BranchRequest(node.parent, node.depth, node.rollback_step, node.experience,
                                      list(node.prefix_actions), list(node.prefix_observations)))

  def _begin(self, task: TaskState, node: Node, result: pooled.Replay | EpisodeError) -> bool:
    """Makes `node` the task's active rollout if its replay is good; False when the branch is dropped."""
    if isinstance(result, EpisodeError):
      self._env_error(task, node, result.reason)
      return False
    observations = result.observations
    if len(observations) > 1:
      self.ledger.add("replayed_steps", len(observations) - 1, task.task_id)
    if result.ended or (node.prefix_observations and observations != node.prefix_observations):
      node.outcome = "diverged"
      self.ledger.add("divergences", task_id=task.task_id)
      logging.warning("explore: task %s node %d: replay diverged from the recorded prefix; branch dropped",
                      task.task_id, node.node_id)
      return False
    task.active = Rollout(node, observations, list(node.prefix_actions))
    return True

  def _start_all(self, tasks: Sequence[TaskState]) -> None:
    """Starts the next rollout of every task that has none (or marks it finished).

    Starts go in rounds: each task without a rollout takes its next request, then ONE `replay_all` restores them
    all (pooled envs replay concurrently); tasks whose replay diverged or errored take their next request in the
    next round. A branch is taken only when its max_steps fit in the budget beside every rollout alive or being
    started in the round (see `_affords_rollout`).
    """
    waiting = [t for t in tasks if t.active is None and not t.finished]
    while waiting:
      starts = []
      for task in waiting:
        request = self._next_request(task, starting=len(starts))
        if request is None:
          task.finished = True
        else:
          starts.append((task, self._new_node(task, request)))
      results = pooled.replay_all([t.env for t, _ in starts], [t.task_id for t, _ in starts],
                                  [n.prefix_actions for _, n in starts])
      waiting = [task for (task, node), result in zip(starts, results) if not self._begin(task, node, result)]

  def _shows_experience(self, rollout: Rollout) -> bool:
    """Whether the action prompt now carries the node's experience e (else it equals the clean prompt)."""
    node = rollout.node
    first_branch_action = node.rollback_step is not None and rollout.t == node.rollback_step - 1
    keep = self.s.keep_experience_in_context or self.s.method == "ir"  # IR's feedback stays for the attempt
    return node.experience is not None and (first_branch_action or keep)

  def _prompt(self, task: TaskState, rollout: Rollout, show_experience: bool):
    env, node = task.env, rollout.node
    # Only the pairs the prompt shows (its step numbers come from step_count), not the whole trajectory's.
    shown = max(self.s.history_length, 0)
    history = list(zip(rollout.observations[-shown - 1:-1], rollout.actions[-shown:])) if shown else []
    return build_action_prompt(
        env, instruction=env.instruction, history=history, current_observation=rollout.observations[-1],
        admissible_actions=env.admissible_actions(), step_count=rollout.t,
        history_length=self.s.history_length, experience=node.experience if show_experience else None)

  def _tick(self, acting: list[TaskState], reflecting: list[TaskState]) -> None:
    """ONE policy call per tick: an action for every acting rollout and every reflection due (decided by the
    previous tick's steps), each prompt with its own sampling settings. The reflections are applied first (a
    branch request depends only on the steps already taken); then the actions step the envs, one call per pool."""
    shows = [self._shows_experience(t.active) for t in acting]
    action_prompts = [self._prompt(t, t.active, show) for t, show in zip(acting, shows)]
    reflection_prompts = [self._reflection_prompt(t.active, t.env) for t in reflecting]
    acts, reflects = len(action_prompts), len(reflection_prompts)
    seeds = ([_prompt_seed(self.s.seed, t, "act") for t in acting] +
             [_prompt_seed(self.s.seed, t, "reflect") for t in reflecting])
    for task in {id(t): t for t in acting + reflecting}.values():  # a task acting and reflecting: once
      task.calls += 1
    completions = self.policy.generate(
        action_prompts + reflection_prompts, n=1,
        temperature=_uniform([self.s.temperature] * acts + [self.s.reflection_temperature] * reflects),
        top_p=self.s.top_p,
        max_new_tokens=_uniform([self.s.max_new_tokens] * acts + [self.s.reflection_max_new_tokens] * reflects),
        seed=seeds)
    self.ledger.add("policy_calls")
    for task in acting + reflecting:
      self.ledger.add("policy_requests", task_id=task.task_id)
    for task, messages, (completion,) in zip(reflecting, reflection_prompts, completions[acts:]):
      self._apply_reflection(task, messages, completion)
    if acting:
      self._act(acting, action_prompts, shows, [c for (c,) in completions[:acts]])

  def _act(self, live: list[TaskState], prompts: list, shows: list[bool], completions: list) -> None:
    """Parses every live rollout's action and steps all envs in one batched call (one call per pool)."""
    fits = [c.finish_reason != PROMPT_TOO_LONG for c in completions]
    for task in (t for t, ok in zip(live, fits) if not ok):
      self._prompt_too_long(task, "action")
    live, prompts, shows, completions = ([x for x, ok in zip(xs, fits) if ok]
                                         for xs in (live, prompts, shows, completions))
    actions, env_actions = [], []
    for task, completion in zip(live, completions):
      self.ledger.add("generated_tokens", len(completion.token_ids), task.task_id)
      action = _parse(task.env, completion.text)
      if action is None:
        self.ledger.add("invalid_actions", task_id=task.task_id)
      actions.append(action)
      env_actions.append(action if action is not None else completion.text)
    # Clean prompts show the state the action answers: build them all before any env moves. Without e in the
    # prompt the clean prompt is the prompt itself (the same list: building it again is most of the bookkeeping).
    cleans = [self._prompt(t, t.active, False) if show else m for t, m, show in zip(live, prompts, shows)]
    steps = pooled.step_all([t.env for t in live], env_actions)
    for task, messages, clean, completion, action, env_action, step in zip(
        live, prompts, cleans, completions, actions, env_actions, steps):
      if isinstance(step, EpisodeError):
        task.active.errored = task.active.done = True
        self._env_error(task, task.active.node, step.reason)
        continue
      self._record(task, Turn(task.active.t + 1, task.active.observations[-1], messages, clean, completion.text,
                              action or "", float(step.reward)), env_action, step)

  def _prompt_too_long(self, task: TaskState, prompt: str) -> None:
    """Counts a prompt the policy could not take; an action prompt's rollout ends there (its next prompts would
    only be longer), unreflected, with outcome "prompt_too_long"."""
    self.ledger.add("prompts_too_long", task_id=task.task_id)
    rollout = task.active
    logging.warning("explore: task %s node %d: %s prompt after step %d exceeds the policy's context", task.task_id,
                    rollout.node.node_id, prompt, rollout.t)
    if prompt == "action":
      rollout.node.outcome = PROMPT_TOO_LONG
      rollout.errored = rollout.done = True

  def _record(self, task: TaskState, turn: Turn, env_action: str, step) -> None:
    """Appends one executed turn to the active rollout; decides done, failure and whether a reflection is due."""
    rollout = task.active
    self.ledger.add("env_steps", task_id=task.task_id)
    rollout.node.turns.append(turn)
    rollout.actions.append(env_action)
    rollout.observations.append(step.observation)
    rollout.success = step.success
    rollout.done = step.done or step.success or rollout.t >= self.s.max_steps
    signals = {
        "irreversible": bool(step.info.get("irreversible", False)),
        "done_without_success": step.done and not step.success,
        "step_limit": rollout.t >= self.s.max_steps and not step.success,
    }
    rollout.failed = not step.success and any(signals[s] for s in self.s.failure_signals)
    if rollout.failed:
      rollout.done = True
    if self.s.method == "leafe" and rollout.node.depth < self.s.max_depth and self._may_branch(task):
      if rollout.failed:
        rollout.reflection_due = "failure"
      elif self.s.reflect_every > 0 and not rollout.done and rollout.t % self.s.reflect_every == 0:
        rollout.reflection_due = "periodic"

  @staticmethod
  def _reflection_prompt(r: Rollout, env: Env):
    outcome = "failure" if r.reflection_due == "failure" else "in progress"
    return reflection_lib.build_reflection_prompt(
        env, instruction=env.instruction, steps=list(zip(r.observations[:-1], r.actions)),
        final_observation=r.observations[-1], outcome=outcome)

  def _apply_reflection(self, task: TaskState, messages, completion) -> None:
    """Parses one reflection; a valid one queues a branch from its rollback step while the budget allows."""
    r = task.active
    self.ledger.add("reflections", task_id=task.task_id)
    self.ledger.add("generated_tokens", len(completion.token_ids), task.task_id)
    too_long = completion.finish_reason == PROMPT_TOO_LONG
    parsed = None if too_long else reflection_lib.parse_reflection(completion.text, r.t)
    queued = False
    if too_long:
      self._prompt_too_long(task, "reflection")
    elif parsed is None:
      self.ledger.add("unparsable_reflections", task_id=task.task_id)
    elif task.attempts + len(task.queue) < self.s.max_attempts:
      tau, experience = parsed
      task.queue.append(BranchRequest(r.node.node_id, r.node.depth + 1, tau, experience,
                                      r.actions[: tau - 1], r.observations[:tau]))
      self.ledger.add("branches", task_id=task.task_id)
      queued = True
    r.node.reflections.append(Reflection(r.t, r.reflection_due, messages, completion.text,
                                         parsed[0] if parsed else None, parsed[1] if parsed else None, queued))
    r.reflection_due = None

  def _finish_rollout(self, task: TaskState) -> None:
    r = task.active
    r.node.final_observation = r.observations[-1]
    too_long = r.node.outcome == PROMPT_TOO_LONG
    if r.errored and not too_long:  # a lost env: outcome set and its request re-queued already
      task.active = None
      return
    if not too_long:
      r.node.outcome = "success" if r.success else "failure"
    if r.success:
      task.succeeded = True
      self.ledger.add("successes", task_id=task.task_id)
    # IS and IR start over from the first step, whose prompt is short again: an over-long prompt ends that
    # attempt only, as a failure does.
    retry = (self.s.method == "is" or (self.s.method == "ir" and not r.success))
    if retry and task.attempts + len(task.queue) < self.s.max_attempts:
      experience = None
      if self.s.method == "ir":
        experience = (f"A previous attempt took the actions {', '.join(r.actions)} and failed; it ended with:\n"
                      f"{r.observations[-1]}")
      # A fresh attempt from the start (tau = 1 with an empty prefix).
      task.queue.append(BranchRequest(r.node.node_id, 0 if self.s.method == "is" else r.node.depth + 1,
                                      1 if experience else None, experience, [], []))
    task.active = None

  # --- the loop ------------------------------------------------------------------------------------------------
  def run(self, task_ids: Sequence[str], on_tree: Callable[[Tree], None]) -> None:
    """Explores every task; `on_tree(tree)` is called once per task as its tree completes."""
    pending = collections.deque(task_ids)
    live: list[TaskState] = []
    while pending or live:
      self._live = live
      while pending and len(live) < self.s.concurrency and self._affords_rollout():
        task_id = pending.popleft()
        env = self.make_env()
        live.append(TaskState(task_id, env, Tree(task_id, self.env_name, ""), collections.deque()))
      if not live:
        if pending:
          logging.info("explore: interaction budget spent (%d of %d; another rollout may take %d); %d tasks not "
                       "started", self.ledger.interaction, self.ledger.env_step_budget, self.s.max_steps,
                       len(pending))
        break
      self._start_all(live)
      for task in live:
        if not task.tree.instruction and task.tree.nodes:
          task.tree.instruction = task.env.instruction
      finished = [t for t in live if t.finished]
      for task in finished:
        task.tree.ledger = dict(self.ledger.per_task[task.task_id])
        on_tree(task.tree)
      pooled.release_all([t.env for t in finished])
      live = self._live = [t for t in live if not t.finished]
      acting = [t for t in live if t.active is not None and not t.active.done]
      reflecting = [t for t in live if t.active is not None and t.active.reflection_due]
      if not acting and not reflecting:
        continue
      self._tick(acting, reflecting)
      for task in live:
        # A rollout that ended with a reflection due stays until the next tick has reflected on it.
        if task.active is not None and task.active.done and not task.active.reflection_due:
          self._finish_rollout(task)
      self.tick += 1
