"""Decoder forward pass and checkpoint load: ours (jitted Flax) vs transformers PyTorch, same weights, same device.

A random Llama-layout model is saved with `save_pretrained`; both sides load it from disk. Reported: load time,
forward throughput (tokens/s over a [batch, seq] forward, median of several runs after warm-up) and the largest
logit difference. Ratio = ours / reference forward throughput.
"""

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from leafe_jax import models


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv_heads", type=int, default=2)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  torch.manual_seed(0)
  hf_config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=4 * args.d_model,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads,
                          num_key_value_heads=args.kv_heads)
  ids = np.random.RandomState(0).randint(0, args.vocab, (args.batch, args.seq))
  tokens = args.batch * args.seq
  with tempfile.TemporaryDirectory() as path:
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(path)
    start = time.perf_counter()
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    ref_load = time.perf_counter() - start
    start = time.perf_counter()
    model, params = models.from_hf(path)
    jax.block_until_ready(params)
    our_load = time.perf_counter() - start

  forward = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
  ids_jax = jnp.asarray(ids)
  ours_logits = np.asarray(forward(params, ids_jax))  # compiles
  our_s = timed(lambda: forward(params, ids_jax).block_until_ready(), args.repeats)
  ids_torch = torch.tensor(ids)
  with torch.no_grad():
    ref_logits = reference(input_ids=ids_torch).logits.numpy()
    ref_s = timed(lambda: reference(input_ids=ids_torch), args.repeats)
  max_diff = float(np.abs(ours_logits - ref_logits).max())

  ours, ref = tokens / our_s, tokens / ref_s
  print(f"Llama-layout decoder d_model={args.d_model} layers={args.layers} heads={args.heads}/{args.kv_heads} "
        f"vocab={args.vocab}, forward of [{args.batch}, {args.seq}] fp32 on {jax.devices()[0].platform}, "
        f"torch {torch.__version__} threads={torch.get_num_threads()}\n")
  print("| | ours (Flax, jit) | transformers (PyTorch) | ratio |")
  print("|---|---|---|---|")
  print(f"| forward tokens/s | {ours:,.0f} | {ref:,.0f} | {ours / ref:.2f} |")
  print(f"| load from safetensors (s) | {our_load:.2f} | {ref_load:.2f} | {our_load / ref_load:.2f} |")
  print(f"| max abs logit diff | {max_diff:.2e} | | |\n")
  print(json.dumps({"name": "models_forward", "ours": round(ours, 1), "reference": round(ref, 1),
                    "unit": "tokens/s", "ratio": round(ours / ref, 3)}))


if __name__ == "__main__":
  main()
