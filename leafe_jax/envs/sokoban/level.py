"""Sokoban levels: the immutable `Level`, XSB parsing and text rendering.

Cells are flat indices `row * width + col`. `load_xsb` normalises every level so that all cells the player
cannot reach (treating boxes as passable) are walls; with that, every floor cell has four in-grid neighbours
and the game code never needs bounds checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

# XSB (the standard Sokoban text format) symbols.
XSB_WALL = "#"
XSB_PLAYER = "@"
XSB_PLAYER_ON_TARGET = "+"
XSB_BOX = "$"
XSB_BOX_ON_TARGET = "*"
XSB_TARGET = "."
XSB_FLOOR = (" ", "-", "_")
XSB_COMMENT = ";"
_XSB_CELLS = frozenset("#@+$*.") | frozenset(XSB_FLOOR)

# Observation symbols of verl-agent's text Sokoban.
TEXT_WALL = "#"
TEXT_FLOOR = "_"
TEXT_TARGET = "O"
TEXT_BOX = "X"
TEXT_BOX_ON_TARGET = "√"
TEXT_PLAYER = "P"
TEXT_PLAYER_ON_TARGET = "S"

# Action name -> (row delta, col delta). The LURD letter of each direction is its first letter.
DIRECTIONS: dict[str, tuple[int, int]] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
LURD = {"up": "u", "down": "d", "left": "l", "right": "r"}
ACTION_OF_LETTER = {letter: action for action, letter in LURD.items()}  # LURD letter (lowercase) -> action


class XsbError(ValueError):
  """A malformed XSB level; the message names the level index and line."""


@dataclasses.dataclass(frozen=True)
class Level:
  """A Sokoban start state. `walls` covers every non-playable cell (including the outside)."""

  width: int
  height: int
  walls: frozenset[int]
  targets: frozenset[int]
  boxes: frozenset[int]
  player: int
  name: str = ""

  def offsets(self) -> dict[str, int]:
    """Flat-index delta of each action."""
    return {a: dr * self.width + dc for a, (dr, dc) in DIRECTIONS.items()}

  def floor(self) -> list[int]:
    return [c for c in range(self.width * self.height) if c not in self.walls]


def render_text(level: Level, player: int, boxes: Iterable[int]) -> str:
  """The grid in verl-agent symbols, one line per row."""
  boxes = frozenset(boxes)
  chars = []
  for cell in range(level.width * level.height):
    if cell in level.walls:
      ch = TEXT_WALL
    elif cell in boxes:
      ch = TEXT_BOX_ON_TARGET if cell in level.targets else TEXT_BOX
    elif cell == player:
      ch = TEXT_PLAYER_ON_TARGET if cell in level.targets else TEXT_PLAYER
    else:
      ch = TEXT_TARGET if cell in level.targets else TEXT_FLOOR
    chars.append(ch)
  w = level.width
  return "\n".join("".join(chars[r * w:(r + 1) * w]) for r in range(level.height))


def to_xsb(level: Level) -> str:
  """XSB text of a level (outside cells written as walls)."""
  rows = []
  for r in range(level.height):
    row = []
    for c in range(level.width):
      cell = r * level.width + c
      if cell in level.walls:
        row.append(XSB_WALL)
      elif cell in level.boxes:
        row.append(XSB_BOX_ON_TARGET if cell in level.targets else XSB_BOX)
      elif cell == level.player:
        row.append(XSB_PLAYER_ON_TARGET if cell in level.targets else XSB_PLAYER)
      else:
        row.append(XSB_TARGET if cell in level.targets else "-")
    rows.append("".join(row))
  return "\n".join(rows)


def _is_level_line(line: str) -> bool:
  """A grid row: has a wall and is not a comment (unknown symbols in it are then reported, not skipped)."""
  stripped = line.strip()
  return XSB_WALL in stripped and not stripped.startswith(XSB_COMMENT) and not stripped.lower().startswith("title:")


def _parse_block(rows: list[tuple[int, str]], index: int, title: str) -> Level:
  """One level from its (line number, text) rows; raises XsbError naming level `index` and a line."""
  first_line = rows[0][0]
  height = len(rows)
  width = max(len(text) for _, text in rows)
  walls, targets, boxes, players = set(), set(), set(), []
  present = set()  # cells written inside the grid (not padding)
  for r, (line_no, text) in enumerate(rows):
    for c, ch in enumerate(text):
      cell = r * width + c
      if ch not in _XSB_CELLS:
        raise XsbError(f"level {index} (line {line_no}): unknown symbol {ch!r} in column {c + 1}")
      present.add(cell)
      if ch == XSB_WALL:
        walls.add(cell)
      if ch in (XSB_TARGET, XSB_BOX_ON_TARGET, XSB_PLAYER_ON_TARGET):
        targets.add(cell)
      if ch in (XSB_BOX, XSB_BOX_ON_TARGET):
        boxes.add(cell)
      if ch in (XSB_PLAYER, XSB_PLAYER_ON_TARGET):
        players.append((cell, line_no))
  if len(players) != 1:
    where = ", ".join(f"line {ln}" for _, ln in players) or f"lines {first_line}-{rows[-1][0]}"
    raise XsbError(f"level {index}: expected exactly one player (@ or +), found {len(players)} ({where})")
  if len(boxes) != len(targets):
    raise XsbError(f"level {index} (lines {first_line}-{rows[-1][0]}): {len(boxes)} boxes but {len(targets)} targets")
  if not boxes:
    raise XsbError(f"level {index} (line {first_line}): a level needs at least one box")
  player = players[0][0]
  # Flood fill from the player through every non-wall cell; reaching the border or a padding cell means the
  # room is open.
  reach, stack = {player}, [player]
  while stack:
    cell = stack.pop()
    r, c = divmod(cell, width)
    if r in (0, height - 1) or c in (0, width - 1) or cell not in present:
      raise XsbError(f"level {index} (line {rows[r][0]}): room is not closed: the player walks out at column {c + 1}")
    for nxt in (cell - width, cell + width, cell - 1, cell + 1):
      if nxt not in walls and nxt not in reach:
        reach.add(nxt)
        stack.append(nxt)
  for kind, cells in (("box", boxes), ("target", targets)):
    outside = sorted(cells - reach)
    if outside:
      r, c = divmod(outside[0], width)
      raise XsbError(f"level {index} (line {rows[r][0]}): {kind} at column {c + 1} is outside the player's room")
  all_walls = frozenset(range(width * height)) - reach
  return Level(width, height, all_walls, frozenset(targets), frozenset(boxes), player, name=title)


def load_xsb(text: str, name: str = "") -> list[Level]:
  """Parses XSB text: levels separated by blank lines or comment/title lines; `;` starts a comment.

  `-` and `_` are accepted as floor. Each level is validated (one player, boxes == targets, closed room);
  errors name the level index (0-based) and the line (1-based).
  """
  levels: list[Level] = []
  block: list[tuple[int, str]] = []
  title = ""

  def flush():
    nonlocal block, title
    if block:
      label = title or (f"{name}:{len(levels)}" if name else str(len(levels)))
      levels.append(_parse_block(block, len(levels), label))
    block, title = [], ""

  for line_no, raw in enumerate(text.splitlines(), start=1):
    line = raw.rstrip("\r\n").rstrip()
    if _is_level_line(line):
      block.append((line_no, line))
      continue
    flush()
    stripped = line.strip()
    if stripped.startswith(XSB_COMMENT):
      title = stripped.lstrip(XSB_COMMENT).strip()
    elif stripped.lower().startswith("title:"):
      title = stripped[len("title:"):].strip()
    elif stripped and set(stripped) <= _XSB_CELLS:
      # Level symbols on a row without walls: reject instead of silently dropping part of a level.
      raise XsbError(f"level {len(levels)} (line {line_no}): row without walls: {stripped!r}")
  flush()
  return levels
