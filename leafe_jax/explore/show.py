r"""Render a backtrack tree as indented text and as a picture.

  python -m leafe_jax.explore.show --tree=WORKDIR/explore/trees/shard-0-of-1.jsonl [--task=seed:12] [--png=t.png]

Prints the outline and draws the PNG, by default next to the tree file: <tree file stem>.task-<task id>.png.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence

from absl import app, flags

from leafe_jax.explore.tree import Node, Tree, load_trees

_COLOURS = {"success": "#7fc97f", "failure": "#f0a0a0", "diverged": "#c0c0c0", "error": "#fdc086",
            "prompt_too_long": "#fdc086", "running": "#ffffff"}
_SNIPPET = 40  # characters of an experience shown on an edge


def _label(node: Node) -> str:
  actions = [t.action or "?" for t in node.turns]
  head = "root" if node.rollback_step is None else f"branch at step {node.rollback_step}"
  return f"#{node.node_id} {head}: {' '.join(actions) or '-'} -> {node.outcome}"


def render_text(tree: Tree) -> str:
  """An indented outline: one line per rollout, experiences under the branch they started."""
  children: dict[int | None, list[Node]] = {}
  for node in tree.nodes:
    children.setdefault(node.parent, []).append(node)
  lines = [f"task {tree.task_id} ({tree.env}): {len(tree.nodes)} rollouts, "
           f"{sum(n.outcome == 'success' for n in tree.nodes)} successful"]

  def walk(node: Node, depth: int) -> None:
    pad = "  " * depth
    lines.append(f"{pad}{_label(node)}")
    if node.experience:
      lines.append(f"{pad}    e: {node.experience}")
    for r in node.reflections:
      verdict = f"tau={r.rollback_step}" if r.rollback_step else "unparsable"
      lines.append(f"{pad}    reflected after step {r.after_step} ({r.trigger}): {verdict}")
    for child in children.get(node.node_id, []):
      walk(child, depth + 1)

  for root in children.get(None, []):
    walk(root, 0)
  return "\n".join(lines)


def render_png(tree: Tree, path: str) -> str:
  """Nodes as boxes coloured by outcome, laid out by depth; edges labelled with tau and the experience."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  levels: dict[int, list[Node]] = {}
  for node in tree.nodes:
    levels.setdefault(node.depth, []).append(node)
  width = max(len(v) for v in levels.values())
  fig = Figure(figsize=(max(6, 3.2 * width), 1.8 + 1.9 * len(levels)), dpi=110)
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  ax.set_axis_off()
  pos = {}
  for depth, nodes in levels.items():
    for i, node in enumerate(nodes):
      pos[node.node_id] = ((i + 1) / (len(nodes) + 1), 1 - (depth + 0.5) / len(levels))
  for node in tree.nodes:
    if node.parent is not None and node.parent in pos:
      (x0, y0), (x1, y1) = pos[node.parent], pos[node.node_id]
      ax.annotate("", xy=(x1, y1 + 0.04), xytext=(x0, y0 - 0.04), arrowprops={"arrowstyle": "->", "color": "#555"})
      if node.rollback_step is not None:
        e = (node.experience or "")[:_SNIPPET]
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"tau={node.rollback_step}\n{e}", fontsize=7, ha="center",
                color="#333", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
  for node in tree.nodes:
    x, y = pos[node.node_id]
    text = "\n".join(textwrap.wrap(_label(node), 28))
    ax.text(x, y, text, ha="center", va="center", fontsize=7,
            bbox={"boxstyle": "round", "facecolor": _COLOURS.get(node.outcome, "#fff"), "edgecolor": "#333"})
  ax.set_title(f"{tree.env} task {tree.task_id}: green = success, red = failure, grey = replay diverged",
               fontsize=9)
  fig.savefig(path, bbox_inches="tight")
  return path


def pick_example(trees: Sequence[Tree]) -> Tree:
  """The first tree with a successful branch, else the first with a branch, else the first."""
  for wanted in (lambda n: n.rollback_step is not None and n.outcome == "success",
                 lambda n: n.rollback_step is not None):
    for tree in trees:
      if any(wanted(n) for n in tree.nodes):
        return tree
  return trees[0]


def render_example(tree_files: Sequence[str], png_path: str) -> tuple[str, str]:
  """(text, png path) of one telling tree among `tree_files` (used by the report stage)."""
  trees = [t for path in tree_files for t in load_trees(path)]
  if not trees:
    raise ValueError(f"no trees in {list(tree_files)}")
  tree = pick_example(trees)
  return render_text(tree), render_png(tree, png_path)


def default_png_path(tree_file: str, task_id: str) -> str:
  """<tree file stem>.task-<task id>.png beside the tree file; characters other than [A-Za-z0-9._-] become _."""
  stem = os.path.splitext(tree_file)[0]
  return f"{stem}.task-{re.sub(r'[^A-Za-z0-9._-]', '_', task_id)}.png"


_TREE = flags.DEFINE_string("tree", None, "A trees JSONL file written by the explore stage.")
_TASK = flags.DEFINE_string("task", None, "Task id to show (default: a tree with a successful branch).")
_PNG = flags.DEFINE_string("png", None, "PNG file to draw the tree into (default: next to the tree file, "
                           "<tree file stem>.task-<task id>.png, characters outside [A-Za-z0-9._-] as _).")


def main(argv: Sequence[str]) -> None:
  del argv
  trees = list(load_trees(_TREE.value))
  if not trees:
    raise app.UsageError(f"{_TREE.value} holds no trees")
  if _TASK.value:
    matches = [t for t in trees if t.task_id == _TASK.value]
    if not matches:
      raise app.UsageError(f"task {_TASK.value!r} is not in {_TREE.value}")
    tree = matches[0]
  else:
    tree = pick_example(trees)
  print(render_text(tree))
  print(f"picture: {render_png(tree, _PNG.value or default_png_path(_TREE.value, tree.task_id))}")


if __name__ == "__main__":
  flags.mark_flag_as_required("tree")
  app.run(main)
