"""Training metrics: FLOPs/MFU estimate, per-kind reduction of in-jit sums, TensorBoard and a console line."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

# Peak dense bf16 FLOP/s per chip, by substring of `jax.Device.device_kind` (first match wins: more specific
# names first). Public spec sheets; CPU has no entry, so MFU reads "n/a" there.
PEAK_FLOPS_BY_DEVICE_KIND: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def peak_flops(device_kind: str) -> float | None:
  for key, flops in PEAK_FLOPS_BY_DEVICE_KIND:
    if key.lower() in device_kind.lower():
      return flops
  return None


def count_params(params: Any) -> int:
  import jax

  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def train_flops_per_token(num_params: int, model_config: Any, seq_len: int, logits_fraction: float = 1.0) -> float:
  """Model FLOPs per token of a train step: 6·N over the matmul weights (forward + backward), plus the attention
  score/value term 12·L·H·Dh·T (PaLM, appendix B).

  The input embedding is a lookup, not a matmul: untied, its V·D parameters are left out of N. The LM head
  (V·D, the embedding itself when tied) runs only at `logits_fraction` of the positions (train.logits_fractions:
  the positions that predict a target), and is counted there only.
  """
  head = model_config.vocab_size * model_config.d_model
  body = num_params - (head if model_config.tie_embeddings else 2 * head)
  attention = 12 * model_config.num_layers * model_config.num_heads * model_config.head_dim * seq_len
  return 6.0 * (body + logits_fraction * head) + attention


def reduce_kind_sums(sums: Mapping[str, np.ndarray], kinds: Sequence[str]) -> dict[str, float]:
  """Host side: per record kind with targets, mean NLL, accuracy and target-token count."""
  out = {}
  for index, kind in enumerate(kinds):
    targets = float(sums["targets_K"][index])
    if targets == 0:
      continue
    out[f"{kind}/loss"] = float(sums["nll_sum_K"][index]) / targets
    out[f"{kind}/accuracy"] = float(sums["correct_K"][index]) / targets
    out[f"{kind}/target_tokens"] = targets
  return out


class MetricsWriter:
  """TensorBoard scalars under `<stage_dir>/tb` (process 0 only) and one console line per log step."""

  def __init__(self, logdir: str, enabled: bool = True):
    self._logdir, self._enabled = logdir, enabled
    self._writer = None  # opened at the first write: a rerun of a finished stage leaves no empty event file

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    if self._writer is None:
      os.makedirs(self._logdir, exist_ok=True)
      self._writer = tf.summary.create_file_writer(self._logdir)

    # tf.summary.write with the "scalars" plugin tag is what tf.summary.scalar writes, without needing the
    # tensorboard package installed on the training hosts.
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    with self._writer.as_default():
      for name, value in scalars.items():
        tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def progress_line(step: int, total_steps: int, scalars: Mapping[str, float]) -> str:
  mfu = scalars.get("mfu")
  mfu_text = "n/a" if mfu is None else f"{100 * mfu:.1f}%"
  per_kind = "".join(
      f" {name[: -len('/loss')]} {value:.4f}" for name, value in scalars.items() if name.endswith("/loss")
  )
  return (
      f"step {step}/{total_steps} loss {scalars['loss']:.4f}{per_kind} lr {scalars.get('lr', float('nan')):.3g} "
      f"tokens/s {_rate(scalars.get('tokens_per_s'))} MFU {mfu_text}"
  )


def _rate(tokens_per_s: float | None) -> str:
  # None: the window held only the run's first step, whose time is mostly compilation (not a throughput).
  return "n/a" if tokens_per_s is None else f"{tokens_per_s:.0f}"


def log_progress(step: int, total_steps: int, scalars: Mapping[str, float]) -> None:
  logging.info("%s", progress_line(step, total_steps, scalars))
