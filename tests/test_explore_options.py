"""Explorer options with scripted policies: IR, the step budget, shards, e in context, stop on success, depth."""

import ml_collections
import pytest

from leafe_jax.envs.sokoban import SokobanEnv, load_xsb
from leafe_jax.explore import distill, engine, reflection
from leafe_jax.explore import stage as explore_stage
from leafe_jax.explore.ledger import Ledger
from leafe_jax.explore.tree import load_trees
from leafe_jax.policy.scripted import ScriptedPolicy

CORRIDOR = load_xsb("#######\n#@ $ .#\n#######")[0]  # right x3 solves it
# Pushing the box down (up, right, down) puts it on the bottom row, away from the target: a deadlock at step 3.
ROOM = load_xsb("######\n#    #\n#@$ .#\n#    #\n######")[0]


def _corridor_env():
  return SokobanEnv(level=CORRIDOR, max_steps=3, compact_prompt=True)


def _is_reflection(messages) -> bool:
  return messages[-1]["content"].endswith("reflect:")


def _policy(act, reflect=lambda content: reflection.format_reflection(1, "x")):
  """Answers reflection prompts with `reflect(content)` and action prompts with `<action>act(content)</action>`."""
  def respond(messages):
    content = messages[-1]["content"]
    return reflect(content) if _is_reflection(messages) else f"<action>{act(content)}</action>"

  return ScriptedPolicy(respond)


def _settings(**kw):
  base = {"history_length": 0, "max_steps": 3, "max_depth": 2, "max_attempts": 4}
  return engine.ExploreSettings(**{**base, **kw})


def _explore(policy, make_env, tasks, settings, budget=0):
  trees, ledger = [], Ledger(env_step_budget=budget)
  engine.Explorer(policy, make_env, "sokoban", settings, ledger).run(tasks, trees.append)
  return trees, ledger


def _texts(messages) -> str:
  return "\n".join(m["content"] for m in messages)


# --- method="ir" -------------------------------------------------------------------------------------------------
def test_ir_retries_from_the_start_with_the_previous_outcome_and_never_reflects():
  trees, ledger = _explore(_policy(lambda c: "left"), _corridor_env, ["level"], _settings(method="ir", max_attempts=3))
  nodes = trees[0].nodes
  assert [n.outcome for n in nodes] == ["failure"] * 3
  assert [(n.parent, n.depth, n.rollback_step) for n in nodes] == [(None, 0, None), (0, 1, 1), (1, 2, 1)]
  start = nodes[0].turns[0].observation
  for prev, node in zip(nodes, nodes[1:]):
    # A fresh episode: nothing replayed, step 1 from the start state, the previous attempt's outcome as e.
    assert node.prefix_actions == [] and node.prefix_observations == []
    assert [t.step for t in node.turns] == [1, 2, 3] and node.turns[0].observation == start
    assert "left, left, left" in node.experience and prev.final_observation in node.experience
    # IR's feedback stays in every action prompt of the attempt; the clean prompts never show it.
    assert all(f"hint: {node.experience}" in _texts(t.messages) for t in node.turns)
    assert all("hint" not in _texts(t.clean_messages) for t in node.turns)
  assert all("hint" not in _texts(t.messages) for t in nodes[0].turns)
  assert all(not n.reflections for n in nodes)
  assert ledger.total["reflections"] == ledger.total["branches"] == ledger.total["replayed_steps"] == 0


def test_ir_stops_retrying_once_an_attempt_succeeds():
  act = lambda content: "right" if "hint:" in content else "left"  # the feedback makes the retry go right
  trees, ledger = _explore(_policy(act), _corridor_env, ["level"], _settings(method="ir", max_attempts=4))
  assert [n.outcome for n in trees[0].nodes] == ["failure", "success"]
  assert ledger.total["rollouts"] == 2 and ledger.total["successes"] == 1


# --- env_step_budget ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0, 8])
def test_env_step_budget_stops_new_rollouts_and_tasks_once_spent(budget):
  make_env = lambda: SokobanEnv(max_steps=3, compact_prompt=True)
  tasks = make_env().tasks("levels:small")
  settings = _settings(method="is", max_attempts=4, concurrency=2)
  trees, ledger = _explore(_policy(lambda c: "left"), make_env, tasks, settings, budget=budget)
  if not budget:
    assert len(trees) == len(tasks) and all(len(t.nodes) == 4 for t in trees)
    assert not ledger.budget_exhausted
    return
  # A hard cap: rollouts start only while their max_steps fit beside the running ones', and the run stops once
  # another rollout would not fit.
  assert budget - settings.max_steps < ledger.interaction <= budget and ledger.budget_exhausted
  assert len(trees) < len(tasks) and ledger.total["rollouts"] < len(trees) * settings.max_attempts
  assert sum(t.ledger["env_steps"] for t in trees) == ledger.total["env_steps"]


@pytest.mark.parametrize("method", ["is", "leafe"])
def test_env_step_budget_is_not_overrun_by_the_rollouts_alive_at_once(method):
  # Eight tasks admitted at once used to run to their ends past the budget (budget 10 at concurrency 8 spent 61,
  # found by a review helper). Each rollout reserves its max_steps, so only three 3-step roots start here.
  make_env = lambda: SokobanEnv(max_steps=3, compact_prompt=True)
  tasks = make_env().tasks("levels:small")
  reflect = lambda content: reflection.format_reflection(2, "try again")
  settings = _settings(method=method, max_attempts=4, concurrency=8)
  trees, ledger = _explore(_policy(lambda c: "left", reflect), make_env, tasks, settings, budget=10)
  assert ledger.interaction <= 10 and ledger.to_json()["budget_exhausted"]
  assert len(trees) == 3 and ledger.total["rollouts"] == 3
  assert ledger.total["env_steps"] + ledger.total["replayed_steps"] == sum(
      t.ledger["env_steps"] + t.ledger.get("replayed_steps", 0) for t in trees)


def test_env_step_budget_also_stops_branches_and_the_reflections_that_would_ask_for_them():
  act = lambda content: "right" if "hint:" in content else "left"
  reflect = lambda content: reflection.format_reflection(1, "go right")
  for budget in (3, 5):  # the root's 3 steps, and room for fewer than another rollout's 3
    trees, ledger = _explore(_policy(act, reflect), _corridor_env, ["level"], _settings(), budget=budget)
    (root,) = trees[0].nodes  # the root failed with no room for a branch, so none is asked for
    assert not root.reflections and ledger.total["reflections"] == ledger.total["branches"] == 0
    assert ledger.total["rollouts"] == 1 and ledger.interaction == 3 and ledger.budget_exhausted
  # With room for one more rollout the same failure reflects and branches.
  trees, ledger = _explore(_policy(act, reflect), _corridor_env, ["level"], _settings(), budget=6)
  assert trees[0].nodes[0].reflections[0].queued and ledger.total["rollouts"] == 2


def test_an_env_step_budget_below_one_rollout_is_refused():
  config, cfg = _small_levels_config(5)
  cfg.env_step_budget = 1  # max_steps is 2
  with pytest.raises(ValueError, match="'explore.env_step_budget' is 1, less than one rollout's "
                                       "explore.max_steps=2"):
    explore_stage.check_config(cfg)


def test_no_reflection_is_asked_for_once_the_attempt_budget_is_used_up():
  reflect = lambda content: reflection.format_reflection(1, "go left")  # every branch fails again
  trees, ledger = _explore(_policy(lambda c: "left", reflect), _corridor_env, ["level"],
                           _settings(max_attempts=2, max_depth=5))
  root, branch = trees[0].nodes
  assert root.reflections[0].queued and not branch.reflections  # the branch is the last attempt
  assert ledger.total["reflections"] == 1 and ledger.total["rollouts"] == 2


# --- shards ------------------------------------------------------------------------------------------------------
def _small_levels_config(num_tasks):
  """An explore stage config: IS, one 2-step attempt on each of the first `num_tasks` small levels."""
  config = ml_collections.ConfigDict({"explore": explore_stage.default_config()})
  cfg = config.explore
  cfg.env_config = ml_collections.ConfigDict({"max_steps": 2, "compact_prompt": True})
  cfg.split, cfg.num_tasks, cfg.method, cfg.max_attempts, cfg.max_steps, cfg.history_length = (
      "levels:small", num_tasks, "is", 1, 2, 0)
  return config, cfg


def test_shards_cover_every_task_exactly_once(tmp_path):
  config, cfg = _small_levels_config(100)
  all_tasks = SokobanEnv().tasks("levels:small")
  count = 3  # 5 tasks: uneven shards
  per_shard = []
  for index in range(count):
    cfg.shard = f"{index}/{count}"
    ledger = explore_stage.run_with_policy(config, str(tmp_path), _policy(lambda c: "left"))
    trees = list(load_trees(str(tmp_path / "trees" / f"shard-{index}-of-{count}.jsonl")))
    per_shard.append([t.task_id for t in trees])
    assert ledger.num_tasks == len(trees) > 0
  assert sum(len(ids) for ids in per_shard) == len(all_tasks) == 5
  assert sorted(i for ids in per_shard for i in ids) == sorted(all_tasks)


# --- keep_experience_in_context ----------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [False, True])
def test_keep_experience_in_context_shows_e_in_later_branch_prompts_only_when_set(keep):
  start = _corridor_env().reset("level")
  env = _corridor_env()
  env.reset("level")
  after_one = env.step("right").observation

  def act(content):  # root: right, left (the mistake), right; with the hint: right
    return "left" if content.startswith(after_one) and "hint:" not in content else "right"

  reflect = lambda content: reflection.format_reflection(2, "go right")
  trees, _ = _explore(_policy(act, reflect), _corridor_env, ["level"],
                      _settings(max_depth=1, keep_experience_in_context=keep))
  root, branch = trees[0].nodes
  assert root.turns[0].observation == start and branch.outcome == "success"
  first, second = branch.turns
  assert "hint: go right" in _texts(first.messages)
  assert ("hint: go right" in _texts(second.messages)) is keep
  assert all("hint" not in _texts(t.clean_messages) for t in branch.turns)
  examples = distill.build_examples(trees, max_cf_per_task=3, reh_fraction=1.0, reh_weight=1.0, seed=0)
  assert {e.kind for e in examples} == {"cf", "reh"}
  assert all("go right" not in _texts(e.messages) for e in examples)


# --- stop_on_success ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stop", [False, True])
def test_stop_on_success_ends_independent_sampling_at_the_first_success(stop):
  trees, ledger = _explore(_policy(lambda c: "right"), _corridor_env, ["level"],
                           _settings(method="is", max_attempts=3, stop_on_success=stop))
  assert [n.outcome for n in trees[0].nodes] == ["success"] * (1 if stop else 3)
  assert ledger.total["rollouts"] == (1 if stop else 3)


@pytest.mark.parametrize("stop", [False, True])
def test_stop_on_success_drops_the_queued_leafe_branches(stop):
  # Periodic reflections after steps 1 and 2 queue branches; the root then succeeds at step 3.
  trees, ledger = _explore(_policy(lambda c: "right"), _corridor_env, ["level"],
                           _settings(reflect_every=1, max_depth=1, max_attempts=3, stop_on_success=stop))
  root = trees[0].nodes[0]
  assert root.outcome == "success" and [r.queued for r in root.reflections] == [True, True]
  assert len(trees[0].nodes) == (1 if stop else 3)


# --- max_depth ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_depth", [0, 1, 2])
def test_no_node_is_deeper_than_max_depth_and_max_depth_nodes_never_reflect(max_depth):
  trees, ledger = _explore(_policy(lambda c: "left"), _corridor_env, ["level"],
                           _settings(reflect_every=1, max_depth=max_depth, max_attempts=12))
  nodes = trees[0].nodes
  assert max(n.depth for n in nodes) == max_depth
  assert all(not n.reflections for n in nodes if n.depth == max_depth)
  assert all(n.reflections for n in nodes if n.depth < max_depth)
  assert ledger.total["branches"] == len(nodes) - 1


# --- the irreversible failure signal -----------------------------------------------------------------------------
def _deadlock_run(failure_signals):
  env = SokobanEnv(level=ROOM, max_steps=6, compact_prompt=True)
  start = env.reset("level")
  after_up = env.step("up").observation
  after_right = env.step("right").observation
  plan = {start: "up", after_up: "right", after_right: "down"}  # then "left" from the deadlock on
  policy = _policy(lambda c: plan.get(c.split("\n\n")[0], "left"), lambda c: "no reflection")
  make_env = lambda: SokobanEnv(level=ROOM, max_steps=6, compact_prompt=True)
  trees, _ = _explore(policy, make_env, ["level"], _settings(max_steps=6, failure_signals=failure_signals))
  (root,) = trees[0].nodes
  return root


def test_an_irreversible_step_ends_the_rollout_with_a_failure_reflection():
  root = _deadlock_run(engine.FAILURE_SIGNALS)
  assert [t.action for t in root.turns] == ["up", "right", "down"] and root.outcome == "failure"
  assert [(r.after_step, r.trigger) for r in root.reflections] == [(3, "failure")]
  # Without the irreversible signal the rollout goes on to the step limit.
  root = _deadlock_run(("step_limit",))
  assert len(root.turns) == 6 and [(r.after_step, r.trigger) for r in root.reflections] == [(6, "failure")]


# --- over-long prompts under IS / IR, budget-spent reruns, bad settings ------------------------------------------
@pytest.mark.parametrize("method", ["is", "ir"])
def test_is_and_ir_start_over_after_a_prompt_too_long(method):
  from leafe_jax.policy.base import PROMPT_TOO_LONG, Completion

  overflowed = []

  class OverflowOnce(ScriptedPolicy):
    """The context overflows once: on the first attempt's second action prompt."""

    def generate(self, prompts, **kwargs):
      out = super().generate(prompts, **kwargs)
      if len(self.calls) == 2 and not overflowed:
        overflowed.append(True)
        return [[Completion(text="", finish_reason=PROMPT_TOO_LONG)] for _ in prompts]
      return out

  policy = OverflowOnce(lambda messages: "<action>left</action>")
  (tree,), ledger = _explore(policy, _corridor_env, ["level"], _settings(method=method))
  assert tree.nodes[0].outcome == PROMPT_TOO_LONG and ledger.total["prompts_too_long"] == 1
  assert len(tree.nodes) == 4 and all(n.outcome == "failure" for n in tree.nodes[1:])  # max_attempts = 4


def test_a_rerun_after_the_budget_was_spent_loads_no_policy(tmp_path):
  config, cfg = _small_levels_config(5)
  cfg.env_step_budget, cfg.concurrency = 4, 1  # two tasks of 2 steps, then the budget is spent
  built = []

  def factory():
    built.append(True)
    return _policy(lambda c: "left")

  first = explore_stage.run_with_policy(config, str(tmp_path), factory)
  again = explore_stage.run_with_policy(config, str(tmp_path), factory)
  assert len(built) == 1 and first.total == again.total and first.interaction >= 4


@pytest.mark.parametrize("field", ["concurrency", "max_attempts", "max_steps"])
def test_settings_below_one_are_refused(field):
  with pytest.raises(ValueError, match=f"explore.{field} must be >= 1, got 0"):
    _settings(**{field: 0})
