"""`make demo`: a miniature LEAFE reproduction on Sokoban that runs on a 2-core CPU in minutes, no download.

Pipeline (each stage writes under --workdir and resumes from it):
  1. expert_data      noisy-expert solver trajectories -> a BPE tokenizer + warm-up SFT records (acting, acting
                      with an experience, reflecting), rendered with the same prompt builders LEAFE uses;
  2. train@warmup     a tiny Llama-style decoder trained from scratch on them: the "base" policy;
  3. explore          LEAFE stage 1 with the base policy as its own reflector (rollback + branches);
  4. distill          D_cf (h_tau without e -> a'_tau) and D_reh (20% of successful rollouts) as records;
  5. train@leafe      stage 2: SFT of the base policy on L_cf + beta * L_reh;
  6. train@reh_only   the L_reh-only ablation of the paper's Table 4, same budget;
  7. grpo             the RLVR baseline: GRPO from the same base policy on the same training rooms, with the
                      env-step budget the explorer used (read from its ledger);
  8. early_experience the Early Experience baseline's data: solver trajectories of training rooms (sft) and, at
                      each of their states, the grids the other moves lead to (iwm);
  9. train@ee_world   EarlyExp (IWM), stage 1: one epoch of next-grid prediction from the base policy;
 10. train@iwm        EarlyExp, stage 2: imitation of the solver from that checkpoint;
 11. eval@*           Pass@1 and Pass@k (k <= 16) on held-out test seeds, no reflection at test time;
 12. report           markdown table, Pass@k plot, ledger totals and one rendered tree.

How it relates to the paper: the paper starts stage 1 from a GRPO-trained 7B-72B instruct model with
verl-agent prompts; here the starting policy is a ~0.3M-parameter model warmed up on solver data with injected
mistakes, and the prompt is the compact Sokoban template (grid only). The mechanism, code path and record
format are the paper configs' own.
"""

import ml_collections

from leafe_jax.baselines import early_experience_stage, expert_stage
from leafe_jax.eval import report_stage
from leafe_jax.eval import stage as eval_stage
from leafe_jax.explore import distill_stage
from leafe_jax.explore import stage as explore_stage
from leafe_jax.train import grpo_stage
from leafe_jax.train import stage as train_stage

# Harder than verl-agent's 6x6/1-box default (whose rooms are solved in ~3 moves): two boxes, 20 steps.
SOKOBAN = {"dim": (6, 6), "num_boxes": 2, "max_steps": 20, "compact_prompt": True}
HISTORY_LENGTH = 0  # the compact template shows only the current grid


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "demo"
  config.seed = 0
  config.stages = (
      "expert_data",
      "train@warmup",
      "explore",
      "distill",
      "train@leafe",
      "train@reh_only",
      "grpo",
      "early_experience",
      "train@ee_world",
      "train@iwm",
      "eval@base",
      "eval@grpo",
      "eval@leafe",
      "eval@reh_only",
      "eval@iwm",
      "report",
  )

  expert = expert_stage.default_config()
  expert.env_config = ml_collections.ConfigDict(SOKOBAN)
  expert.num_tasks = 1000  # training seeds played by the noisy expert
  expert.trajectories_per_task = 1  # one noisy episode per room
  expert.reflection_repeats = 4  # reflections are rare in the mix; a tiny model needs them repeated
  expert.mistake_prob = 0.2  # the base policy should fail often enough for reflection to matter
  expert.end_on_irreversible = False  # on: more reflections parse, but Base and LEAFE fall (README, demo section)
  expert.overriding_experience_examples_per_task = 8  # makes the policy read e (2 did not: README, demo section)
  expert.acting_in_lost_states = False  # the expert's moves in rooms already lost are random: not imitated
  expert.history_length = HISTORY_LENGTH  # as explore and eval prompt
  expert.tokenizer_vocab_size = 384  # byte-level BPE: the grid symbols, actions and tags
  config.expert_data = expert

  train = train_stage.default_config()
  train.init = "random"  # the warm-up policy is trained from scratch
  train.tokenizer = "expert_data/tokenizer"  # saved with the HF export
  train.records = ("expert_data/records",)  # the warm-up SFT records
  train.model = ml_collections.ConfigDict({
      "family": "llama",
      "vocab_size": 384,  # = expert.tokenizer_vocab_size
      "d_model": 96,
      "num_layers": 3,
      "num_heads": 4,
      "num_kv_heads": 2,
      "head_dim": 24,
      "d_ff": 256,
      "tie_embeddings": True,
  })
  train.mesh = (-1, 1, 1)  # data parallel over every (CPU) device
  train.batch_size = 16  # packed rows per step
  train.seq_len = 256  # a row holds ~5 compact examples
  train.lr = 3e-3  # from scratch; the paper's 1e-6 fine-tunes a 7B GRPO checkpoint
  train.warmup_steps = 20  # linear lr warm-up
  train.schedule = "cosine"  # decay to 0 over the run
  train.num_epochs = 4  # passes over the warm-up records
  train.dtype = "float32"  # CPU
  train.checkpoint_every = 200  # orbax checkpoint interval (steps); also at the end
  train.log_every = 25  # console and TensorBoard interval (steps)
  config.train = train

  explore = explore_stage.default_config()
  explore.env_config = ml_collections.ConfigDict(SOKOBAN)
  explore.num_tasks = 768  # training seeds explored (the paper explores its training split)
  explore.policy = "train_warmup/hf"  # the warm policy is its own reflector (paper: the GRPO checkpoint)
  explore.max_steps = SOKOBAN["max_steps"]  # episode horizon
  explore.history_length = HISTORY_LENGTH  # as the warm-up data
  explore.max_new_tokens = 16  # "<action>left</action>" and eos
  explore.reflection_max_new_tokens = 32  # <rollback_step>k</rollback_step><experience>avoid X</experience>
  explore.reflection_temperature = 0.0  # greedy reflections: the tiny model garbles the format when sampled
  explore.max_attempts = 8  # rollouts per task, root included (paper: not given)
  explore.max_depth = 2  # branches of branches at most (paper: not given)
  explore.concurrency = 256  # every task alive at once: one batched policy call per tick
  explore.max_cache_len = 512  # reflection prompts list the whole trajectory
  config.explore = explore

  distill = distill_stage.default_config()
  distill.tokenizer = "train_warmup/hf"  # the policy's tokenizer: records must match what it saw
  config.distill = distill

  grpo = grpo_stage.default_config()
  grpo.init = "hf"  # from the same warm policy LEAFE explores with
  grpo.init_path = "train_warmup/hf"
  grpo.mesh = (-1, 1, 1)  # data parallel over every (CPU) device
  grpo.dtype = "float32"  # CPU
  grpo.env_config = ml_collections.ConfigDict(SOKOBAN)
  grpo.split = "train"
  grpo.num_tasks = explore.num_tasks  # the rooms LEAFE explores
  grpo.tasks_per_iteration = 32  # verl-agent's Sokoban train_data_size
  grpo.group_size = 8  # verl-agent's group
  grpo.num_iterations = 60  # an upper bound: the budget ends the run first
  grpo.budget_from_ledger = "explore/ledger.json"  # equal interaction budget: the explorer's env + replayed steps
  grpo.max_steps = SOKOBAN["max_steps"]
  grpo.history_length = HISTORY_LENGTH
  grpo.max_new_tokens = 16  # as explore
  grpo.max_cache_len = 256  # one compact action prompt + response
  grpo.seq_len = 256  # one turn per row
  grpo.minibatches = 2  # two updates per iteration
  grpo.lr = 3e-4  # a tiny model; the paper's 1e-6 is for 7B+
  grpo.kl_coef = 0.01  # verl-agent
  grpo.checkpoint_every = 5  # iterations
  config.grpo = grpo

  early = early_experience_stage.default_config()
  early.env_config = ml_collections.ConfigDict(SOKOBAN)
  early.split = "train"
  early.num_tasks = 256  # training rooms whose solver trajectories are the expert data
  early.methods = ("iwm",)  # EarlyExp as the paper reproduced it: implicit world modelling only
  early.iwm_alternatives = 3  # every other move at each expert state
  early.tokenizer = "train_warmup/hf"  # the base policy's tokenizer
  early.history_length = HISTORY_LENGTH  # as explore and eval prompt
  early.tasks_per_shard = 256  # one record shard
  config.early_experience = early

  evaluation = eval_stage.default_config()
  evaluation.model_label = "tiny-llama (demo)"
  evaluation.env = "sokoban"
  evaluation.env_config = ml_collections.ConfigDict(SOKOBAN)
  evaluation.split = "test"  # held-out seeds [2^16, 2^32)
  evaluation.num_tasks = 128  # held-out rooms (paired Pass@16 standard error ~3 points at this size, ~4 at 64)
  evaluation.num_samples = 16  # n independent episodes per room
  evaluation.ks = (1, 4, 16)  # Pass@k reported (the paper: 1 and 128)
  evaluation.temperature = 1.0  # sample the policy as trained; Pass@k needs diverse samples
  evaluation.max_new_tokens = 16  # as explore
  evaluation.max_steps = SOKOBAN["max_steps"]  # as explore
  evaluation.history_length = HISTORY_LENGTH  # as explore
  evaluation.tasks_per_chunk = 128  # every room in one chunk: 2048 episodes per batched policy call
  evaluation.max_cache_len = 256  # one compact action prompt + response
  config.eval = evaluation

  report = report_stage.default_config()
  report.ks = (1, 4, 16)  # table columns
  report.title = "LEAFE demo: tiny policy on 6x6 two-box Sokoban (held-out seeds)"
  config.report = report

  # Stage 2 fine-tunes the warm policy from its HF export on the distilled records (a few hundred: small
  # batches, several epochs); the paper's settings (batch 128, lr 1e-6, 2-3 epochs) are for 7B+ models.
  finetune = {"init": "hf", "init_path": "train_warmup/hf", "tokenizer": "", "lr": 5e-4, "warmup_steps": 0,
              "num_epochs": 6, "batch_size": 8, "records": ("distill/records",)}
  early_experience = {**finetune, "records": ("early_experience/records",), "batch_size": 16}
  # A variant holds the overrides of every stage that runs under its name (train@leafe and eval@leafe).
  config.variants = ml_collections.ConfigDict({
      "warmup": {},
      "base": {"eval": {"method": "Base (warm-up SFT)", "policy": "train_warmup/hf"}},
      "grpo": {"eval": {"method": "GRPO (same env steps)", "policy": "grpo/hf"}},
      "leafe": {
          "train": {**finetune, "kinds": ("cf", "reh")},
          "eval": {"method": "LEAFE (L_cf + beta L_reh)", "policy": "train_leafe/hf"},
      },
      "reh_only": {  # the L_reh-only arm of the paper's Table 4 ablation
          "train": {**finetune, "kinds": ("reh",)},
          "eval": {"method": "L_reh only", "policy": "train_reh_only/hf"},
      },
      # EarlyExp (IWM): world modelling from the base policy, then imitation of the solver from that checkpoint.
      "ee_world": {"train": {**early_experience, "init_path": "train_warmup/hf", "kinds": ("iwm",),
                             "num_epochs": 1}},
      "iwm": {
          "train": {**early_experience, "init_path": "train_ee_world/hf", "kinds": ("sft",), "num_epochs": 2},
          "eval": {"method": "EarlyExp (IWM)", "policy": "train_iwm/hf"},
      },
  })
  return config
