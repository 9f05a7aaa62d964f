"""Shared pieces of the paper configs (configs/paper/<env>.py): the backbones, the model paths and the stages.

Every value carries a tag saying where it comes from (section numbers are those of
shared/reference/leafe_paper_notes.md):
  [T] / [S]  the paper, as transcribed (§6 tables) or as cited by a deep-read note (§2.3 hyperparameters);
  [I]        inferred from what the paper prints (e.g. a split size from the granularity of its table cells);
  [F]        a default of verl-agent, the framework LEAFE says it used (§3, §5, §7); not confirmed for LEAFE;
  [D]        the leafe_jax stage default, kept (the paper gives no value; the reason is in the stage module);
  [ours]     a choice made for these configs (the comment says why).

Inputs the user provides, as HF directories inside the workdir (symlinks are fine):
  <workdir>/models/base   the instruct model (the paper's "Base" row, notes §5);
  <workdir>/models/grpo   the GRPO-RLVR checkpoint of the same backbone on the same environment, which LEAFE
                          explores with and fine-tunes from (notes §2.2, §5): a verl-agent checkpoint, or the
                          export of this config's `grpo` stage (`--config.stages='("grpo",)'`, then link
                          <workdir>/grpo/hf to <workdir>/models/grpo).
Run from the repository root (the per-env files import this module as `configs.paper.common`).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from leafe_jax.baselines import ace_stage, early_experience_stage
from leafe_jax.eval import report_stage
from leafe_jax.eval import stage as eval_stage
from leafe_jax.explore import distill_stage
from leafe_jax.explore import stage as explore_stage
from leafe_jax.train import grpo_stage
from leafe_jax.train import stage as train_stage

# The GRPO-RLVR checkpoint LEAFE starts from (paper §2.2): an HF dir, relative to the workdir. The explorer and
# the evaluator also take "openai:<base_url>#<model>" (a server such as vLLM serving this directory):
# override explore.policy and variants.grpo.eval.policy for that; distill and train need the directory itself.
GRPO = "models/grpo"
# The instruct model, no task fine-tuning: the paper's Base row (notes §5). HF dir relative to the workdir.
BASE = "models/base"
# num_tasks that means "the whole split" (stages take the first num_tasks task ids of a split).
ALL_TASKS = 1_000_000
# Every k reported: the paper's tables give Pass@1 and Pass@128 (notes §6); the powers of two between feed the
# Pass@k curve.
KS = (1, 2, 4, 8, 16, 32, 64, 128)
# [ours] The in-process sampler of explore/eval: heads and MLP split over every device (tensor-parallel
# decoding of a 7B-14B model on one host; on a multi-process launch, over every process's devices), bf16
# weights and compute. 70B-class: serve with vLLM, or explore/eval on a pod slice (README, "At scale").
POLICY_MESH = (1, 1, -1)
POLICY_DTYPE = "bfloat16"


@dataclasses.dataclass(frozen=True)
class Backbone:
  label: str  # column label in the tables (the paper's name for it)
  hf_id: str  # the Hugging Face repository of the instruct model (what models/base should hold)
  context: int  # max_position_embeddings of its config.json: caps the sampler's KV cache


# The backbones of the paper's tables (notes §4); the instruct variants, since Base is "instruction-tuned model, no
# task fine-tuning" (notes §4 [I]).
BACKBONES = {
    "qwen2.5-7b": Backbone("Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct", 32768),  # Table 1, 4
    "llama3.1-8b": Backbone("Llama3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", 131072),  # Table 1, 4
    "qwen2.5-14b": Backbone("Qwen2.5-14B", "Qwen/Qwen2.5-14B-Instruct", 32768),  # Table 4
    "qwen2.5-32b": Backbone("Qwen2.5-32B", "Qwen/Qwen2.5-32B-Instruct", 32768),  # Table 3, 5
    "qwen2.5-72b": Backbone("Qwen2.5-72B", "Qwen/Qwen2.5-72B-Instruct", 32768),  # Table 2, 3, 5
    "llama3-70b": Backbone("Llama3-70B", "meta-llama/Meta-Llama-3-70B-Instruct", 8192),  # Table 2, 3, 5
}


@dataclasses.dataclass(frozen=True)
class EnvSetup:
  """What differs between environments; every field is set (and its source given) in the per-env file."""

  env: str  # registry name (leafe_jax/envs/registry.py)
  env_config: dict  # keyword config of the environment
  eval_env_config: dict  # keyword config for evaluation (usually the same)
  explore_split: str  # split explored (training tasks)
  explore_tasks: int  # first n tasks of it
  eval_split: str  # held-out split
  eval_tasks: int  # first n tasks of it
  eval_tasks_per_chunk: int  # tasks per resumable eval chunk; the eval builds one env per (task, sample) of a chunk
  max_steps: int  # episode horizon for explore and eval
  history_length: int  # (observation, action) pairs in the action prompt
  max_new_tokens: int  # response budget of one action
  seq_len: int  # training row length: one action prompt + response must fit
  explore_cache_len: int  # sampler KV cache while exploring: reflection prompts hold the whole trajectory
  num_epochs: int  # SFT epochs
  env_workers: int = 0  # explore/eval env worker processes (EnvPool); 0 = in-process envs (cheap engines)
  eval_max_live: int = 0  # eval episodes alive at once (each holds an env); 0 = a whole chunk at once
  # The EarlyExp row (Early Experience, IWM; notes §5, §8); None where the env has no expert (no row).
  early_experience: EarlyExperienceSetup | None = None
  ace: bool = False  # the ACE row (playbook prompting on the GRPO model); the paper runs it on interactive envs


@dataclasses.dataclass(frozen=True)
class EarlyExperienceSetup:
  """The Early Experience recipe of one environment (notes §8); LEAFE reproduced IWM only (notes §5)."""

  iwm_alternatives: int  # non-expert actions executed per expert state
  il_epochs: int  # epochs of the imitation stage that follows one IWM epoch
  lr: float  # learning rate of both stages
  batch_size: int  # effective batch size


def backbone(arg: str | None, allowed: tuple[str, ...], config_file: str) -> Backbone:
  """The backbone named by the config argument (`--config=configs/paper/<env>.py:<model>`)."""
  if arg not in allowed:
    raise ValueError(f"{config_file} needs a backbone argument, one of {', '.join(allowed)}: "
                     f"--config={config_file}:{allowed[0]} (got {arg!r})")
  return BACKBONES[arg]


def explore_config(setup: EnvSetup, model: Backbone) -> ml_collections.ConfigDict:
  """LEAFE stage 1 with the GRPO checkpoint as actor and reflector (notes §2.2)."""
  c = explore_stage.default_config()
  c.env = setup.env  # registered environment
  c.env_config = ml_collections.ConfigDict(setup.env_config)  # its keyword config
  c.split = setup.explore_split  # training tasks only
  c.num_tasks = setup.explore_tasks  # first n of the split
  c.policy = GRPO  # the GRPO-RLVR checkpoint LEAFE starts from (notes §2.2); HF dir or openai:<url>#<model>
  c.max_cache_len = min(setup.explore_cache_len, model.context)  # in-process sampler KV cache (prompt + output)
  c.method = "leafe"  # reflect, roll back to tau, branch with e (notes §2.2)
  c.reflect_every = 0  # [D] K is not given (notes §9.2): reflect on failure only
  c.failure_signals = ("irreversible", "done_without_success", "step_limit")  # [D] what triggers a reflection
  c.max_depth = 2  # [D] tree depth bound; not given (notes §9.2)
  c.max_attempts = 8  # [D] rollouts per task, root included; not given (notes §9.2)
  c.keep_experience_in_context = False  # [D] e only in the prompt of a'_tau; open in the paper (notes §2.2)
  c.history_length = setup.history_length  # (observation, action) pairs in the action prompt
  c.max_steps = setup.max_steps  # episode horizon
  c.temperature = 1.0  # [D] exploration temperature; not given
  c.top_p = 1.0  # [D] no nucleus truncation
  c.max_new_tokens = setup.max_new_tokens  # response budget of one action
  c.reflection_max_new_tokens = 512  # [D] response budget of one reflection
  c.concurrency = 64  # [D] tasks alive at once, sharing each batched policy call
  c.stop_on_success = False  # [D] LEAFE keeps exploring its queued branches after a success
  c.env_step_budget = 0  # [D] no global interaction budget (Table 3 sets one)
  c.shard = "0/1"  # this host explores every task; multi-host: --config.explore.shard=i/n on host i
  c.env_workers = setup.env_workers  # heavy engines step in worker processes, one batched call per tick
  c.policy_mesh = POLICY_MESH  # in-process sampler placement
  c.policy_dtype = POLICY_DTYPE  # in-process sampler dtype
  c.seed = 0  # sampling seed
  return c


def distill_config() -> ml_collections.ConfigDict:
  c = distill_stage.default_config()
  c.trees = "explore/trees"  # the explorer's trees
  c.tokenizer = GRPO  # the explored policy's tokenizer (an HF dir even when exploring through a server)
  c.max_cf_per_task = 3  # [S] 3 counterfactual branch instances per task into D_cf (notes §2.3)
  c.reh_fraction = 0.2  # [S] a random 20% of successful rollouts, branched ones included, into D_reh (§2.3)
  c.reh_weight = 1.0  # [D] beta of L = L_cf + beta * L_reh; not given (notes §2.3)
  c.shard_size = 4096  # [D] records per TFRecord shard
  c.seed = 0  # which successful rollouts are rehearsed
  return c


def train_config(setup: EnvSetup) -> ml_collections.ConfigDict:
  """Stage 2: SFT of the GRPO checkpoint on the distilled records (notes §2.3), sharded for a pod or GPU host."""
  c = train_stage.default_config()
  c.init = "hf"  # [T] LEAFE fine-tunes the GRPO checkpoint (notes §2.2 "Which policy runs Stage 1", §4)
  c.init_path = GRPO  # the GRPO-RLVR checkpoint (HF dir)
  c.tokenizer = ""  # the checkpoint's own tokenizer (the one the records were written with)
  c.records = ("distill/records",)  # D_cf and D_reh from the distill stage
  c.kinds = ("cf", "reh")  # L = L_cf + beta * L_reh (notes §2.3)
  c.mesh = (1, -1, 1)  # [ours] (data, fsdp, tensor): parameters and optimizer state sharded over every device
  c.batch_size = 128  # [S] batch 128 (notes §2.3); rows of seq_len tokens
  c.micro_batches = 1  # [ours] gradient accumulation; raise it if a step does not fit in memory
  c.seq_len = setup.seq_len  # tokens per row; longer records are left-truncated (audit with --seq_len)
  c.pack = False  # [ours] one record per row, so a batch is 128 examples as in the paper's SFT
  c.lr = 1e-6  # [S] learning rate 1e-6 (notes §2.3)
  c.warmup_steps = 0  # [D] not given; the Early Experience YAMLs use none (notes §8)
  c.schedule = "constant"  # [D] not given
  c.num_epochs = setup.num_epochs  # [S] 2-3 epochs (notes §2.3)
  c.num_steps = 0  # train by epochs
  c.weight_decay = 0.0  # [D] not given
  c.clip_norm = 1.0  # [D] global-norm clipping (HF / verl default)
  c.adam_b1 = 0.9  # [D] AdamW beta1 (the optimizer is not given; AdamW is likely, notes §4)
  c.adam_b2 = 0.999  # [D] AdamW beta2
  c.adam_eps = 1e-8  # [D] AdamW epsilon
  c.loss_normalization = "example"  # [D] each example counts once: the paper's per-example objective
  c.dtype = "bfloat16"  # [ours] compute dtype (precision is not given)
  c.param_dtype = "float32"  # [ours] master weights and optimizer state in fp32
  c.remat_policy = "full"  # [ours] recompute activations in the backward pass: 7B-72B at seq_len rows
  c.checkpoint_every = 50  # [ours] ~10-12k records (notes §2.3) are ~100 steps per epoch: save often
  c.keep = 2  # [ours] orbax checkpoints kept (each holds fp32 params and Adam moments)
  c.async_checkpoint = True  # [D] write checkpoints in the background
  c.log_every = 10  # [D] console + TensorBoard every N steps
  c.export_hf = True  # <stage_dir>/hf: the LEAFE policy the eval stage loads
  c.seed = 0  # init and data order
  return c


def eval_config(setup: EnvSetup, model: Backbone) -> ml_collections.ConfigDict:
  """Pass@k from independent samples, no reflection at test time (notes §7)."""
  c = eval_stage.default_config()
  c.method = "Base"  # row label; set per variant
  c.model_label = model.label  # column label
  c.policy = BASE  # set per variant
  c.env = setup.env  # registered environment
  c.env_config = ml_collections.ConfigDict(setup.eval_env_config)  # its keyword config
  c.split = setup.eval_split  # held-out split
  c.num_tasks = setup.eval_tasks  # first n tasks of it
  c.num_samples = 128  # [T] n = 128 independent samples per task: Pass@128 (notes §6, §7)
  c.ks = KS  # Pass@k values saved in results.json
  c.temperature = 0.4  # [F] verl-agent validation temperature (notes §7); the paper's is not given
  c.top_p = 1.0  # [D] not given
  c.max_new_tokens = setup.max_new_tokens  # response budget of one action (as explored)
  c.max_steps = setup.max_steps  # episode horizon (as explored)
  c.history_length = setup.history_length  # as explored
  c.tasks_per_chunk = setup.eval_tasks_per_chunk  # tasks per resumable chunk (n = 128 episodes each)
  c.max_live_episodes = setup.eval_max_live  # bounds the envs alive at once
  c.max_cache_len = min(setup.seq_len, model.context)  # in-process sampler KV cache: one action prompt + output
  c.env_workers = setup.env_workers  # heavy engines step in worker processes, one batched call per tick
  c.policy_mesh = POLICY_MESH  # in-process sampler placement
  c.policy_dtype = POLICY_DTYPE  # in-process sampler dtype
  c.seed = 0  # sampling seed
  return c


def grpo_config(setup: EnvSetup, model: Backbone) -> ml_collections.ConfigDict:
  """GRPO-RLVR from the instruct model (notes §5): the baseline row and LEAFE's starting checkpoint."""
  c = grpo_stage.default_config()
  c.init = "hf"  # [T] GRPO trains the instruct model (notes §5)
  c.init_path = BASE  # the Base row's model
  c.tokenizer = ""  # its own tokenizer
  c.mesh = (1, -1, 1)  # [ours] params and optimizer state sharded over every device, as the SFT stage
  c.dtype = "bfloat16"  # [ours] compute dtype
  c.param_dtype = "float32"  # [ours] master weights
  c.remat_policy = "full"  # [ours] 7B+ rows of seq_len tokens
  c.lr = 1e-6  # [F] verl-agent actor lr (notes §5)
  c.env = setup.env  # registered environment
  c.env_config = ml_collections.ConfigDict(setup.env_config)  # its keyword config
  c.env_workers = setup.env_workers  # heavy engines step in worker processes
  c.split = setup.explore_split  # the training tasks LEAFE explores
  c.num_tasks = setup.explore_tasks  # the same pool
  c.tasks_per_iteration = 32 if setup.env == "sokoban" else 16  # [F] verl-agent train_data_size (notes §5)
  c.group_size = 8  # [F] verl-agent env.rollout.n (notes §5)
  c.num_iterations = 150  # [F] verl-agent total_epochs (notes §5)
  c.env_step_budget = 0  # [D] no budget; set it to LEAFE's ledger total for the equal-budget comparison
  c.max_steps = setup.max_steps  # episode horizon, as explored and evaluated
  c.history_length = setup.history_length  # as explored
  c.temperature = 1.0  # [F] verl rollout temperature
  c.top_p = 1.0  # [F]
  c.max_new_tokens = setup.max_new_tokens  # response budget of one action
  c.max_cache_len = min(setup.seq_len, model.context)  # rollout sampler: one action prompt + response
  c.seq_len = setup.seq_len  # one turn per training row
  c.minibatches = 4  # [F] verl-agent ppo_mini_batch_size 64-256 of 128-256 trajectories' turns: ~4 updates
  # [ours] one row of seq_len tokens per device per forward/backward (an iteration's ~thousands of turns in one
  # pass would not fit any accelerator); verl-agent: ppo_micro_batch_size_per_gpu
  c.micro_batch_rows_per_shard = 1
  c.clip_eps = 0.2  # [F] verl clip_ratio
  c.kl_coef = 0.01  # [F] verl-agent kl_loss_coef, low_var_kl (notes §5)
  c.invalid_action_penalty = 0.1  # [F] verl-agent invalid-action penalty coefficient (notes §5)
  c.checkpoint_every = 5  # [ours] an orbax checkpoint every 5 iterations (fp32 params + Adam moments)
  c.keep = 2  # [ours]
  c.seed = 0
  return c


def early_experience_config(setup: EnvSetup, model: Backbone) -> ml_collections.ConfigDict:
  """EE data: the expert's turns (sft) and, at each expert state, the observations of other actions (iwm)."""
  ee = setup.early_experience
  c = early_experience_stage.default_config()
  c.env = setup.env  # registered environment with an expert (gold_actions)
  c.env_config = ml_collections.ConfigDict(setup.env_config)  # as explored
  c.env_workers = setup.env_workers  # heavy engines play and roll back in worker processes
  c.split = setup.explore_split  # the training tasks LEAFE explores
  c.num_tasks = setup.explore_tasks  # the same pool
  c.methods = ("iwm",)  # [S] LEAFE reproduced IWM only (notes §5); add "sr" (and train@sr, eval@sr) for SR
  c.iwm_alternatives = ee.iwm_alternatives  # non-expert actions per state
  c.sr_alternatives = 3  # [S] EE K = 3 (notes §8); used only with "sr"
  c.policy = BASE  # EE starts from the instruct model; proposes and reflects for SR only
  c.tokenizer = BASE  # the records are trained from models/base
  c.max_cache_len = min(setup.seq_len, model.context)  # SR's sampler: one action prompt + response
  c.policy_mesh = POLICY_MESH  # in-process sampler placement
  c.policy_dtype = POLICY_DTYPE  # in-process sampler dtype
  c.history_length = setup.history_length  # states rendered as explored and evaluated
  c.max_new_tokens = setup.max_new_tokens  # SR proposal budget
  c.tasks_per_shard = 64  # [D] tasks per durable record shard
  c.shard = "0/1"  # multi-host: --config.early_experience.shard=i/n on host i
  c.seed = 0
  return c


def ace_config(setup: EnvSetup, model: Backbone) -> ml_collections.ConfigDict:
  """ACE's playbook, learned by the GRPO model on the training tasks (notes §5: ACE on top of the GRPO model)."""
  c = ace_stage.default_config()
  c.env = setup.env  # registered environment
  c.env_config = ml_collections.ConfigDict(setup.env_config)  # as explored
  c.env_workers = setup.env_workers  # heavy engines step in worker processes
  c.split = setup.explore_split  # the training tasks LEAFE explores
  c.num_tasks = setup.explore_tasks  # the same pool
  c.num_epochs = 1  # [ours] one pass (ACE's offline adaptation; the LEAFE paper gives no setting, notes §9.7)
  c.tasks_per_batch = 16  # [ours] lessons curated per step
  c.policy = GRPO  # [S] generator, reflector and curator (notes §5)
  c.max_cache_len = min(setup.explore_cache_len, model.context)  # reflector prompts hold a trajectory
  c.policy_mesh = POLICY_MESH  # in-process sampler placement
  c.policy_dtype = POLICY_DTYPE  # in-process sampler dtype
  c.max_bullets = 100  # [S-low] append-only, capped at 100 items (notes §5)
  c.max_steps = setup.max_steps  # episode horizon, as evaluated
  c.history_length = setup.history_length  # as evaluated
  c.max_new_tokens = setup.max_new_tokens  # generator response budget
  c.temperature = 1.0  # [D] generator temperature while learning
  c.reflection_temperature = 0.7  # [D]
  c.reflection_max_new_tokens = 512  # [D]
  c.seed = 0
  return c


def early_experience_variants(setup: EnvSetup) -> dict:
  """EE's IWM recipe as two train variants (notes §8): one epoch of world modelling from the instruct model,
  then imitation of the expert from that checkpoint; then the EarlyExp eval row."""
  ee = setup.early_experience
  common_train = {
      "init": "hf", "records": ("early_experience/records",), "lr": ee.lr, "batch_size": ee.batch_size,
      "schedule": "cosine",  # [S] EE YAMLs: cosine schedule, no warm-up (notes §8)
      "checkpoint_every": 500,  # [ours] IWM data is ~10x the expert turns: fewer, larger saves
  }
  return {
      "ee_world": {"train": {**common_train, "init_path": BASE, "kinds": ("iwm",), "num_epochs": 1}},
      "iwm": {"train": {**common_train, "init_path": "train_ee_world/hf", "kinds": ("sft",),
                        "num_epochs": ee.il_epochs},
              "eval": {"method": EVAL_ROWS["iwm"][0], "policy": EVAL_ROWS["iwm"][1]}},
  }


def report_config(title: str) -> ml_collections.ConfigDict:
  c = report_stage.default_config()
  c.eval_glob = "eval_*"  # every eval stage of this workdir
  c.ks = (1, 128)  # [T] the paper's columns, Pass@1 and Pass@128 (notes §6)
  c.explore_dir = "explore"  # ledger totals and one backtrack tree of the explorer run
  c.title = title  # heading of report.md
  return c


# Eval variants: (row label as in the paper's tables, policy).
EVAL_ROWS = {
    "base": ("Base", BASE),  # the instruct model (notes §5)
    "grpo": ("GRPO-RLVR", GRPO),  # the checkpoint LEAFE starts from (notes §5)
    "leafe": ("LEAFE", "train_leafe/hf"),  # the train@leafe export
    "reh_only": ("L_reh only", "train_reh_only/hf"),  # the train@reh_only export (Table 4 ablation)
    "iwm": ("EarlyExp", "train_iwm/hf"),  # Early Experience (IWM): the train@iwm export (Table 1)
    "leafe_ee": ("LEAFE + EE", "train_leafe_ee/hf"),  # LEAFE with the IWM objective added (Table 6)
    "ace": ("ACE", GRPO),  # the GRPO model with the ace stage's playbook in its prompts (Table 1)
}


def pipeline(name: str, setup: EnvSetup, model: Backbone, title: str, *,
             reh_only: bool = False, leafe_with_ee: bool = False) -> ml_collections.ConfigDict:
  """explore -> distill -> train@leafe [-> train@reh_only] [-> early_experience -> train@ee_world -> train@iwm]
  -> eval of Base, GRPO, LEAFE [, L_reh only] [, EarlyExp] -> report."""
  config = ml_collections.ConfigDict()
  config.name = name  # run name
  config.seed = 0  # global seed
  ee = setup.early_experience is not None
  if leafe_with_ee and not ee:
    raise ValueError(f"{name}: LEAFE + EE needs the env's Early Experience setup")
  rows = ["base", "grpo", "leafe"] + (["reh_only"] if reh_only else []) + (["iwm"] if ee else [])
  rows += ["leafe_ee"] if leafe_with_ee else []
  rows += ["ace"] if setup.ace else []
  ee_stages = ("early_experience", "train@ee_world", "train@iwm") if ee else ()
  trains = [f"train@{v}" for v in ["leafe"] + (["reh_only"] if reh_only else [])]
  config.stages = ("explore", "distill", *trains, *ee_stages, *(["train@leafe_ee"] if leafe_with_ee else []),
                   *(["ace"] if setup.ace else []), *(f"eval@{v}" for v in rows), "report")
  config.grpo = grpo_config(setup, model)  # not in `stages`: run it first when models/grpo is not supplied
  config.explore = explore_config(setup, model)
  config.distill = distill_config()
  config.train = train_config(setup)
  config.eval = eval_config(setup, model)
  config.report = report_config(title)
  if ee:
    config.early_experience = early_experience_config(setup, model)
  if setup.ace:
    config.ace = ace_config(setup, model)
  variants = {v: {"eval": {"method": EVAL_ROWS[v][0], "policy": EVAL_ROWS[v][1]}} for v in rows}
  if ee:
    variants.update(early_experience_variants(setup))
  if setup.ace:
    variants["ace"]["eval"]["playbook"] = "ace/playbook.json"
  if leafe_with_ee:
    # Table 6's "w/ EE": LEAFE's stage 2 with the world-modelling records of the EarlyExp row mixed in (the paper
    # names the objective, not the mix: records are mixed by count, as every records list is).
    variants["leafe_ee"]["train"] = {"records": ("distill/records", "early_experience/records"),
                                     "kinds": ("cf", "reh", "iwm")}
  if reh_only:
    # The L_reh-only arm of Table 4: same records, epochs and optimizer, the L_cf records left out.
    variants["reh_only"]["train"] = {"kinds": ("reh",)}
  config.variants = ml_collections.ConfigDict(variants)
  return config
