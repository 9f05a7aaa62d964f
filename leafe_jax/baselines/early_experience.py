"""Early Experience (arXiv 2510.08558), the paper's baseline: learning from the states an expert visits and the
agent's own alternative actions there, without rewards.

From an expert trajectory (`ExpertEnv.gold_actions`) with states s_i and actions a_i it builds three kinds of
examples, every state rendered with the same action prompt the explorer and the evaluation use:

- `sft` (imitation, IL): s_i -> a_i.
- `iwm` (implicit world modelling): (s_i, a) -> the observation a leads to, for K alternatives sampled uniformly
  from the admissible non-expert actions, plus the expert action itself (EE paper §B.1). Next-token prediction
  of states with the policy's own parameters; the EE recipe trains this first, then IL.
- `sr` (self-reflection): s_i -> c_i ∘ a_i. The policy proposes K alternatives (temperature 1; invalid proposals
  are replaced by random admissible actions), each is executed, and the policy is asked why a_i beats them,
  shown every resulting state; c_i is that reflection. Reflections that conclude with another action are dropped
  (EE drops reflections whose concluded action is not the expert's). Mixed with `sft` in one SFT run.

An alternative is executed by rolling back to s_i (env snapshot where the env has one, else reset + replay of the
expert prefix, checked observation by observation) and taking one step. A replay that diverges drops the state's
alternatives and is counted, never trained on.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import re
from collections.abc import Callable, Sequence

from leafe_jax.envs.base import SnapshotEnv
from leafe_jax.envs.prompts import build_action_prompt, parse_action, template_of
from leafe_jax.policy.base import Message, Policy, derived_seed

KINDS = ("sft", "iwm", "sr")

# World-model turn: the state as the action prompt shows it, then the action; the target is the next observation.
WORLD_MODEL_SYSTEM = ("You model a text environment: given its current state and an action, you predict what it "
                      "shows next.")
WORLD_MODEL_QUESTION = "The agent now takes the action: {action}\nWrite the observation the environment returns."

# Our wording of the EE self-reflection prompt (EE paper §4.3 names the fields and the four points it asks for).
REFLECTION_PROMPT = """An agent is at a decision point. Below are the situation, the action an expert took there \
with the state it led to, and other actions the agent considered with the state each one leads to.

Situation:
{situation}

Expert action: {expert_action}
It leads to:
{expert_next}

Other actions:
{alternatives}

Write the reasoning the agent should go through here, as an inner monologue: the goal and what the situation \
shows; for each other action, what it leads to and why that is worse; why the expert action is the right one, \
given the state it leads to; and any clue, constraint or consequence in the situation that decides it. Use only \
the information above and do not talk about being an AI. End by naming the action to take. Write only the \
monologue."""
ALTERNATIVE_ITEM = "{index}. {action}\n   It leads to:\n{observation}"


@dataclasses.dataclass(frozen=True)
class ExpertState:
  """s_i of an expert trajectory: what the agent saw before the expert's i-th action (0-based)."""

  task_id: str
  step: int  # actions taken before this state
  instruction: str
  history: tuple[tuple[str, str], ...]  # (observation, action) pairs before s_i, oldest first
  observation: str
  admissible: tuple[str, ...] | None
  expert_action: str
  expert_next: str  # the observation after the expert action


@dataclasses.dataclass(frozen=True)
class Example:
  kind: str  # one of KINDS
  task_id: str
  step: int
  messages: list[Message]
  response: str


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to build and how; the stage maps its config section onto this."""

  methods: tuple[str, ...] = ("iwm", "sr")  # "sft" examples are always built (IL, and stage 2 of IWM)
  iwm_alternatives: int = 8  # K non-expert actions per state for IWM (EE ALFWorld: 8; ScienceWorld: 3)
  sr_alternatives: int = 3  # K policy proposals per state for SR (EE: 3)
  history_length: int = 2  # (observation, action) pairs shown in prompts; match the explorer and eval
  proposal_temperature: float = 1.0  # EE: alternatives proposed at temperature 1.0
  reflection_temperature: float = 1.0  # EE does not say
  top_p: float = 1.0
  max_new_tokens: int = 512  # action proposal budget
  reflection_max_new_tokens: int = 512  # EE reflections are ~120 words
  il_response_template: str = "<action>{action}</action>"
  sr_response_template: str = "<think>\n{reflection}\n</think>\n<action>{action}</action>"
  require_expert_conclusion: bool = True  # drop reflections that conclude another action
  seed: int = 0


def action_messages(env, state: ExpertState, history_length: int, *, output_format: str | None = None,
                    system: str | None = None) -> list[Message]:
  """The action prompt at s_i (optionally with another system text / closing question, same state rendering)."""
  template = template_of(env)
  if output_format is not None or system is not None:
    template = dataclasses.replace(template, output_format=template.output_format if output_format is None
                                   else output_format, system=template.system if system is None else system)
  return build_action_prompt(template, instruction=state.instruction, history=state.history,
                             current_observation=state.observation, admissible_actions=state.admissible,
                             step_count=state.step, history_length=history_length)


def world_model_messages(env, state: ExpertState, action: str, history_length: int) -> list[Message]:
  return action_messages(env, state, history_length, system=WORLD_MODEL_SYSTEM,
                         output_format=WORLD_MODEL_QUESTION.format(action=action))


def reflection_messages(env, state: ExpertState, outcomes: Sequence[tuple[str, str]],
                        history_length: int) -> list[Message]:
  """The SR prompt: situation, expert action and its next state, (alternative, next state) pairs."""
  situation = action_messages(env, state, history_length, output_format="")[-1]["content"]
  items = [ALTERNATIVE_ITEM.format(index=i + 1, action=a, observation=o) for i, (a, o) in enumerate(outcomes)]
  text = REFLECTION_PROMPT.format(situation=situation, expert_action=state.expert_action,
                                  expert_next=state.expert_next, alternatives="\n".join(items) or "(none)")
  return [{"role": "user", "content": text}]


def play_expert(env, task_id: str, actions: Sequence[str]) -> tuple[list[ExpertState], bool]:
  """Plays `actions` from the start of `task_id`: the states visited, and whether the expert succeeded."""
  observation = env.reset(task_id)
  history: list[tuple[str, str]] = []
  states: list[ExpertState] = []
  for i, action in enumerate(actions):
    admissible = env.admissible_actions()
    instruction = env.instruction
    result = env.step(action)
    states.append(ExpertState(task_id, i, instruction, tuple(history), observation,
                              None if admissible is None else tuple(admissible), action, result.observation))
    history.append((observation, action))
    observation = result.observation
    if result.done:
      return states, bool(result.success)
  return states, False


def uniform_alternatives(state: ExpertState, k: int, rng: random.Random,
                         accepts: Callable[[str], str | None] | None = None) -> list[str]:
  """Up to k admissible non-expert actions, uniformly without replacement ([] where the env lists none).

  `accepts` is the env's `parse_action` where it has one: a listed entry it does not accept is a template, not
  an action (WebShop's `search[<your query>]`), and is never executed as an alternative."""
  if state.admissible is None:
    return []
  pool = [a for a in state.admissible if a != state.expert_action and (accepts is None or accepts(a) is not None)]
  return rng.sample(pool, min(k, len(pool)))


def proposed_alternatives(texts: Sequence[str], state: ExpertState, k: int, rng: random.Random,
                          accepts: Callable[[str], str | None] | None = None) -> tuple[list[str], int]:
  """The policy's proposals as distinct non-expert actions, unusable ones (no parsable admissible action, a
  listed entry `accepts` rejects, the expert's, a repeat) replaced by random admissible actions while unused ones
  remain; returns (alternatives, number of random replacements made)."""
  chosen: list[str] = []
  for text in texts[:k]:
    action = parse_action(text, state.admissible)
    if accepts is not None and action is not None and accepts(action) is None:
      action = None  # a listed template the env does not take as an action (as in uniform_alternatives)
    if action is not None and action != state.expert_action and action not in chosen:
      chosen.append(action)
  wanted = min(k, len(texts))
  spare = [a for a in uniform_alternatives(state, len(state.admissible or ()), rng, accepts) if a not in chosen]
  replacements = spare[: wanted - len(chosen)]
  return chosen + replacements, len(replacements)


def _mention_pattern(action: str) -> re.Pattern:
  words = [re.escape(w) for w in action.lower().split()]
  return re.compile(r"(?<![\w])" + r"\s+".join(words) + r"(?![\w])")


def concluded_action(reflection: str, candidates: Sequence[str]) -> str | None:
  """The candidate the reflection names last (case-insensitive, whole words), or None if it names none."""
  text = reflection.lower()
  best, best_end = None, -1
  for candidate in sorted(set(candidates), key=len):  # on a tie in end position the longer name wins
    ends = [m.end() for m in _mention_pattern(candidate).finditer(text)]
    if ends and ends[-1] >= best_end:
      best, best_end = candidate, ends[-1]
  return best


def expert_trajectory(env, task_id: str) -> tuple[list[ExpertState], collections.Counter]:
  """The expert's states of `task_id` ([] when the expert fails it) and the env work it took."""
  states, success = play_expert(env, task_id, env.gold_actions(task_id))
  stats = collections.Counter(env_steps=len(states), tasks=1)
  if not success:
    stats["expert_failed"] += 1
    return [], stats
  stats["states"] += len(states)
  return states, stats


def _rollback(env, states: Sequence[ExpertState], i: int, snapshots: dict, stats: collections.Counter) -> bool:
  """Puts `env` at states[i]; False (counted) when a replayed observation differs from the recorded one."""
  if i in snapshots:
    env.restore(snapshots[i])
    return True
  observation = env.reset(states[i].task_id)
  for j in range(i):
    if observation != states[j].observation:
      stats["replay_divergences"] += 1
      return False
    observation = env.step(states[j].expert_action).observation
    stats["replayed_steps"] += 1
  if observation != states[i].observation:
    stats["replay_divergences"] += 1
    return False
  if isinstance(env, SnapshotEnv):
    snapshots[i] = env.snapshot()
  return True


def execute_alternatives(env, states: Sequence[ExpertState], requests: dict[int, list[str]]
                         ) -> tuple[dict[tuple[int, str], str], collections.Counter]:
  """{(state index, action): the observation it leads to} for every requested action of one trajectory. A state
  whose rollback diverged has no entries."""
  outcomes: dict[tuple[int, str], str] = {}
  stats: collections.Counter = collections.Counter()
  snapshots: dict = {}
  for i in sorted(requests):
    for action in dict.fromkeys(requests[i]):
      if not _rollback(env, states, i, snapshots, stats):
        for a in requests[i]:
          outcomes.pop((i, a), None)
        break
      outcomes[(i, action)] = env.step(action).observation
      stats["env_steps"] += 1
      stats["alternatives_executed"] += 1
  return outcomes, stats


# --- env work in worker processes -------------------------------------------------------------------------------
_WORKER_ENV = None


def _start_worker(env_name: str, env_config: dict) -> None:
  global _WORKER_ENV
  from leafe_jax import envs

  _WORKER_ENV = envs.make(env_name, **env_config)


def _in_worker(job):
  fn, args = job
  return fn(_WORKER_ENV, *args)


class EnvRunner:
  """Runs env-side functions `fn(env, *args)` on an in-process env, or spread over `workers` processes that each
  build their own env (spawned, not forked: the parent may hold a JAX runtime). Results keep the input order."""

  def __init__(self, env, env_name: str = "", env_config: dict | None = None, workers: int = 0):
    self.env = env
    self._pool = None
    if workers > 0:
      import concurrent.futures
      import multiprocessing

      self._pool = concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
          initargs=(env_name, dict(env_config or {})))

  def map(self, fn, arg_tuples: Sequence[tuple]) -> list:
    if self._pool is None:
      return [fn(self.env, *args) for args in arg_tuples]
    return list(self._pool.map(_in_worker, [(fn, args) for args in arg_tuples]))

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(cancel_futures=True)
      self._pool = None

  def __enter__(self) -> EnvRunner:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class Builder:
  """Builds the examples of a batch of tasks; env steps and policy calls are counted in `stats`.

  `env` renders the prompts (and does the env work unless a `runner` with worker processes is given).
  """

  def __init__(self, env, policy: Policy | None, settings: Settings, runner: EnvRunner | None = None):
    unknown = sorted(set(settings.methods) - {"iwm", "sr"})
    if unknown:
      raise ValueError(f"early_experience.methods: unknown {unknown}; known: ['iwm', 'sr']")
    if "sr" in settings.methods and policy is None:
      raise ValueError("early_experience: method 'sr' needs a policy (it proposes alternatives and reflects)")
    self.env = env
    self.policy = policy
    self.settings = settings
    self.runner = runner or EnvRunner(env)
    self.accepts = getattr(env, "parse_action", None)  # which listed entries are actions (uniform_alternatives)
    self.stats: collections.Counter = collections.Counter()

  def build(self, task_ids: Sequence[str]) -> list[Example]:
    """All examples of `task_ids`, in task order. Random choices are seeded per task, so a task's examples do
    not depend on which other tasks share the batch (given the same policy samples)."""
    s = self.settings
    rngs = {t: random.Random(f"{s.seed}:{t}") for t in task_ids}
    trajectories: dict[str, list[ExpertState]] = {}  # task -> expert states, for the tasks the expert solved
    for task_id, (states, stats) in zip(task_ids, self.runner.map(expert_trajectory, [(t,) for t in task_ids]),
                                        strict=True):
      self.stats.update(stats)
      if states:
        trajectories[task_id] = states
    expert_states = [st for states in trajectories.values() for st in states]
    # Both methods' alternatives are chosen first, so that each trajectory is rolled back and stepped in one pass.
    iwm = {(st.task_id, st.step): uniform_alternatives(st, s.iwm_alternatives, rngs[st.task_id], self.accepts)
           for st in expert_states} if "iwm" in s.methods else {}
    sr = self._sr_alternatives(expert_states, rngs) if "sr" in s.methods else {}
    jobs = [(states, {st.step: [*iwm.get((t, st.step), ()), *sr.get((t, st.step), ())] for st in states})
            for t, states in trajectories.items()]
    outcomes: dict[tuple[str, int, str], str] = {}  # (task, state index, action) -> observation
    for (states, _), (found, stats) in zip(jobs, self.runner.map(execute_alternatives, jobs), strict=True):
      outcomes.update({(states[0].task_id, i, a): o for (i, a), o in found.items()})
      self.stats.update(stats)

    def outcomes_of(st: ExpertState, actions: Sequence[str]) -> list[tuple[str, str]] | None:
      found = [(a, outcomes.get((st.task_id, st.step, a))) for a in actions]
      return None if any(o is None for _, o in found) else found  # None: the rollback diverged

    examples = [Example("sft", st.task_id, st.step, action_messages(self.env, st, s.history_length),
                        s.il_response_template.format(action=st.expert_action)) for st in expert_states]
    for (task_id, step), actions in iwm.items():
      st = trajectories[task_id][step]
      found = outcomes_of(st, actions)
      if found is None:
        continue
      for action, observation in [*found, (st.expert_action, st.expert_next)]:
        messages = world_model_messages(self.env, st, action, s.history_length)
        examples.append(Example("iwm", st.task_id, st.step, messages, observation))
    if sr:
      examples += self._self_reflection(expert_states, sr, outcomes_of)
    for ex in examples:
      self.stats[f"records_{ex.kind}"] += 1
    return examples

  def _sr_alternatives(self, flat: Sequence[ExpertState],
                       rngs: dict[str, random.Random]) -> dict[tuple[str, int], list[str]]:
    """The policy's K proposals at every expert state, as usable alternatives (one batched call)."""
    s = self.settings
    if not flat:
      return {}
    proposals = self.policy.generate([action_messages(self.env, st, s.history_length) for st in flat],
                                     n=s.sr_alternatives, temperature=s.proposal_temperature, top_p=s.top_p,
                                     max_new_tokens=s.max_new_tokens,
                                     seed=[derived_seed(s.seed, "propose", st.task_id, st.step) for st in flat])
    self.stats["policy_calls"] += 1
    chosen = {}
    for st, completions in zip(flat, proposals, strict=True):
      alternatives, replaced = proposed_alternatives([c.text for c in completions], st, s.sr_alternatives,
                                                     rngs[st.task_id], self.accepts)
      self.stats["sr_proposals_replaced"] += replaced
      chosen[(st.task_id, st.step)] = alternatives
    return chosen

  def _self_reflection(self, expert_states: Sequence[ExpertState], sr: dict, outcomes_of) -> list[Example]:
    s = self.settings
    pending = []  # (state, outcomes)
    for st in expert_states:
      found = outcomes_of(st, sr[(st.task_id, st.step)])
      if found is not None:
        pending.append((st, found))
    if not pending:
      return []
    reflections = self.policy.generate(
        [reflection_messages(self.env, st, found, s.history_length) for st, found in pending], n=1,
        temperature=s.reflection_temperature, top_p=s.top_p, max_new_tokens=s.reflection_max_new_tokens,
        seed=[derived_seed(s.seed, "reflect", st.task_id, st.step) for st, _ in pending])
    self.stats["policy_calls"] += 1
    examples = []
    for (st, found), (completion, *_) in zip(pending, reflections, strict=True):
      reflection = completion.text.strip()
      candidates = [st.expert_action, *(a for a, _ in found)]
      if not reflection or (s.require_expert_conclusion and concluded_action(reflection, candidates)
                            != st.expert_action):
        self.stats["sr_dropped"] += 1
        continue
      examples.append(Example("sr", st.task_id, st.step, action_messages(self.env, st, s.history_length),
                              s.sr_response_template.format(reflection=reflection, action=st.expert_action)))
    return examples
