"""Text Sokoban: procedural rooms (gym-sokoban rules), XSB levels, an exact solver and deadlock tests."""

from leafe_jax.envs.sokoban.env import ACTIONS, SOKOBAN_COMPACT_TEMPLATE, SOKOBAN_TEMPLATE, SokobanEnv, SokobanSnapshot
from leafe_jax.envs.sokoban.generator import RoomParams
from leafe_jax.envs.sokoban.level import Level, XsbError, load_xsb, render_text, to_xsb
from leafe_jax.envs.sokoban.solver import apply_lurd, dead_squares, is_irreversible, solve

__all__ = [
    "ACTIONS", "Level", "RoomParams", "SOKOBAN_COMPACT_TEMPLATE", "SOKOBAN_TEMPLATE", "SokobanEnv",
    "SokobanSnapshot", "XsbError", "apply_lurd", "dead_squares", "is_irreversible", "load_xsb", "render_text",
    "solve", "to_xsb",
]
