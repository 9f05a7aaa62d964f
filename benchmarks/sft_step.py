"""SFT training throughput: our jitted train step vs a transformers PyTorch training step, same model and init.

Both train the same Llama-architecture model (built with transformers, saved, loaded by us with `from_hf`) with
AdamW on the same batch (batch × seq tokens, fp32, CPU). Each side runs in its own subprocess so that peak host
memory (ru_maxrss) is its own. Tokens/s counts every token of the batch (context + target).

By default every token is a target (the plain LM step). `--target_tokens N` makes each row a correction record
instead: a context, then an N-token action, the only targets (PyTorch: labels -100 elsewhere, as an HF Trainer
SFT run has them). Our step then computes logits at the target positions only (train/targets.py, with the train
stage's default `logits_fractions`); transformers computes them everywhere.

  .venv/bin/python benchmarks/sft_step.py [--d_model 256 --layers 4 --vocab 8192 --batch 8 --seq 512 --steps 5]
                                          [--target_tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from _llama_workload import projection_shapes, sft_batch  # benchmarks/ is on sys.path when a script runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 1e-5  # any small value: throughput does not depend on it


def _args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--kv_heads", type=int, default=4)
  parser.add_argument("--d_ff", type=int, default=704)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--target_tokens", type=int, default=0,
                      help="targets per row: the last N tokens (an action after its context); 0 = every token")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation, allocator warm-up)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps")
  parser.add_argument("--repeats", type=int, default=2,
                      help="subprocess runs per side, alternating; the best is kept (the machine is shared)")
  parser.add_argument("--xla_flags", default="", help="XLA_FLAGS for our side (e.g. --xla_cpu_use_xnnpack=true)")
  parser.add_argument("--side", choices=("ours", "torch"), default=None, help="internal: run one side")
  parser.add_argument("--hf_dir", default=None, help="internal: the saved HF model")
  return parser.parse_args(argv)


def _batch(args):
  rng = np.random.default_rng(0)
  return rng.integers(0, args.vocab, (args.batch, args.seq)).astype(np.int64)


def _loss_mask(args):
  mask = np.ones((args.batch, args.seq), np.float32)
  if args.target_tokens:
    mask[:, : args.seq - args.target_tokens] = 0.0
  return mask


def _save_hf_model(args, path):
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=args.vocab, hidden_size=args.d_model, num_hidden_layers=args.layers,
      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, intermediate_size=args.d_ff,
      max_position_embeddings=args.seq, tie_word_embeddings=False, torch_dtype="float32",
  )
  transformers.LlamaForCausalLM(config).save_pretrained(path)


def _matmul_floor_ms(matmul_step, args) -> float:
  """ms per call of `matmul_step()`: the step's projection matmuls alone (forward, input and weight gradient of
  each, over every token), a bound below which neither framework's whole step can go with its own kernels."""
  for _ in range(args.warmup):
    matmul_step()
  start = time.perf_counter()
  for _ in range(args.steps):
    matmul_step()
  return (time.perf_counter() - start) / args.steps * 1e3


def _peak_mib() -> float:
  """Peak host memory of this process so far (read before the matmul-floor operands exist)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _time_steps(step, args):
  for _ in range(args.warmup):
    step()
  start = time.perf_counter()
  losses = [step() for _ in range(args.steps)]
  elapsed = time.perf_counter() - start
  return args.batch * args.seq * args.steps / elapsed, losses


def _run_torch(args):
  import torch
  import transformers

  model = transformers.LlamaForCausalLM.from_pretrained(args.hf_dir, torch_dtype=torch.float32)
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
  ids = torch.from_numpy(_batch(args))
  labels = torch.where(torch.from_numpy(_loss_mask(args)) > 0, ids, torch.full_like(ids, -100))

  def step():
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)

  timed, peak_mib = _time_steps(step, args), _peak_mib()
  tokens = args.batch * args.seq
  operands = [(torch.randn(tokens, a), torch.randn(a, b), torch.randn(tokens, b)) for a, b in projection_shapes(args)]

  def matmuls():
    for x, w, g in operands:
      x @ w, g @ w.T, x.T @ g

  return timed, peak_mib, _matmul_floor_ms(matmuls, args)


def _run_ours(args):
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import Mesh

  from leafe_jax import models, parallel
  from leafe_jax.train import loss as loss_lib
  from leafe_jax.train import stage as train_stage
  from leafe_jax.train import state as state_lib
  from leafe_jax.train import step as step_lib
  from leafe_jax.train import targets

  model, params = models.from_hf(args.hf_dir, dtype=jnp.float32)
  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  params_sharding = parallel.param_shardings(model, mesh)
  params = jax.device_put(params, params_sharding)
  tx = optax.adamw(LR, weight_decay=0.0)
  state_sharding = state_lib.shardings(tx, params, params_sharding, mesh)
  state = jax.jit(lambda p: state_lib.create(p, tx, jax.random.PRNGKey(0)), out_shardings=state_sharding)(params)
  train_step = step_lib.make_train_step(
      lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0], tx, normalization="token", num_kinds=5
  )
  batch_sharding = parallel.batch_sharding(mesh)
  batch = sft_batch(_batch(args), _loss_mask(args))
  fractions = tuple(train_stage.default_config().logits_fractions)
  width = targets.index_width(targets.max_targets_per_row(batch), args.seq, fractions)
  batch[loss_lib.TARGET_INDEX] = targets.target_index(batch, width)
  batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
  jitted = step_lib.jit_train_step(train_step, state_sharding, dict.fromkeys(batch, batch_sharding), mesh)
  holder = [state]

  def step():
    holder[0], metrics = jitted(holder[0], batch)
    return float(metrics["loss"])  # a host sync per step, as the torch side has

  timed, peak_mib = _time_steps(step, args), _peak_mib()
  tokens, key = args.batch * args.seq, jax.random.PRNGKey(1)
  operands = [tuple(jax.random.normal(jax.random.fold_in(key, 3 * i + j), shape) for j, shape in
                    enumerate(((tokens, a), (a, b), (tokens, b)))) for i, (a, b) in enumerate(projection_shapes(args))]
  # Each product feeds the result, so none is dead code; one scalar comes back.
  matmul_step = jax.jit(lambda ops: sum((x @ w)[0, 0] + (g @ w.T)[0, 0] + (x.T @ g)[0, 0] for x, w, g in ops))

  return timed, peak_mib, _matmul_floor_ms(lambda: float(matmul_step(operands)), args)


def _side(args):
  (tokens_per_s, losses), peak_mib, matmul_ms = (_run_ours if args.side == "ours" else _run_torch)(args)
  print("SIDE " + json.dumps({"tokens_per_s": tokens_per_s, "peak_mib": peak_mib, "first_loss": losses[0],
                              "matmul_ms": matmul_ms}))


def _spawn(side, args, hf_dir):
  argv = [sys.executable, os.path.abspath(__file__), "--side", side, "--hf_dir", hf_dir]
  for name in ("d_model", "layers", "heads", "kv_heads", "d_ff", "vocab", "batch", "seq", "target_tokens",
               "warmup", "steps"):
    argv += [f"--{name}", str(getattr(args, name))]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=args.xla_flags if side == "ours" else "",
             PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise RuntimeError(f"{side} side failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  line = [ln for ln in out.stdout.splitlines() if ln.startswith("SIDE ")][-1]
  return json.loads(line[len("SIDE "):])


def main():
  args = _args()
  if args.side:
    _side(args)
    return
  with tempfile.TemporaryDirectory() as tmp:
    _save_hf_model(args, tmp)
    runs = {"ours": [], "torch": []}
    for _ in range(args.repeats):
      for side in runs:
        runs[side].append(_spawn(side, args, tmp))
    ours, ref = (max(runs[side], key=lambda r: r["tokens_per_s"]) for side in ("ours", "torch"))
  ratio = ours["tokens_per_s"] / ref["tokens_per_s"]
  print(f"SFT train step, Llama d_model={args.d_model} layers={args.layers} vocab={args.vocab}, "
        f"batch {args.batch} x {args.seq}, fp32 AdamW, CPU ({os.cpu_count()} cores), best of {args.repeats} "
        f"alternating runs per side, {args.steps} timed steps each; targets per row: "
        f"{args.target_tokens or 'all'}\n")
  print("| | tokens/s | peak host memory (MiB) | first-step loss |")
  print("|---|---|---|---|")
  print(f"| leafe_jax (jit step) | {ours['tokens_per_s']:.0f} | {ours['peak_mib']:.0f} | {ours['first_loss']:.4f} |")
  print(f"| transformers PyTorch | {ref['tokens_per_s']:.0f} | {ref['peak_mib']:.0f} | {ref['first_loss']:.4f} |")
  print(f"| ratio | {ratio:.2f}x | {ours['peak_mib'] / ref['peak_mib']:.2f}x | |\n")
  step_ms = {side: args.batch * args.seq / r["tokens_per_s"] * 1e3 for side, r in (("ours", ours), ("torch", ref))}
  print("| ms per step | leafe_jax (XLA) | PyTorch |")
  print("|---|---|---|")
  print(f"| whole train step | {step_ms['ours']:.0f} | {step_ms['torch']:.0f} |")
  print(f"| its projection matmuls alone (forward + both gradients, every token) | {ours['matmul_ms']:.0f} | "
        f"{ref['matmul_ms']:.0f} |")
  print(f"| 1.3x PyTorch's throughput needs a step of | {step_ms['torch'] / 1.3:.0f} | |\n")
  name = f"sft_step_{args.target_tokens}_targets_per_row" if args.target_tokens else "sft_step"
  print(json.dumps({"name": name, "ours": round(ours["tokens_per_s"], 1),
                    "reference": round(ref["tokens_per_s"], 1), "unit": "tokens/s", "ratio": round(ratio, 3),
                    "matmul_ms_ours": round(ours["matmul_ms"], 1), "matmul_ms_reference": round(ref["matmul_ms"], 1)}))


if __name__ == "__main__":
  main()
