"""Environment registry: `make(name, **config)`. A new environment is one module plus one line here."""

from __future__ import annotations

import importlib
from typing import Any

from leafe_jax.envs.base import Env

# name -> "module:factory". Imported lazily so that a missing optional engine (Java, TextWorld) only fails
# when that environment is asked for.
_REGISTRY: dict[str, str] = {
    "sokoban": "leafe_jax.envs.sokoban:SokobanEnv",
    "coding": "leafe_jax.envs.coding.env:CodingEnv",
    "scienceworld": "leafe_jax.envs.scienceworld:ScienceWorldEnv",
    "alfworld": "leafe_jax.envs.alfworld:ALFWorldEnv",
    "webshop": "leafe_jax.envs.webshop:WebShopEnv",
}


def names() -> list[str]:
  return sorted(_REGISTRY)


def make(name: str, **config: Any) -> Env:
  """Builds environment `name` with keyword config; unknown names list the registered ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown environment {name!r}; registered: {', '.join(names())}")
  module_name, factory = _REGISTRY[name].split(":")
  return getattr(importlib.import_module(module_name), factory)(**config)
