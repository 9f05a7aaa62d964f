"""Sokoban solver and deadlock tests.

`solve` has two modes (both exact, both prune only provably dead states):
  * no step limit: push-optimal BFS over box configurations; the player is normalised to the smallest cell of
    its reachable region, so all player positions that reach the same pushes are one state. Moves between
    pushes are filled in with shortest walks.
  * `max_steps` given: move-optimal BFS over (player, boxes), depth-bounded by `max_steps`. The env's step limit
    counts moves, and a push-optimal solution can be longer in moves than a move-optimal one, so checking a
    push-optimal solution against a move limit would reject solvable rooms. The depth bound keeps this cheap
    for the short limits the env uses (verl-agent: 15).
Pruning: boxes on dead squares (cells from which a lone box can never reach a target) and 2x2 freezes (four
cells of walls/boxes with a box off target).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from leafe_jax.envs.sokoban.level import DIRECTIONS, LURD, Level

_DIR_ORDER = ("up", "down", "left", "right")


def dead_squares(level: Level) -> frozenset[int]:
  """Floor cells from which a lone box cannot be pushed onto any target (corners, dead wall segments, ...).

  Computed by pulling a box backwards from every target: a cell is live if some pull chain reaches it.
  """
  offsets = level.offsets()
  walls = level.walls
  live = set(level.targets)
  queue = collections.deque(level.targets)
  while queue:
    cell = queue.popleft()
    for d in offsets.values():
      prev, player = cell - d, cell - 2 * d  # box was at prev, pushed by a player standing at prev - d
      if prev not in walls and player not in walls and prev not in live:
        live.add(prev)
        queue.append(prev)
  return frozenset(c for c in level.floor() if c not in live)


def frozen_2x2(level: Level, cell: int, boxes: Iterable[int]) -> bool:
  """True if a 2x2 square containing `cell` is all walls/boxes with at least one box off target."""
  boxes = boxes if isinstance(boxes, (set, frozenset)) else set(boxes)
  w = level.width
  walls, targets = level.walls, level.targets
  for top_left in (cell, cell - 1, cell - w, cell - w - 1):
    square = (top_left, top_left + 1, top_left + w, top_left + w + 1)
    if all(c in walls or c in boxes for c in square) and any(c in boxes and c not in targets for c in square):
      return True
  return False


def is_irreversible(level: Level, boxes: Iterable[int], dead: frozenset[int]) -> bool:
  """A box off target on a dead square, or any 2x2 freeze: no sequence of actions can still succeed."""
  boxes = frozenset(boxes)
  if any(b in dead for b in boxes):
    return True
  return any(b not in level.targets and frozen_2x2(level, b, boxes) for b in boxes)


def _reachable(start: int, walls: frozenset[int], boxes: frozenset[int], offsets: tuple[int, ...]) -> set[int]:
  seen, stack = {start}, [start]
  while stack:
    cell = stack.pop()
    for d in offsets:
      nxt = cell + d
      if nxt not in walls and nxt not in boxes and nxt not in seen:
        seen.add(nxt)
        stack.append(nxt)
  return seen


def _walk(start: int, goal: int, walls: frozenset[int], boxes: frozenset[int], level: Level) -> str:
  """Shortest walk (lowercase LURD) from start to goal around boxes; the goal must be reachable."""
  if start == goal:
    return ""
  offsets = level.offsets()
  parent = {start: None}
  queue = collections.deque([start])
  while queue:
    cell = queue.popleft()
    for name in _DIR_ORDER:
      nxt = cell + offsets[name]
      if nxt in walls or nxt in boxes or nxt in parent:
        continue
      parent[nxt] = (cell, LURD[name])
      if nxt == goal:
        path = []
        while parent[nxt] is not None:
          nxt, letter = parent[nxt]
          path.append(letter)
        return "".join(reversed(path))
      queue.append(nxt)
  raise AssertionError("walk target unreachable")  # callers only ask for reachable cells


def _solve_push_optimal(level: Level, max_pushes: int | None) -> str | None:
  offsets = level.offsets()
  offset_values = tuple(offsets[n] for n in _DIR_ORDER)
  walls, targets = level.walls, level.targets
  dead = dead_squares(level)
  start_boxes = level.boxes
  if start_boxes == targets:
    return ""
  if is_irreversible(level, start_boxes, dead):
    return None
  region = _reachable(level.player, walls, start_boxes, offset_values)
  start_key = (min(region), start_boxes)
  # key -> (parent key, box cell, direction name); the BFS frontier carries the reachable region.
  parent: dict = {start_key: None}
  frontier = [(start_key, region)]
  pushes = 0
  goal = None
  while frontier and goal is None:
    if max_pushes is not None and pushes >= max_pushes:
      break
    pushes += 1
    next_frontier = []
    for key, region in frontier:
      boxes = key[1]
      for box in boxes:
        for name in _DIR_ORDER:
          d = offsets[name]
          dest = box + d
          if box - d not in region or dest in walls or dest in boxes or dest in dead:
            continue
          new_boxes = (boxes - {box}) | {dest}
          if dest not in targets and frozen_2x2(level, dest, new_boxes):
            continue
          new_region = _reachable(box, walls, new_boxes, offset_values)
          new_key = (min(new_region), new_boxes)
          if new_key in parent:
            continue
          parent[new_key] = (key, box, name)
          if new_boxes == targets:
            goal = new_key
            break
          next_frontier.append((new_key, new_region))
        if goal is not None:
          break
      if goal is not None:
        break
    frontier = next_frontier
  if goal is None:
    return None
  pushes_seq = []
  key = goal
  while parent[key] is not None:
    key, box, name = parent[key]
    pushes_seq.append((box, name))
  pushes_seq.reverse()
  # Rebuild the full move string from the start position.
  player, boxes, out = level.player, set(start_boxes), []
  for box, name in pushes_seq:
    d = offsets[name]
    out.append(_walk(player, box - d, walls, frozenset(boxes), level))
    out.append(LURD[name].upper())
    boxes.remove(box)
    boxes.add(box + d)
    player = box
  return "".join(out)


def _solve_move_optimal(level: Level, max_steps: int, max_pushes: int | None) -> str | None:
  offsets = level.offsets()
  moves = [(offsets[n], LURD[n]) for n in _DIR_ORDER]
  walls, targets = level.walls, level.targets
  dead = dead_squares(level)
  start = (level.player, level.boxes)
  if level.boxes == targets:
    return ""
  if is_irreversible(level, level.boxes, dead):
    return None
  parent: dict = {start: None}
  frontier = [start]
  for _ in range(max_steps):
    next_frontier = []
    for state in frontier:
      player, boxes = state
      for d, letter in moves:
        nxt = player + d
        if nxt in walls:
          continue
        if nxt in boxes:
          dest = nxt + d
          if dest in walls or dest in boxes or dest in dead:
            continue
          new_boxes = (boxes - {nxt}) | {dest}
          if dest not in targets and frozen_2x2(level, dest, new_boxes):
            continue
          new_state, step = (nxt, new_boxes), letter.upper()
        else:
          new_state, step = (nxt, boxes), letter
        if new_state in parent:
          continue
        parent[new_state] = (state, step)
        if new_state[1] == targets:
          path = []
          while parent[new_state] is not None:
            new_state, step = parent[new_state]
            path.append(step)
          solution = "".join(reversed(path))
          if max_pushes is not None and sum(ch.isupper() for ch in solution) > max_pushes:
            return None  # documented: the move-optimal mode does not trade moves for fewer pushes
          return solution
        next_frontier.append(new_state)
    frontier = next_frontier
    if not frontier:
      break
  return None


def solve(level: Level, max_pushes: int | None = None, max_steps: int | None = None) -> str | None:
  """A solution as a LURD string (lowercase moves, uppercase pushes), or None if none exists within the limits.

  Without `max_steps` the solution is push-optimal; with it, move-optimal among solutions of <= max_steps moves.
  """
  if max_steps is not None:
    return _solve_move_optimal(level, max_steps, max_pushes)
  return _solve_push_optimal(level, max_pushes)


def apply_lurd(level: Level, solution: str) -> tuple[int, frozenset[int]]:
  """Plays a LURD string strictly (every move legal, uppercase exactly when pushing); returns (player, boxes)."""
  offsets = {LURD[n]: d for n, d in level.offsets().items()}
  player, boxes = level.player, set(level.boxes)
  for i, ch in enumerate(solution):
    d = offsets.get(ch.lower())
    if d is None:
      raise ValueError(f"move {i}: {ch!r} is not a LURD letter")
    nxt = player + d
    if nxt in level.walls:
      raise ValueError(f"move {i}: {ch!r} walks into a wall")
    pushing = nxt in boxes
    if pushing != ch.isupper():
      raise ValueError(f"move {i}: {ch!r} {'does not push' if ch.isupper() else 'pushes a box'}")
    if pushing:
      dest = nxt + d
      if dest in level.walls or dest in boxes:
        raise ValueError(f"move {i}: {ch!r} pushes a box into a wall or box")
      boxes.remove(nxt)
      boxes.add(dest)
    player = nxt
  return player, frozenset(boxes)


__all__ = ["DIRECTIONS", "apply_lurd", "dead_squares", "frozen_2x2", "is_irreversible", "solve"]
