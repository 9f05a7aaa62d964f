"""Generation throughput: our jitted sampler vs transformers PyTorch `generate`, same model and weights, CPU fp32.

A random Llama-architecture model is built with transformers, saved, and loaded by us with `from_hf`. Both sides
decode greedily from the same batch of random prompts (all the same length) for exactly `--new_tokens` tokens
(HF: `min_new_tokens`; ours: no eos ids). Tokens/s counts generated tokens only, over the whole call (prefill
included). Our first call (trace + compile + run) is reported apart from the steady-state calls. torch and XLA
both use every core of the machine.

With `--dtype bfloat16` both sides hold weights and compute in bf16 (how the paper configs decode); greedy tokens
then agree only up to the first near-tie that the two sides round differently.

  .venv/bin/python benchmarks/sampler.py [--quick] [--batch 16 --prompt_len 128 --new_tokens 128 --repeats 2]
                                         [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from _llama_workload import projection_shapes  # benchmarks/ is on sys.path when a script runs


def _args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv_heads", type=int, default=2)
  parser.add_argument("--d_ff", type=int, default=1376)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--prompt_len", type=int, default=128)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2, help="timed calls per side (median reported)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="weights and compute of both sides")
  parser.add_argument("--quick", action="store_true", help="small model and sizes, for a smoke run")
  args = parser.parse_args(argv)
  if args.quick:
    args.d_model, args.layers, args.d_ff, args.vocab = 128, 2, 344, 4096
    args.batch, args.prompt_len, args.new_tokens, args.repeats = 4, 32, 32, 2
  return args


def _save_hf_model(args, path):
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers,
      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, intermediate_size=args.d_ff,
      max_position_embeddings=args.prompt_len + args.new_tokens, tie_word_embeddings=False,
      bos_token_id=None, eos_token_id=None, pad_token_id=0)
  model = transformers.LlamaForCausalLM(config).eval()
  model.save_pretrained(path)  # float32 on disk; each side converts on load
  return model.to(getattr(torch, args.dtype))


def _time_torch(model, prompts, args):
  import torch

  input_ids = torch.tensor(prompts, dtype=torch.long)
  mask = torch.ones_like(input_ids)
  kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                pad_token_id=0, eos_token_id=None)
  times = []
  with torch.inference_mode():
    model.generate(input_ids[:, :8], attention_mask=mask[:, :8], max_new_tokens=4, do_sample=False,
                   pad_token_id=0)  # warm-up (allocator, kernels)
    for _ in range(args.repeats):
      start = time.perf_counter()
      out = model.generate(input_ids, attention_mask=mask, **kwargs)
      times.append(time.perf_counter() - start)
  return times, out[:, args.prompt_len:].numpy()


def _time_ours(path, prompts, args):
  import jax

  from leafe_jax import models
  from leafe_jax.sampling import Sampler

  model, params = models.from_hf(path, dtype=args.dtype)
  sampler = Sampler(model, params, max_cache_len=args.prompt_len + args.new_tokens,
                    prompt_buckets=(args.prompt_len,), batch_buckets=(args.batch,),
                    output_buckets=(args.new_tokens,))
  run = lambda: sampler.generate(prompts, max_new_tokens=args.new_tokens, temperature=0.0)
  start = time.perf_counter()
  out = run()
  first = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - start)
  del jax
  return first, times, np.asarray([row[0].token_ids for row in out])


FLOOR_STEPS = 32  # decode steps timed for the matmul floor


def _matmul_floor_ms(args) -> dict[str, float]:
  """ms per decode step of the model's projection matmuls alone ([batch, in] x every weight once, distinct
  weights of the model's sizes, so they stream from memory as in decoding): torch F.linear on [out, in] weights
  (what generate runs), XLA on our [in, out] kernels, and XLA on [out, in] weights."""
  import jax
  import jax.numpy as jnp
  import torch

  dtype = getattr(torch, args.dtype)
  operands = [(torch.randn(args.batch, a, dtype=dtype), torch.randn(b, a, dtype=dtype))
              for a, b in projection_shapes(args)]
  out = {}
  with torch.inference_mode():
    start = time.perf_counter()
    for _ in range(FLOOR_STEPS):
      for x, w in operands:
        torch.nn.functional.linear(x, w)
    out["torch"] = (time.perf_counter() - start) / FLOOR_STEPS * 1e3
  del operands
  key = jax.random.PRNGKey(0)
  for name, contract in (("xla", "bi,io->bo"), ("xla_out_in", "bi,oi->bo")):
    ops = []
    for i, (a, b) in enumerate(projection_shapes(args)):
      shape = (a, b) if name == "xla" else (b, a)
      ops.append((jax.random.normal(jax.random.fold_in(key, 2 * i), (args.batch, a), args.dtype),
                  jax.random.normal(jax.random.fold_in(key, 2 * i + 1), shape, args.dtype)))
    # Each product feeds the result, so none is dead code; one scalar comes back per step.
    step = jax.jit(lambda ops, c=contract: sum(jnp.einsum(c, xi, w, preferred_element_type=jnp.float32)[0, 0]
                                              for xi, w in ops))
    float(step(ops))
    start = time.perf_counter()
    for _ in range(FLOOR_STEPS):
      float(step(ops))
    out[name] = (time.perf_counter() - start) / FLOOR_STEPS * 1e3
    del ops
  return out


def main(argv=None):
  args = _args(argv)
  cores = os.cpu_count() or 1
  import torch

  torch.set_num_threads(cores)
  rng = np.random.default_rng(0)
  prompts = rng.integers(1, args.vocab, (args.batch, args.prompt_len)).tolist()
  generated = args.batch * args.new_tokens
  with tempfile.TemporaryDirectory() as path:
    reference = _save_hf_model(args, path)
    torch_times, torch_tokens = _time_torch(reference, prompts, args)
    del reference
    first, our_times, our_tokens = _time_ours(path, prompts, args)
  floor = _matmul_floor_ms(args)
  ours, theirs = generated / float(np.median(our_times)), generated / float(np.median(torch_times))
  agree = float(np.mean(our_tokens == torch_tokens))
  print(f"model: d_model {args.d_model}, {args.layers} layers, {args.heads} heads / {args.kv_heads} kv heads, "
        f"d_ff {args.d_ff}, vocab {args.vocab}; batch {args.batch}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens (greedy, {args.dtype}, {cores} cores)")
  print()
  print("| side | first call (s) | steady call (s, median) | generated tokens/s |")
  print("|---|---|---|---|")
  print(f"| leafe_jax Sampler (jit, while_loop) | {first:.2f} | {np.median(our_times):.2f} | {ours:.1f} |")
  print(f"| transformers generate (PyTorch) | - | {np.median(torch_times):.2f} | {theirs:.1f} |")
  print()
  print(f"ratio ours/reference: {ours / theirs:.2f}x; greedy tokens equal to transformers: {agree:.1%}; "
        f"our compile+first run {first:.2f} s")
  torch_step_ms = float(np.median(torch_times)) / args.new_tokens * 1e3
  our_step_ms = float(np.median(our_times)) / args.new_tokens * 1e3
  print()
  print("| ms per generated token (batch of rows, prefill included) | leafe_jax (XLA) | PyTorch |")
  print("|---|---|---|")
  print(f"| whole call / new tokens | {our_step_ms:.1f} | {torch_step_ms:.1f} |")
  print(f"| the projection matmuls alone, once per token | {floor['xla']:.1f} ([in, out] kernels; "
        f"{floor['xla_out_in']:.1f} with [out, in] weights) | {floor['torch']:.1f} ([out, in], F.linear) |")
  print(f"| 2x generate's throughput needs | {torch_step_ms / 2:.1f} | |")
  name = "sampler_greedy_decode" + ("" if args.dtype == "float32" else f"_{args.dtype}")
  print(json.dumps({"name": name, "ours": round(ours, 2), "reference": round(theirs, 2),
                    "unit": "generated tokens/s", "ratio": round(ours / theirs, 3),
                    **{f"matmul_ms_{k}": round(v, 2) for k, v in floor.items()}}))


if __name__ == "__main__":
  main()
