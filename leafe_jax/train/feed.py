"""The trainer's batch feed: one or more records folders, mixed so that an epoch is one pass over each, with a
resumable position.

Each folder is a `data.pipeline.DataIterator` (deterministic, infinite, resumable by batch count). With several
folders, batch n comes from the folder whose share of batches so far lags its share of an epoch's rows the
most (a deterministic interleave, so the state is just each folder's iterator state). The shares are packed
rows, not records: rows hold many short records or few long ones, so record shares would read a folder of short
records several times per epoch and leave one of long records unfinished.

`steps_for_epochs(E)` rounds each folder's E passes up to whole batches: the stream is endless and rows left at
an epoch's end start the next batch, so every record is trained on at least E times (a few of the next pass's
rows fill the last batch). Rounding down instead left up to a batch of rows per folder unread, which in a
records folder of a few dozen rows (the demo's stage 2) is a sizeable share of its corrections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from leafe_jax.data import pipeline


class TrainFeed:
  """Per-process batches (numpy dicts of pipeline.BATCH_KEYS) from `folders`."""

  def __init__(
      self,
      folders: Sequence[str],
      *,
      seq_len: int,
      batch_size: int,
      pack: bool,
      seed: int,
      kinds: Sequence[str] | None,
      process_index: int,
      process_count: int,
      expected_tokenizer: str,
  ):
    if not folders:
      raise ValueError("train.records names no records folder")
    self._kwargs = dict(seq_len=seq_len, batch_size=batch_size, pack=pack, kinds=kinds,
                        process_index=process_index, process_count=process_count,
                        expected_tokenizer=expected_tokenizer)
    self._folders = tuple(folders)
    # A different seed per folder: folders written by one explorer must not shuffle in lockstep.
    self._seeds = [seed + i for i in range(len(self._folders))]
    self._iterators = [
        pipeline.DataIterator(folder, seed=folder_seed, num_epochs=None, **self._kwargs)
        for folder, folder_seed in zip(self._folders, self._seeds)
    ]
    # Scans (validates) every folder now: bad records fail before any device work.
    self.num_records = sum(iterator.host.num_records for iterator in self._iterators)
    self._epoch_rows: list[int] | None = None  # per folder, counted on first use (reads the data once)
    self._share = np.ones(1) if len(self._iterators) == 1 else None
    self._taken = np.zeros(len(self._iterators), np.int64)

  def next(self) -> dict[str, np.ndarray]:
    if self._share is None:
      counts = np.array(self.folder_rows_per_epoch(), np.float64)
      self._share = counts / counts.sum()
    n = self._taken.sum() + 1
    source = int(np.argmax(n * self._share - self._taken))
    self._taken[source] += 1
    return next(self._iterators[source])

  def folder_rows_per_epoch(self) -> list[int]:
    """Packed (or padded) rows of one pass over each folder's records, in its first epoch's order (reads the data
    once). Every folder has a row: `scan` refuses one without records of the trained kinds."""
    if self._epoch_rows is None:
      kwargs = {k: v for k, v in self._kwargs.items()
                if k not in ("expected_tokenizer", "process_index", "process_count", "batch_size", "kinds")}
      self._epoch_rows = [
          sum(1 for _ in pipeline.build_dataset(it.host, batch_size=1, seed=seed, num_epochs=1,
                                                **kwargs).as_numpy_iterator())
          for it, seed in zip(self._iterators, self._seeds)]
    return self._epoch_rows

  def steps_for_epochs(self, num_epochs: int) -> int:
    """Batches that cover `num_epochs` passes over every folder's rows, each folder rounded up to a whole batch."""
    batch = self._kwargs["batch_size"]
    return sum(-(-rows * num_epochs // batch) for rows in self.folder_rows_per_epoch())

  def state(self) -> dict[str, Any]:
    return {"folders": list(self._folders), "iterators": [it.state() for it in self._iterators]}

  def restore(self, state: dict[str, Any]) -> None:
    # Folders are matched by position and by content (each iterator's restore checks its data fingerprint), not
    # by path: the same workdir given relative or absolute, or moved, resolves to another path string.
    if len(state.get("iterators", ())) != len(self._folders):
      raise ValueError(f"checkpoint data state is for records folders {state.get('folders')}; the config now "
                       f"names {list(self._folders)}")
    for iterator, sub_state in zip(self._iterators, state["iterators"], strict=True):
      iterator.restore(sub_state)
    self._taken = np.array([s["batches"] for s in state["iterators"]], np.int64)
