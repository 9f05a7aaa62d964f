"""Config validation: unknown or ill-typed fields fail before any work starts (DESIGN.md §3 "Config").

Each stage module exposes `CONFIG_SECTION` (the top-level config key it reads) and `default_config()`
(a ConfigDict with every field it knows and its default). A user config must use only those fields, with
values of the default's type; `validate` names the first offending field with its dotted path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config field is unknown, missing or of the wrong type."""


def _type_ok(value: Any, default: Any) -> bool:
  if default is None or value is None:
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def validate(config: Mapping[str, Any], schema: Mapping[str, Any], path: str = "config") -> None:
  """Raises ConfigError naming `path.field` for any field of `config` that `schema` lacks or types otherwise.

  A schema value that is a ConfigDict is checked recursively; a schema value that is an empty dict
  (`ml_collections.ConfigDict()` with no fields) accepts any sub-fields (free-form sections such as
  model overrides).
  """
  for key, value in config.items():
    where = f"{path}.{key}"
    if key not in schema:
      known = ", ".join(sorted(schema.keys()))
      raise ConfigError(f"unknown config field {where!r}; known fields here: {known}")
    default = schema[key]
    if isinstance(default, (Mapping, ml_collections.ConfigDict)):
      if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
        raise ConfigError(f"config field {where!r} must be a section (ConfigDict), got {type(value).__name__}")
      if len(default) == 0:
        continue
      validate(value, default, where)
      continue
    if not _type_ok(value, default):
      raise ConfigError(
          f"config field {where!r} has type {type(value).__name__}, expected {type(default).__name__}"
          f" (value {value!r})"
      )
