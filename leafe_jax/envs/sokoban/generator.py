"""Procedural Sokoban rooms following the procedure of gym-sokoban (Schrader 2018).

1. Topology: a random walk over the grid stamps one of five 3x3 floor masks at each step (direction changes
   with probability `p_change_directions`); the border is wall.
2. Placement: the player, then `num_boxes` targets, on random floor cells; boxes start on their targets.
3. Reverse play: from the solved state the player moves and pulls boxes. Every reached state whose targets are
   all uncovered is scored `box_swaps * sum(manhattan(box, its target))` (box_swaps = how often the pulled box
   changed); the best one is the start state. If no state scores above 0, the room is discarded.

Differences from gym-sokoban, on purpose: the reverse search is breadth-first and bounded by
`min(search_depth, max_steps)` moves (gym-sokoban runs a depth-first search with a fixed time-to-live), so every
candidate start state is solvable within the env's step limit by construction; ties keep the first state found.
Everything is driven by one `random.Random`, so a seed fully determines the room.
"""

from __future__ import annotations

import dataclasses
import random

from leafe_jax.envs.sokoban.level import Level

# The 3x3 floor stamps of gym-sokoban's topology walk (rows of 0 = leave, 1 = floor).
_MASKS = (
    ((0, 0, 0), (1, 1, 1), (0, 0, 0)),
    ((0, 1, 0), (0, 1, 0), (0, 1, 0)),
    ((0, 0, 0), (1, 1, 0), (0, 1, 0)),
    ((0, 0, 0), (1, 1, 0), (1, 1, 0)),
    ((0, 0, 0), (0, 1, 1), (0, 1, 0)),
)
_WALK_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))
# gym-sokoban's default number of walk steps: 1.7 * (rows + cols).
WALK_STEPS_PER_DIM = 1.7


@dataclasses.dataclass(frozen=True)
class RoomParams:
  """Knobs of the room generator (defaults: verl-agent's Sokoban setting)."""

  dim: tuple[int, int] = (6, 6)  # (rows, cols) including the outer wall; verl-agent uses 6x6
  num_boxes: int = 1  # verl-agent: 1
  max_steps: int = 15  # verl-agent: 15 moves per episode; rooms must be solvable within it
  search_depth: int = 100  # reverse-play depth bound (moves), further capped by max_steps
  p_change_directions: float = 0.35  # gym-sokoban default
  num_gen_steps: int | None = None  # topology walk length; None = 1.7 * (rows + cols) as gym-sokoban
  max_reverse_states: int = 300_000  # reverse-play state cap (gym-sokoban's cap), bounds time on large rooms


def _topology(rng: random.Random, rows: int, cols: int, p_change: float, num_steps: int) -> list[bool]:
  floor = [False] * (rows * cols)
  direction = rng.choice(_WALK_DIRECTIONS)
  r, c = rng.randint(1, rows - 1), rng.randint(1, cols - 1)
  for _ in range(num_steps):
    if rng.random() < p_change:
      direction = rng.choice(_WALK_DIRECTIONS)
    r = max(min(r + direction[0], rows - 2), 1)
    c = max(min(c + direction[1], cols - 2), 1)
    mask = rng.choice(_MASKS)
    for dr in range(3):
      for dc in range(3):
        if mask[dr][dc]:
          floor[(r - 1 + dr) * cols + (c - 1 + dc)] = True
  for r in range(rows):
    for c in range(cols):
      if r in (0, rows - 1) or c in (0, cols - 1):
        floor[r * cols + c] = False
  return floor


def _reverse_play(floor: list[bool], cols: int, player: int, targets: tuple[int, ...], depth: int,
                  max_states: int):
  """Best-scoring start state reachable by moves and pulls within `depth` moves: (score, player, boxes)."""
  offsets = (-cols, cols, -1, 1)
  target_set = frozenset(targets)
  start = (player, targets)
  seen = {(player, frozenset(targets))}
  frontier = [(start, 0, -1)]  # (state, box_swaps, index of the last pulled box)
  best = (0, player, targets)
  for _ in range(depth):
    next_frontier = []
    for (p, boxes), swaps, last in frontier:
      for d in offsets:
        nxt = p + d
        if not floor[nxt] or nxt in boxes:
          continue
        candidates = [(boxes, swaps, last)]  # plain move
        behind = p - d
        if behind in boxes:  # pull: the box behind the player follows it
          i = boxes.index(behind)
          candidates.append((boxes[:i] + (p,) + boxes[i + 1:], swaps + (i != last), i))
        for new_boxes, new_swaps, new_last in candidates:
          box_set = frozenset(new_boxes)
          key = (nxt, box_set)
          if key in seen:
            continue
          seen.add(key)
          next_frontier.append(((nxt, new_boxes), new_swaps, new_last))
          if new_swaps and nxt not in target_set and not (target_set & box_set):
            score = new_swaps * sum(
                abs(b // cols - t // cols) + abs(b % cols - t % cols) for b, t in zip(new_boxes, targets))
            if score > best[0]:
              best = (score, nxt, new_boxes)
    frontier = next_frontier
    if not frontier or len(seen) >= max_states:
      break
  return best


def generate_room(seed: int, params: RoomParams, attempt: int = 0) -> Level | None:
  """One generation attempt for `seed`; None if the attempt produced no usable room."""
  rows, cols = params.dim
  rng = random.Random(f"sokoban-room:{seed}:{attempt}")
  num_steps = params.num_gen_steps or int(WALK_STEPS_PER_DIM * (rows + cols))
  floor = _topology(rng, rows, cols, params.p_change_directions, num_steps)
  cells = [i for i, f in enumerate(floor) if f]
  if len(cells) <= params.num_boxes + 1:
    return None
  player = rng.choice(cells)
  targets = tuple(rng.sample([c for c in cells if c != player], params.num_boxes))
  depth = min(params.search_depth, params.max_steps)
  score, start_player, boxes = _reverse_play(floor, cols, player, targets, depth, params.max_reverse_states)
  if score <= 0:
    return None
  walls = frozenset(i for i, f in enumerate(floor) if not f)
  return Level(cols, rows, walls, frozenset(targets), frozenset(boxes), start_player, name=f"seed:{seed}")
