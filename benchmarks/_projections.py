"""The projection matmul shapes of the benchmarks' Llama-style models (shared by sampler.py and sft_step.py)."""


def projection_shapes(args) -> list[tuple[int, int]]:
  """(in, out) of every projection: q, k, v, o, gate, up, down per layer, then the LM head."""
  head_dim = args.d_model // args.heads
  d, kv, f = args.d_model, args.kv_heads * head_dim, args.d_ff
  return [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)] * args.layers + [(d, args.vocab)]
