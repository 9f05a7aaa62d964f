"""A tiny train-only config (CPU, seconds): SFT of a random-init 2-layer decoder on `<workdir>/records`.

Expects `<workdir>/tokenizer` (an HF tokenizer dir) and `<workdir>/records` (correction records written with that
tokenizer); tests/test_train_stage.py builds both. Example of every train knob a real config sets:

  python -m leafe_jax.main --config=configs/sft_tiny.py --workdir=/tmp/sft_tiny
"""

import ml_collections

from leafe_jax.train import stage


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stages = ("train",)
  config.seed = 0
  config.name = "sft_tiny"
  train = stage.default_config()
  train.init = "random"
  train.tokenizer = "tokenizer"  # relative to --workdir
  train.records = ("records",)
  train.model = ml_collections.ConfigDict(
      {
          "family": "llama",
          "vocab_size": 512,  # >= the test tokenizer's vocabulary
          "d_model": 32,
          "num_layers": 2,
          "num_heads": 4,
          "num_kv_heads": 2,
          "head_dim": 8,
          "d_ff": 64,
      }
  )
  train.mesh = (-1, 1, 1)  # data parallel over every device
  train.batch_size = 8
  train.micro_batches = 2
  train.seq_len = 64
  train.lr = 1e-3  # a tiny model from scratch; the paper's 1e-6 is for fine-tuning a GRPO checkpoint
  train.warmup_steps = 2
  train.schedule = "cosine"
  train.num_steps = 8
  train.logits_fractions = ()  # every position: one compiled step (packed 64-token rows need two widths else)
  train.dtype = "float32"  # CPU: fp32 compute keeps the resume test bit-exact and fast
  train.checkpoint_every = 3
  train.keep = 2
  train.log_every = 2
  config.train = train
  return config
