"""Stage-2 data from backtrack trees: D_cf (context distillation of branch actions) and D_reh (rehearsal).

D_cf: for each branch whose revised action a'_tau lies on a successful trajectory (its own rollout's, or a
descendant's that branched after tau and so replayed a'_tau: Algorithm 1 marks every branch on a successful path),
a'_tau as the target of the history h_tau WITHOUT the experience e (the prompt the policy sees at test time), at
most `max_cf_per_task` per task, shallowest branches first (paper: 3 per task); an unparsable a'_tau is skipped,
and so is one whose response or clean prompt quotes e or an ancestor branch's e (no cf record's tokens hold an
experience text).
D_reh: every agent turn (with a parsed action) of a random `reh_fraction` of successful rollouts, branched ones
included (paper: 20%), weight beta; their prompts carry no experience either, and a turn that quotes an
experience of its path is left out as in D_cf.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from absl import logging

from leafe_jax.explore.tree import Node, Tree, Turn


@dataclasses.dataclass(frozen=True)
class Example:
  kind: str  # "cf" | "reh"
  task_id: str
  node_id: int
  step: int
  messages: list
  response: str
  experience: str
  weight: float


def successful_branches(tree: Tree) -> list[Node]:
  """Branch nodes whose first turn (a'_tau, parsed) is on the path of a successful rollout, in node order."""
  # path_turns hands out the nodes' own Turn objects, so identity says whether a'_tau was replayed on that path.
  on_success_path = {id(turn) for node in tree.nodes if node.outcome == "success" for turn in tree.path_turns(node)}
  return [n for n in tree.nodes if n.rollback_step is not None and n.turns and n.turns[0].action
          and id(n.turns[0]) in on_success_path]


def _normalised(text: str) -> str:
  return " ".join(text.split()).lower()


def path_experiences(tree: Tree, node: Node) -> list[str]:
  """The experiences e of `node` and of every ancestor: each was in the prompt of some turn on node's path."""
  found = []
  while node is not None:
    if node.experience and node.experience.strip():
      found.append(_normalised(node.experience))
    node = tree.nodes[node.parent] if node.parent is not None else None
  return found


def quotes_experience(turn: Turn, experiences: Sequence[str]) -> bool:
  """Whether a turn's response or clean prompt holds one of `experiences` (case and spacing aside): a model
  quoting its advice while reasoning, or an earlier raw, unparsed response carried into the history. Such a turn
  would teach the advice itself under a prompt without it; an ancestor's e counts too, since a branch's history
  replays its ancestors' branch turns."""
  texts = [turn.response] + [str(m.get("content", "")) for m in turn.clean_messages]
  return any(e in _normalised(text) for text in texts for e in experiences)


def build_examples(trees: Sequence[Tree], *, max_cf_per_task: int, reh_fraction: float, reh_weight: float,
                   seed: int) -> list[Example]:
  """All distillation examples of `trees` (sorted by task id first, so the result is independent of order)."""
  trees = sorted(trees, key=lambda t: t.task_id)
  for before, tree in zip(trees, trees[1:]):
    if before.task_id == tree.task_id:  # its records would be made twice, past max_cf_per_task
      raise ValueError(f"distill: task {tree.task_id!r} has more than one tree (tree files of different explore "
                       "shard counts, or a stale file, in one folder?); keep one tree file per task")
  examples: list[Example] = []
  quoting = 0
  for tree in trees:
    successful = successful_branches(tree)
    branches = [n for n in successful if not quotes_experience(n.turns[0], path_experiences(tree, n))]
    quoting += len(successful) - len(branches)
    for node in sorted(branches, key=lambda n: (n.depth, n.node_id))[:max_cf_per_task]:
      turn = node.turns[0]
      examples.append(Example("cf", tree.task_id, node.node_id, turn.step, turn.clean_messages, turn.response,
                              node.experience or "", 1.0))
  if quoting:
    logging.warning("distill: %d successful branches left out of D_cf: their a'_tau response or clean prompt "
                    "quotes the experience e (the record would teach e, not the action without it)", quoting)
  successes = [(tree, node) for tree in trees for node in tree.nodes if node.outcome == "success"]
  rng = random.Random(seed)
  chosen = rng.sample(successes, round(reh_fraction * len(successes)))
  quoting = 0
  for tree, node in sorted(chosen, key=lambda tn: (tn[0].task_id, tn[1].node_id)):
    experiences = path_experiences(tree, node)
    for turn in tree.path_turns(node):
      if not turn.action:
        continue
      if quotes_experience(turn, experiences):
        quoting += 1
        continue
      examples.append(Example("reh", tree.task_id, node.node_id, turn.step, turn.clean_messages, turn.response,
                              "", reh_weight))
  if quoting:
    logging.warning("distill: %d turns of rehearsed rollouts left out of D_reh: their response or clean prompt "
                    "quotes an experience e of their path", quoting)
  return examples
