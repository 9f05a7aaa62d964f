"""What a stage's outputs were made with, so that a rerun with other settings is refused instead of resumed.

A resumable stage keeps `<stage_dir>/settings.json`: its config section without the fields that only say where,
how fast or how much of the work runs (each stage names those), plus fingerprints of its inputs (a policy's
weights, the trees it distills). A rerun that finds outputs made with other settings stops and names the changed
fields. Resuming would mix old outputs with new ones, or report old results as new.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from leafe_jax import durable

FILE_NAME = "settings.json"
_SAMPLE_BYTES = 1 << 16  # bytes read at the start, middle and end of each fingerprinted file


def files_fingerprint(paths: Iterable[str], root: str) -> str:
  """A digest of files' names (relative to `root`), sizes and samples of their bytes: cheap for any size, it
  differs for a retrained export or an appended file and is the same for a copy (a moved workdir)."""
  digest = hashlib.sha256()
  for path in sorted(paths):
    size = os.path.getsize(path)
    digest.update(f"{os.path.relpath(path, root)}:{size}".encode())
    with open(path, "rb") as f:
      for offset in (0, max(size // 2 - _SAMPLE_BYTES // 2, 0), max(size - _SAMPLE_BYTES, 0)):
        f.seek(offset)
        digest.update(f.read(_SAMPLE_BYTES))
  return digest.hexdigest()


def hf_dir_fingerprint(hf_dir: str) -> str | None:
  """`files_fingerprint` of an HF directory's config.json and safetensors files; None if it does not exist."""
  if not os.path.isdir(hf_dir):
    return None
  names = [n for n in os.listdir(hf_dir) if n == "config.json" or n.endswith(".safetensors")]
  return files_fingerprint([os.path.join(hf_dir, n) for n in names], hf_dir)


class Settings(dict):
  """A stage's settings (JSON values by field name) that remembers which fields of its section are free, so that
  `check` ignores them in a recorded settings.json without being told again."""

  def __init__(self, values: Mapping[str, Any], free_fields: Sequence[str] = ()):
    super().__init__(values)
    self.free_fields = tuple(free_fields)


def of_section(section: ml_collections.ConfigDict, free_fields: Sequence[str], **inputs: str | None) -> Settings:
  """The settings of a config section: every field but `free_fields` (those a rerun may change), as JSON
  values, plus `inputs` (fingerprints of what the stage reads)."""
  unknown = set(free_fields) - set(section.keys())
  if unknown:  # a renamed field would otherwise silently become a setting again
    raise KeyError(f"free fields {sorted(unknown)} are not in the section")
  settings = json.loads(json.dumps({k: v for k, v in section.to_dict().items() if k not in free_fields}))
  settings.update(inputs)
  return Settings(settings, free_fields)


def check(stage: str, stage_dir: str, settings: Mapping[str, Any], *, has_outputs: bool, write: bool = True,
          what: str = "outputs", added_fields: Mapping[str, Any] | None = None) -> None:
  """Refuses outputs in `stage_dir` made with other settings; records `settings` where none are recorded.

  `has_outputs`: the stage has outputs to resume (or skip to). Without outputs the settings are (re)written, so
  a stage that has made nothing yet takes the new settings. Outputs of a version without settings.json are
  adopted with the current settings. `write`: this process writes files (the primary of a multi-process launch).
  Several hosts (explore shards) may write the same settings at once: each renames a temporary file of its own.
  The section's free fields (`Settings.free_fields`, from `of_section`) are ignored where a recorded
  settings.json holds them (recorded before they were free, e.g. `eval.ks`). `added_fields`: fields added to the
  section after settings were first recorded, with the value that behaves as runs before them did; a recorded
  settings.json without such a field matches that value.
  """
  path = os.path.join(stage_dir, FILE_NAME)
  if has_outputs and os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    for name, old_behaviour in (added_fields or {}).items():
      stored.setdefault(name, old_behaviour)
    keys = (set(stored) - set(getattr(settings, "free_fields", ()))) | set(settings)
    changed = sorted(k for k in keys if stored.get(k) != settings.get(k))
    if changed:
      raise ValueError(f"{stage}: the {what} in {stage_dir} were made with other settings ({', '.join(changed)} "
                       f"changed since, per {FILE_NAME}): move that folder away to run the stage again, or run "
                       "it under another variant")
  elif write:
    os.makedirs(stage_dir, exist_ok=True)
    durable.write_json(path, settings, sort_keys=True, shared=True)
