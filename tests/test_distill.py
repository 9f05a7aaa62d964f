"""D_cf and D_reh from hand-built backtrack trees: which branch actions become cf records."""

import pytest

from leafe_jax.explore.distill import build_examples, successful_branches
from leafe_jax.explore.tree import Node, Tree, Turn


def _turns(first_step: int, actions: list[str]) -> list[Turn]:
  turns = []
  for step, action in enumerate(actions, first_step):
    messages = [{"role": "user", "content": f"state before step {step}"}]
    turns.append(Turn(step, f"o{step - 1}", messages, messages, f"<action>{action or '???'}</action>", action))
  return turns


def _node(node_id, parent, depth, tau, actions, outcome, experience=None) -> Node:
  first = 1 if tau is None else tau
  return Node(node_id, parent, depth, tau, experience if tau is not None else None, [], [],
              turns=_turns(first, actions), outcome=outcome)


def _cf(tree: Tree, max_cf_per_task: int = 3) -> list[tuple[int, int, str]]:
  examples = build_examples([tree], max_cf_per_task=max_cf_per_task, reh_fraction=0.0, reh_weight=1.0, seed=0)
  return [(e.node_id, e.step, e.response) for e in examples if e.kind == "cf"]


def _chain(child_tau: int) -> Tree:
  """Root fails; a depth-1 branch at tau=2 fails on its own; its depth-2 child branches at `child_tau`, succeeds."""
  root = _node(0, None, 0, None, ["a1", "a2", "a3"], "failure")
  branch = _node(1, 0, 1, 2, ["b2", "b3"], "failure", experience="e1")
  child = _node(2, 1, 2, child_tau, [f"c{s}" for s in range(child_tau, 4)], "success", experience="e2")
  return Tree("t", "toy", "do it", [root, branch, child])


def test_a_failed_branch_whose_action_a_later_child_replayed_to_success_is_a_cf_record():
  tree = _chain(child_tau=3)  # the child replays a1, b2: the branch's a'_2 = b2 is on the successful path
  assert [n.node_id for n in successful_branches(tree)] == [1, 2]
  assert _cf(tree) == [(1, 2, "<action>b2</action>"), (2, 3, "<action>c3</action>")]
  assert _cf(tree, max_cf_per_task=1) == [(1, 2, "<action>b2</action>")]  # shallowest first


@pytest.mark.parametrize("child_tau", [1, 2])
def test_a_child_branching_at_or_before_its_parents_tau_does_not_mark_the_parent(child_tau):
  tree = _chain(child_tau)  # the child replaced (or never reached) the branch's a'_2
  assert _cf(tree) == [(2, child_tau, f"<action>c{child_tau}</action>")]


def test_an_unparsable_branch_action_is_no_cf_record_and_does_not_use_the_cap():
  root = _node(0, None, 0, None, ["a1", "a2"], "failure")
  unparsed = _node(1, 0, 1, 2, ["", "b3"], "success", experience="e1")
  parsed = _node(2, 0, 1, 2, ["c2", "c3"], "success", experience="e2")
  tree = Tree("t", "toy", "do it", [root, unparsed, parsed])
  assert _cf(tree, max_cf_per_task=1) == [(2, 2, "<action>c2</action>")]


def test_a_branch_quoting_its_experience_is_no_cf_record_and_does_not_use_the_cap():
  root = _node(0, None, 0, None, ["a1", "a2"], "failure")
  quoting = _node(1, 0, 1, 2, ["b2", "b3"], "success", experience="Push It Left")
  quoting.turns[0].response = "<think>advice: push it left</think><action>b2</action>"  # a model quoting e
  in_history = _node(2, 0, 1, 2, ["c2", "c3"], "success", experience="mind the wall")
  in_history.turns[0].clean_messages[0]["content"] += "\n[Step 1 action]: I will mind the wall"  # a raw response
  clean = _node(3, 0, 1, 2, ["d2", "d3"], "success", experience="go down")
  tree = Tree("t", "toy", "do it", [root, quoting, in_history, clean])
  assert _cf(tree, max_cf_per_task=1) == [(3, 2, "<action>d2</action>")]


def test_a_child_whose_history_holds_its_ancestors_experience_is_no_cf_record():
  # The parent's a'_2 was an unparsed raw response quoting e1, executed and so shown in the child's clean history:
  # checking only the child's own e2 kept that record, with e1 in its tokens.
  tree = _chain(child_tau=3)
  tree.nodes[2].turns[0].clean_messages[0]["content"] += "\n[Step 2 action]: OK,  I should E1 first"
  assert _cf(tree) == [(1, 2, "<action>b2</action>")]


def test_rehearsal_leaves_out_the_turns_that_quote_an_experience_of_their_path():
  root = _node(0, None, 0, None, ["a1", "a2"], "failure")
  branch = _node(1, 0, 1, 2, ["b2", "b3"], "success", experience="go  down")
  branch.turns[0].response = "<think>advice: Go down</think><action>b2</action>"
  examples = build_examples([Tree("t", "toy", "do it", [root, branch])], max_cf_per_task=3, reh_fraction=1.0,
                            reh_weight=0.5, seed=0)
  assert [(e.kind, e.step, e.response) for e in examples] == [
      ("reh", 1, "<action>a1</action>"), ("reh", 3, "<action>b3</action>")]


def test_an_independent_restart_rehearses_its_own_turns_only():
  root = _node(0, None, 0, None, ["a1", "a2"], "failure")
  restart = _node(1, 0, 0, None, ["r1", "r2"], "success")  # IS: a fresh attempt, parent set, no tau
  examples = build_examples([Tree("t", "toy", "do it", [root, restart])], max_cf_per_task=3, reh_fraction=1.0,
                            reh_weight=0.5, seed=0)
  assert [(e.kind, e.node_id, e.step, e.response) for e in examples] == [
      ("reh", 1, 1, "<action>r1</action>"), ("reh", 1, 2, "<action>r2</action>")]


def test_trees_of_one_task_in_two_shard_files_are_refused_not_distilled_twice(tmp_path):
  # A run re-sharded after a preemption (shard 0/1, then 0/2 and 1/2 in the same workdir) leaves each finished
  # task in two tree files; distill reads every *.jsonl of the folder and made its records twice: up to
  # 2 * max_cf_per_task cf records for one task, and every rehearsed turn twice.
  import glob
  import os

  from test_explore import _corridor_env, _corridor_policy, _explore, _settings

  from leafe_jax.explore import distill
  from leafe_jax.explore.tree import TreeStore, load_trees

  trees, _ = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  for name in ("shard-0-of-1.jsonl", "shard-0-of-2.jsonl"):
    TreeStore(str(tmp_path / name)).append(trees[0])
  loaded = [t for path in sorted(glob.glob(os.path.join(tmp_path, "*.jsonl"))) for t in load_trees(path)]
  with pytest.raises(ValueError, match="task 'level'"):
    distill.build_examples(loaded, max_cf_per_task=1, reh_fraction=1.0, reh_weight=1.0, seed=0)
