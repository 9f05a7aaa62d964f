"""The workload of the benchmarks' Llama-style models: projection shapes and one unpacked SFT batch (shared by
sampler.py, sft_step.py and accelerator_mfu.py)."""

import numpy as np


def projection_shapes(args) -> list[tuple[int, int]]:
  """(in, out) of every projection: q, k, v, o, gate, up, down per layer, then the LM head."""
  head_dim = args.d_model // args.heads
  d, kv, f = args.d_model, args.kv_heads * head_dim, args.d_ff
  return [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)] * args.layers + [(d, args.vocab)]


def sft_batch(ids_BxT: np.ndarray, loss_mask_BxT: np.ndarray) -> dict[str, np.ndarray]:
  """A train-step batch of one example per row (no packing), weight 1, record kind 0."""
  shape = ids_BxT.shape
  return {
      "input_ids_BxT": ids_BxT.astype(np.int32),
      "loss_mask_BxT": loss_mask_BxT,
      "weight_BxT": np.ones(shape, np.float32),
      "segment_ids_BxT": np.ones(shape, np.int32),
      "positions_BxT": np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy(),
      "kind_BxT": np.zeros(shape, np.int32),
  }
