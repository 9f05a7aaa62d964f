"""Backtrack trees: one per task, nodes are rollouts (the root, then branches), saved one JSON line per tree."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any

from leafe_jax import durable


@dataclasses.dataclass
class Turn:
  """One agent turn. `messages` is what the policy saw; `clean_messages` the same without the experience."""

  step: int  # 1-based step number in the episode
  observation: str  # the observation the action answers
  messages: list[dict[str, str]]
  clean_messages: list[dict[str, str]]
  response: str  # the model's full text
  action: str  # the parsed action ("" when unparsable)
  reward: float = 0.0


@dataclasses.dataclass
class Reflection:
  after_step: int  # t: the reflection saw steps 1..t
  trigger: str  # "failure" | "periodic"
  messages: list[dict[str, str]]
  response: str
  rollback_step: int | None  # tau, None when unparsable
  experience: str | None
  queued: bool  # a branch request was queued (budget and depth allowing)


@dataclasses.dataclass
class Node:
  """A rollout. A branch replays `prefix_actions` (its parent's a_1..a_{tau-1}) then acts from step tau."""

  node_id: int
  parent: int | None
  depth: int
  rollback_step: int | None  # tau; None for the root
  experience: str | None
  prefix_actions: list[str]
  prefix_observations: list[str]  # recorded o_0..o_{tau-1}, checked against the replay
  turns: list[Turn] = dataclasses.field(default_factory=list)  # own turns, from step tau on
  reflections: list[Reflection] = dataclasses.field(default_factory=list)
  final_observation: str = ""
  outcome: str = "running"  # "success" | "failure" | "diverged" | "error"


@dataclasses.dataclass
class Tree:
  task_id: str
  env: str
  instruction: str
  nodes: list[Node] = dataclasses.field(default_factory=list)
  ledger: dict[str, int] = dataclasses.field(default_factory=dict)  # this task's interaction counters

  def node(self, node_id: int) -> Node:
    return self.nodes[node_id]

  def path_turns(self, node: Node) -> list[Turn]:
    """Every turn of the trajectory that ends in `node`: its ancestors' turns up to tau-1, then its own (the same
    Turn objects). A node without tau (the root, or an IS restart) starts from step 1: its own turns."""
    if node.parent is None or node.rollback_step is None:
      return list(node.turns)
    parent = self.nodes[node.parent]
    return self.path_turns(parent)[: node.rollback_step - 1] + list(node.turns)

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json_line(self) -> str:
    """`to_json()` as one JSON line, without deep copies, and with a turn's `clean_messages` written as null
    when it equals `messages` (no experience was shown: most turns), which halves the file."""
    # A tree holds no reference cycles (turns share message lists, which is no cycle): skip json's check.
    return json.dumps(self, default=_encode_field, ensure_ascii=False, check_circular=False)

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> Tree:
    nodes = []
    for n in data["nodes"]:
      n = dict(n)
      n["turns"] = [Turn(**{**t, "clean_messages": t["clean_messages"] or t["messages"]}) for t in n["turns"]]
      n["reflections"] = [Reflection(**r) for r in n["reflections"]]
      nodes.append(Node(**n))
    return cls(task_id=data["task_id"], env=data["env"], instruction=data["instruction"], nodes=nodes,
               ledger=data.get("ledger", {}))


def _encode_field(obj: Any) -> dict[str, Any]:
  """json.dumps hook: a dataclass of this module as its field dict (shallow; json walks the rest)."""
  if isinstance(obj, Turn) and (obj.clean_messages is obj.messages or obj.clean_messages == obj.messages):
    return {**obj.__dict__, "clean_messages": None}
  if dataclasses.is_dataclass(obj):
    return obj.__dict__
  raise TypeError(f"cannot serialise {type(obj).__name__} in a backtrack tree")


# A machine crash (not a kill: written lines are in the page cache then) loses at most the trees since the last
# fsync; they are redone on resume. fsync costs milliseconds, a Sokoban tree's JSON line much less.
DEFAULT_FSYNC_EVERY = 64  # trees between fsyncs
DEFAULT_FSYNC_S = 30.0  # seconds between fsyncs (checked when a tree is appended)


# An explore shard's tree file, in <stage_dir>/trees: shard-<i>-of-<n>.jsonl.
TREE_FILE = re.compile(r"shard-(\d+)-of-(\d+)\.jsonl")


def tree_file_name(index: int, count: int) -> str:
  """The file name of explore shard `index` of `count`'s trees (TREE_FILE parses it back)."""
  return f"shard-{index}-of-{count}.jsonl"


class TreeStore:
  """Appends finished trees to a JSONL file, one written line per tree, fsynced in groups.

  Every `append` writes and closes (flushes) its line, so a killed process loses no finished tree. `fsync` runs
  once `fsync_every` trees or `fsync_s` seconds have gone by since the last one, and on `sync()`, which the
  owner calls when it is done (and before saving anything that counts the trees, such as the ledger).
  """

  def __init__(self, path: str, fsync_every: int = DEFAULT_FSYNC_EVERY, fsync_s: float = DEFAULT_FSYNC_S):
    if fsync_every < 1 or fsync_s < 0:
      raise ValueError(f"TreeStore needs fsync_every >= 1 and fsync_s >= 0, got {fsync_every}, {fsync_s}")
    self.path = path
    self.fsync_every, self.fsync_s = fsync_every, fsync_s
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    durable.cut_torn_tail(path)  # what a kill or a crash left of an unfinished tree; those tasks are redone
    self._new_file = not os.path.exists(path)  # its directory entry needs an fsync too
    self._unsynced = 0
    self._synced_at = time.monotonic()

  def load(self) -> list[Tree]:
    return read_trees(self.path)

  def append(self, tree: Tree) -> None:
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(tree.to_json_line() + "\n")
      f.flush()
      self._unsynced += 1
      if self._unsynced >= self.fsync_every or time.monotonic() - self._synced_at >= self.fsync_s:
        self._fsync(f.fileno())

  def sync(self) -> None:
    """fsyncs the trees appended since the last fsync (none: nothing to do)."""
    if self._unsynced:
      with open(self.path, "a", encoding="utf-8") as f:
        self._fsync(f.fileno())

  def _fsync(self, fd: int) -> None:
    os.fsync(fd)
    if self._new_file:
      directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
      try:
        os.fsync(directory)
      finally:
        os.close(directory)
      self._new_file = False
    self._unsynced, self._synced_at = 0, time.monotonic()


def read_trees(path: str) -> list[Tree]:
  """The trees of a tree file; none while it does not exist yet."""
  return list(load_trees(path)) if os.path.exists(path) else []


def load_trees(path: str):
  """Trees of a JSONL file; a malformed line is an error naming the file and line."""
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield Tree.from_json(json.loads(line))
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{number}: not a backtrack tree: {e}") from e
