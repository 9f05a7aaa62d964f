"""Accelerator throughput of a 1B-class Llama: MFU of the SFT train step, and the sampler's decode tokens/s.

For a machine with a GPU or TPU (the SFT issue asks for MFU of a 1B-class config where one is available):

  .venv/bin/python benchmarks/accelerator_mfu.py [--preset 1b] [--batch 8 --seq 2048] [--mesh 1 -1 1]
  .venv/bin/python benchmarks/accelerator_mfu.py   # on CPU: the tiny preset, a smoke run (MFU "n/a": no CPU peak)

Random init by our own code (nothing downloaded); bf16 compute with fp32 master weights and AdamW (the paper
configs' training setting), every token a target; FLOPs per token from `train/metrics.py` (6N + attention).
The sampler then decodes greedily in bf16 (`--decode_batch` prompts of `--prompt_len` tokens, `--new_tokens`).
The last line is the project's JSON object: achieved train FLOP/s per chip vs the chip's peak (ratio = MFU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import numpy as np
import optax
from _llama_workload import sft_batch  # benchmarks/ is on sys.path when a script runs

from leafe_jax import models, parallel
from leafe_jax.sampling import Sampler
from leafe_jax.train import metrics
from leafe_jax.train import state as state_lib
from leafe_jax.train import step as step_lib

PRESETS = {
    # Llama-3.2-1B's shape (tied embeddings).
    "1b": dict(vocab_size=128256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
               d_ff=8192, tie_embeddings=True, rope_theta=500000.0),
    "tiny": dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=128),
}
LR = 1e-5  # any small value: throughput does not depend on it


def _args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                      help="model shape (default: 1b on an accelerator, tiny on CPU, so `make bench` stays short)")
  parser.add_argument("--batch", type=int, default=8, help="global train batch (rows)")
  parser.add_argument("--seq", type=int, default=2048, help="train row length")
  parser.add_argument("--mesh", type=int, nargs=3, default=(1, -1, 1), help="data fsdp tensor (one -1 allowed)")
  parser.add_argument("--remat", default="none", help="ModelConfig.remat_policy")
  parser.add_argument("--warmup", type=int, default=2, help="untimed train steps (compilation)")
  parser.add_argument("--steps", type=int, default=10, help="timed train steps")
  parser.add_argument("--decode_batch", type=int, default=64)
  parser.add_argument("--prompt_len", type=int, default=512)
  parser.add_argument("--new_tokens", type=int, default=256)
  return parser.parse_args()


def _train(args, config, mesh) -> tuple[float, float]:
  """(train tokens/s, parameter count) of the jitted step on `mesh`."""
  model = models.Decoder(config)
  params_sharding = parallel.param_shardings(model, mesh)
  params = jax.jit(lambda key: models.init_params(config, key), out_shardings=params_sharding)(
      jax.random.PRNGKey(0))
  tx = optax.adamw(LR, weight_decay=0.0)
  state_sharding = state_lib.shardings(tx, params, params_sharding, mesh)
  state = jax.jit(lambda p: state_lib.create(p, tx, jax.random.PRNGKey(0)), out_shardings=state_sharding,
                  donate_argnums=0)(params)
  train_step = step_lib.make_train_step(lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0], tx,
                                        normalization="token", num_kinds=1)
  shape = (args.batch, args.seq)
  batch = sft_batch(np.random.default_rng(0).integers(0, config.vocab_size, shape), np.ones(shape, np.float32))
  batch_sharding = parallel.batch_sharding(mesh)
  batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
  jitted = step_lib.jit_train_step(train_step, state_sharding, dict.fromkeys(batch, batch_sharding), mesh)
  for _ in range(args.warmup):
    state, step_metrics = jitted(state, batch)
  float(step_metrics["loss"])
  start = time.perf_counter()
  for _ in range(args.steps):
    state, step_metrics = jitted(state, batch)
  float(step_metrics["loss"])  # one host sync at the end, as the train stage logs
  elapsed = time.perf_counter() - start
  return args.batch * args.seq * args.steps / elapsed, metrics.count_params(state.params)


def _decode(args, config, mesh) -> tuple[float, float]:
  """(generated tokens/s, first call s) of greedy decoding in bf16."""
  serve = dataclasses.replace(config, dtype="bfloat16", param_dtype="bfloat16")
  model = models.Decoder(serve)
  params = jax.jit(lambda key: models.init_params(serve, key))(jax.random.PRNGKey(1))
  sampler = Sampler(model, params, mesh=mesh, max_cache_len=args.prompt_len + args.new_tokens,
                    prompt_buckets=(args.prompt_len,), batch_buckets=(args.decode_batch,),
                    output_buckets=(args.new_tokens,))
  prompts = np.random.default_rng(1).integers(1, config.vocab_size, (args.decode_batch, args.prompt_len)).tolist()
  run = lambda: sampler.generate(prompts, max_new_tokens=args.new_tokens, temperature=0.0)
  start = time.perf_counter()
  run()
  first = time.perf_counter() - start
  start = time.perf_counter()
  run()
  return args.decode_batch * args.new_tokens / (time.perf_counter() - start), first


def main():
  args = _args()
  devices = jax.devices()
  args.preset = args.preset or ("tiny" if jax.default_backend() == "cpu" else "1b")
  mesh = parallel.make_mesh(parallel.resolve_mesh_shape(tuple(args.mesh), len(devices), field="--mesh"))
  config = models.ModelConfig(**PRESETS[args.preset], dtype="bfloat16", param_dtype="float32",
                              remat_policy=args.remat, max_position_embeddings=max(args.seq, 8192))
  tokens_per_s, num_params = _train(args, config, mesh)
  flops_per_token = metrics.train_flops_per_token(num_params, config, args.seq)
  achieved = tokens_per_s * flops_per_token / len(devices)  # per chip
  peak = metrics.peak_flops(devices[0].device_kind)
  decode_tokens_per_s, decode_first_s = _decode(args, config, mesh)
  mfu = achieved / peak if peak else None
  print(f"{args.preset} Llama ({num_params / 1e6:,.1f}M parameters) on {len(devices)} x {devices[0].device_kind}, "
        f"mesh {tuple(mesh.shape.values())}\n")
  print("| what | value |")
  print("|---|---|")
  print(f"| train step, batch {args.batch} x {args.seq}, bf16 compute / fp32 master, AdamW | {tokens_per_s:,.0f} "
        "tokens/s |")
  print(f"| train FLOP/s per chip (6N + attention) | {achieved:.3e} |")
  print(f"| MFU (peak {peak:.3e} FLOP/s per chip) | {mfu:.1%} |" if mfu is not None else "| MFU | n/a |")
  print(f"| greedy decode bf16, batch {args.decode_batch}, prompt {args.prompt_len} + {args.new_tokens} new | "
        f"{decode_tokens_per_s:,.0f} tokens/s (first call {decode_first_s:.1f} s) |\n")
  print(json.dumps({"name": f"train_step_mfu_{args.preset}", "ours": round(achieved, 1),
                    "reference": peak, "unit": "FLOP/s per chip",
                    "ratio": round(mfu, 4) if mfu is not None else None,
                    "train_tokens_per_s": round(tokens_per_s, 1), "decode_tokens_per_s": round(decode_tokens_per_s, 1),
                    "device_kind": devices[0].device_kind, "devices": len(devices)}))


if __name__ == "__main__":
  main()
