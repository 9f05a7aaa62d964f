"""Small workdir files (ledgers, stats, results) replaced atomically and durably.

The text goes to `<path>.tmp`, is fsynced, then renamed over `path`: a killed process leaves the old file or the
new one, and a machine crash cannot leave an empty file behind the rename (unsynced data can be lost after it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any


def write_lines(path: str, lines: Iterable[str]) -> None:
  """Replaces `path` by `lines` (each with its own newline)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json(path: str, obj: Any, *, sort_keys: bool = False) -> None:
  """Replaces `path` by `obj` as indented JSON."""
  write_lines(path, [json.dumps(obj, indent=1, sort_keys=sort_keys)])
