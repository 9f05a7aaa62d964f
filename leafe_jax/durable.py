"""Small workdir files (ledgers, stats, results) replaced atomically and durably.

The text goes to `<path>.tmp`, is fsynced, then renamed over `path`: a killed process leaves the old file or the
new one, and a machine crash cannot leave an empty file behind the rename (unsynced data can be lost after it).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from typing import Any

from absl import logging


def write_lines(path: str, lines: Iterable[str], *, shared: bool = False) -> None:
  """Replaces `path` by `lines` (each with its own newline). `shared`: processes of other hosts may write the
  same path at once (a shared workdir), so the temporary file is this process's own."""
  tmp = f"{path}.{socket.gethostname()}-{os.getpid()}.tmp" if shared else path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json(path: str, obj: Any, *, sort_keys: bool = False, shared: bool = False) -> None:
  """Replaces `path` by `obj` as indented JSON (`shared`: as in write_lines)."""
  write_lines(path, [json.dumps(obj, indent=1, sort_keys=sort_keys)], shared=shared)


def cut_torn_tail(path: str) -> None:
  """Cuts what a kill mid-write or a machine crash left of the unfinished tail of an append-only JSON-lines file,
  so that the next append starts a line of its own; the lines cut are redone by the caller's resume.

  A kill leaves a last line without its newline. A crash before an fsync can also leave a hole (zero bytes) in
  the unsynced part, with later lines after it; json never writes a raw NUL, so the file is cut at the start of
  the first line that holds one.
  """
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    hole = data.find(b"\0")
    if hole >= 0:
      end = data.rfind(b"\n", 0, hole) + 1
      logging.warning("%s: zero bytes from offset %d (a crash before an fsync); cutting %d bytes, redone", path,
                      hole, len(data) - end)
      f.truncate(end)
    elif data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)
