"""Config validation: unknown or ill-typed fields fail before any work starts (DESIGN.md §3 "Config").

Free-form sections that a stage turns into a dataclass (`train.model` -> ModelConfig) are checked against the
dataclass's fields with `validate_dataclass_section`.

Each stage module exposes `CONFIG_SECTION` (the top-level config key it reads) and `default_config()`
(a ConfigDict with every field it knows and its default). A user config must use only those fields, with
values of the default's type; `validate` names the first offending field with its dotted path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
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


def _fits(value: Any, hint: Any) -> bool:
  """Whether a config value can fill a dataclass field annotated `hint` (unknown annotations: yes)."""
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_fits(value, h) for h in typing.get_args(hint))
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is str:
    return isinstance(value, str)
  if hint is tuple or origin is tuple:
    args = typing.get_args(hint)
    pairs = bool(args) and typing.get_origin(args[0]) is tuple  # (key, value) pairs may be given as a dict
    return isinstance(value, (tuple, list)) or pairs and isinstance(value, (Mapping, ml_collections.ConfigDict))
  return True


def validate_dataclass_section(section: ml_collections.ConfigDict, cls: type, path: str, *, complete: bool,
                               why: str = "") -> None:
  """Checks a free-form section that a stage turns into `cls(**section)`: known fields of fitting types, and
  with `complete` every required field present and `cls` built without error (`why` says why it must be)."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  name = cls.__name__
  for key, value in section.items():
    where = f"{path}.{key}"
    if key not in fields:
      raise ConfigError(f"{where}: unknown {name} field; known: {', '.join(fields)}")
    if not _fits(value, hints[key]):
      raise ConfigError(f"{where}: has type {type(value).__name__}, {name} expects {fields[key].type} "
                        f"(value {value!r})")
  if not complete:
    return
  required = [f for f, spec in fields.items()
              if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING]
  missing = [f for f in required if f not in section]
  if missing:
    raise ConfigError(f"{path} lacks {name} field(s) {', '.join(missing)}" + (f": {why}" if why else ""))
  try:
    cls(**section.to_dict())
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{path}: {e}") from e
