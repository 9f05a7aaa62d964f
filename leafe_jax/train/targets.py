"""Where a training step evaluates the LM head: only at the positions that predict a counted target.

A correction record's target is one action of tens of tokens after a context of thousands, so logits at every
position are mostly thrown away; with a 150k vocabulary they are also the largest tensor of the step (B·T·V).
The host finds, per row, the positions t whose next token t+1 is a counted target (the rule of train/loss.py)
and passes them as `target_index_BxN`, padded with the row's last position, which predicts nothing.

N must be static under jit, so it is rounded up to a configured fraction of the row length: each fraction is one
compiled program. When a row has more targets than the largest fraction holds, every position is used (N = T).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def target_positions_mask(batch: Mapping[str, np.ndarray]) -> np.ndarray:
  """bool [B, T]: position t predicts a counted target (numpy twin of loss.target_mask, shifted to t)."""
  seg_BxT = batch["segment_ids_BxT"]
  counted_BxTm1 = (batch["loss_mask_BxT"][:, 1:] != 0) & (seg_BxT[:, :-1] == seg_BxT[:, 1:]) & (seg_BxT[:, 1:] != 0)
  return np.concatenate([counted_BxTm1, np.zeros_like(counted_BxTm1[:, :1])], axis=1)


def max_targets_per_row(batch: Mapping[str, np.ndarray]) -> int:
  """The largest number of target-predicting positions in one row of `batch`."""
  return int(target_positions_mask(batch).sum(axis=1).max(initial=0))


def index_width(max_targets: int, seq_len: int, fractions: Sequence[float]) -> int:
  """N: the smallest ceil(fraction · seq_len) that holds `max_targets`, else seq_len (every position)."""
  for fraction in sorted(fractions):
    width = max(1, math.ceil(fraction * seq_len))
    if width >= seq_len:
      break
    if max_targets <= width:
      return width
  return seq_len


def target_index(batch: Mapping[str, np.ndarray], width: int) -> np.ndarray:
  """int32 [B, width]: each row's target-predicting positions in order, padded with its last position.

  With width = T the index is simply 0..T-1 (every position, same values as computing all logits).
  """
  mask_BxT = target_positions_mask(batch)
  batch_size, seq_len = mask_BxT.shape
  if width >= seq_len:
    return np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len)).copy()
  counts_B = mask_BxT.sum(axis=1)
  if counts_B.max(initial=0) > width:
    raise ValueError(f"target_index: a row has {int(counts_B.max())} target positions, more than width={width}")
  index_BxN = np.full((batch_size, width), seq_len - 1, np.int32)
  rows_R, cols_R = np.nonzero(mask_BxT)
  # Rank of each hit within its row: np.nonzero returns them row by row, in order.
  starts_B = np.concatenate([[0], np.cumsum(counts_B)[:-1]])
  index_BxN[rows_R, np.arange(len(rows_R)) - starts_B[rows_R]] = cols_R
  return index_BxN
