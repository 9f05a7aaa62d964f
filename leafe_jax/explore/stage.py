"""Stage `explore`: LEAFE stage 1 (or the IS / IR comparison samplers) over an environment split.

Trees go to `<stage_dir>/trees/shard-<i>-of-<n>.jsonl`, one written line per finished task (fsynced in groups and
before the ledger is saved); a rerun skips the tasks already there, so a killed explorer loses and duplicates
nothing, and a machine crash redoes at most the tasks since the last fsync (records are derived from the trees
by the `distill` stage). Host i of n (`shard = "i/n"`) takes every n-th task. With `env_workers` > 0 the
envs step in an EnvPool of that many processes (heavy envs: ScienceWorld, ALFWorld, the coding sandbox).

With an in-process policy the stage spans the processes of a multi-process launch (a model too large for one
host): every process explores the same tasks, the sampler runs on the global mesh, process 0 writes the trees
and the ledger. Such a launch is one shard (`shard = "0/1"`); shards are for independent hosts.
"""

from __future__ import annotations

import glob
import json
import os

import ml_collections
from absl import logging

from leafe_jax import envs, stage_settings
from leafe_jax.envs import pool as pool_lib
from leafe_jax.envs import pooled, prompts
from leafe_jax.explore import ledger as ledger_lib
from leafe_jax.explore import tree as tree_lib
from leafe_jax.explore.engine import FAILURE_SIGNALS, Explorer, ExploreSettings
from leafe_jax.explore.ledger import Ledger
from leafe_jax.policy.base import DEFAULT_PREFILL_CHUNK
from leafe_jax.policy.factory import in_process

CONFIG_SECTION = "explore"


def spans_processes(cfg: ml_collections.ConfigDict) -> bool:
  """With an in-process policy, one SPMD program over every process of a multi-process launch (main.py)."""
  return in_process(cfg.policy)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.env = "sokoban"  # registered environment
  c.env_config = ml_collections.ConfigDict()  # its keyword config (free-form)
  # Env worker processes (an EnvPool; all of a pool's envs step concurrently each tick); 0 = envs in-process.
  c.env_workers = 0
  c.env_step_timeout_s = pool_lib.DEFAULT_STEP_TIMEOUT_S  # a pooled env step slower than this kills its worker
  c.split = "train"  # exploration uses training tasks only
  c.num_tasks = 256  # tasks explored (first n of the split)
  c.policy = "train/hf"  # HF dir relative to workdir, or "openai:<base_url>#<model>"; the paper starts from GRPO
  c.max_cache_len = 4096  # KV-cache length of the in-process sampler
  c.prefill_chunk = DEFAULT_PREFILL_CHUNK  # prompt positions per prefill step of the in-process sampler (memory)
  # In-process sampler placement: (data, fsdp, tensor) device counts, one -1 = the rest; () = one device.
  # (1, 1, -1) splits a large model's heads and MLP over every device (tensor parallel decoding).
  c.policy_mesh = ()
  c.policy_dtype = "float32"  # parameter and compute dtype of the in-process sampler ("bfloat16" on TPU/GPU)
  c.method = "leafe"  # "leafe" | "is" (independent sampling) | "ir" (iterative refinement): paper Table 3
  # Paper: "every K steps or upon failure"; K not given (paper_notes §9). 0 = on failure only, which matches
  # the paper's CodeContests setting ("rollback only when the budget is exhausted").
  c.reflect_every = 0
  c.failure_signals = FAILURE_SIGNALS  # what counts as failure: irreversible state, done unsuccessful, step limit
  c.max_depth = 2  # branch depth bound; paper value not given
  c.max_attempts = 8  # rollouts per task (root + branches); paper value not given
  # Paper leaves open whether e stays after a'_tau; we drop it, so the branch continues as the test-time policy
  # would, and D_reh turns after tau are on-policy without e.
  c.keep_experience_in_context = False
  c.history_length = prompts.DEFAULT_HISTORY_LENGTH  # (observation, action) pairs in the action prompt
  c.max_steps = 15  # episode horizon (verl-agent Sokoban 15; CodeContests 4, paper_notes §2.2)
  c.temperature = 1.0  # exploration sampling temperature; paper value not given
  c.reflection_temperature = 1.0  # sampling temperature of reflections (0 = greedy); paper value not given
  c.top_p = 1.0  # nucleus sampling
  c.max_new_tokens = 512  # verl-agent max_response_length (paper_notes §3 [F])
  c.reflection_max_new_tokens = 512  # reflection response budget
  c.concurrency = 64  # tasks alive at once; their rollouts share every policy call
  c.stop_on_success = False  # end a task at its first success (set for IS/IR coverage runs)
  c.env_step_budget = 0  # global interaction budget (env + replayed steps); 0 = unlimited
  # fsync the tree file every n trees or s seconds: a machine crash redoes at most those tasks (a kill none).
  c.tree_fsync_every = tree_lib.DEFAULT_FSYNC_EVERY
  c.tree_fsync_s = tree_lib.DEFAULT_FSYNC_S
  c.shard = "0/1"  # "i/n": this host explores every n-th task starting at i
  c.seed = 0  # sampling seed
  return c


# Fields a rerun may change: where, how fast and how much is explored, not how a task is explored. (A changed
# concurrency batches other tasks together; each prompt's seed is its task's own, so a redone task samples alike.)
_FREE_FIELDS = ("env_workers", "env_step_timeout_s", "policy_mesh", "concurrency", "tree_fsync_every",
                "tree_fsync_s", "shard", "num_tasks", "env_step_budget", "prefill_chunk")


def parse_shard(shard: str, field: str = "explore.shard") -> tuple[int, int]:
  """(i, n) of an "i/n" shard spec; `field` names the config field in the error."""
  try:
    index, count = (int(x) for x in shard.split("/"))
  except ValueError:
    raise ValueError(f"config field '{field}' must look like 'i/n', got {shard!r}") from None
  if not 0 <= index < count:
    raise ValueError(f"config field '{field}' {shard!r}: need 0 <= i < n")
  return index, count


def settings_of(cfg: ml_collections.ConfigDict) -> ExploreSettings:
  return ExploreSettings(
      method=cfg.method, reflect_every=cfg.reflect_every, failure_signals=tuple(cfg.failure_signals),
      max_depth=cfg.max_depth, max_attempts=cfg.max_attempts, keep_experience_in_context=cfg.keep_experience_in_context,
      history_length=cfg.history_length, max_steps=cfg.max_steps, temperature=cfg.temperature,
      reflection_temperature=cfg.reflection_temperature, top_p=cfg.top_p,
      max_new_tokens=cfg.max_new_tokens, reflection_max_new_tokens=cfg.reflection_max_new_tokens,
      concurrency=cfg.concurrency, stop_on_success=cfg.stop_on_success, seed=cfg.seed)


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Value checks of an explore section that need no files (`main.plan` runs them before any stage starts)."""
  parse_shard(cfg.shard)
  if cfg.env not in envs.names():
    raise ValueError(f"config field 'explore.env' {cfg.env!r} is not a registered environment: {envs.names()}")
  if cfg.env_workers < 0:
    raise ValueError(f"config field 'explore.env_workers' must be >= 0, got {cfg.env_workers}")
  settings_of(cfg)  # ExploreSettings checks the method and the failure signals
  if 0 < cfg.env_step_budget < cfg.max_steps:
    # A rollout starts only when its max_steps fit in the budget (a hard cap): this one would start nothing.
    raise ValueError(f"config field 'explore.env_step_budget' is {cfg.env_step_budget}, less than one rollout's "
                     f"explore.max_steps={cfg.max_steps}: use 0 (no budget) or at least max_steps")


def run_with_policy(config: ml_collections.ConfigDict, stage_dir: str, policy, *, primary: bool = True,
                    barrier=lambda name: None, policy_weights: str | None = None) -> Ledger:
  """Explores the configured tasks with `policy`; returns the ledger (also saved next to the trees).

  `policy`: a Policy, or a zero-argument function that makes one, called only if a task is left to explore (a
  rerun of a finished stage loads no model). On a multi-process launch every process calls this alike: only the
  `primary` one writes, and `barrier(name)` waits for all processes (its repair of the tree file is read by all).
  `policy_weights`: the fingerprint of an in-process policy's weights: trees explored with other weights, or
  other settings, are refused (stage_settings).
  """
  cfg = config.explore
  check_config(cfg)
  settings = settings_of(cfg)
  index, count = parse_shard(cfg.shard)
  env_config = cfg.env_config.to_dict()
  all_tasks = envs.make(cfg.env, **env_config).tasks(cfg.split)[: cfg.num_tasks]
  tasks = all_tasks[index::count]
  tree_path = os.path.join(stage_dir, "trees", tree_lib.tree_file_name(index, count))
  store = (tree_lib.TreeStore(tree_path, fsync_every=cfg.tree_fsync_every, fsync_s=cfg.tree_fsync_s)
           if primary else None)
  barrier("explore: tree file repaired")
  ledger = Ledger(cfg.env_step_budget, num_tasks=len(tasks))
  done = {}
  for tree in tree_lib.read_trees(tree_path):  # as the primary's store left it, on every process
    done[tree.task_id] = tree
    ledger.load_task_counts({tree.task_id: tree.ledger})
  # Any shard's trees count: hosts of one stage dir explore with one set of settings.
  tree_files = [f for f in glob.glob(os.path.join(stage_dir, "trees", "*.jsonl")) if os.path.getsize(f)]
  recorded = stage_settings.of_section(cfg, _FREE_FIELDS, policy_weights=policy_weights)
  stage_settings.check("explore", stage_dir, recorded, has_outputs=bool(tree_files), write=primary, what="trees")
  # `shard` is free as placement, not its count: shards of another count read other tree files, so every task
  # would be explored again beside its first tree (and distill would read both).
  for path in tree_files:
    match = tree_lib.TREE_FILE.fullmatch(os.path.basename(path))
    if match and int(match.group(2)) != count:
      raise ValueError(f"explore: {path} holds trees of {match.group(2)} shards, but explore.shard is {cfg.shard!r} "
                       f"(shard count changed): keep the shard count of the stage dir's trees, or move that folder "
                       "away to explore again")
  # num_tasks is free to grow (the first tasks are a prefix); shrunk, the ledger would count trees outside the run
  # (coverage over 100%, a GRPO budget read from tasks it does not train on) and distill would read them.
  outside = sorted(set(done) - set(tasks))
  if outside:
    raise ValueError(f"explore: {tree_path} holds trees of {len(outside)} tasks outside this run's "
                     f"{len(tasks)} (e.g. {outside[0]!r}; explore.num_tasks={cfg.num_tasks} is smaller than the "
                     "run that explored them): keep num_tasks at least as large, or move that folder away")
  todo = [t for t in tasks if t not in done]
  logging.info("explore: %d tasks in shard %s, %d already done", len(tasks), cfg.shard, len(done))
  ledger_path = os.path.join(stage_dir, ledger_lib.ledger_name(index, count))
  if os.path.exists(ledger_path):
    # A policy call serves many tasks at once, so trees carry each task's policy_requests (prompts), not calls:
    # take the calls from the last saved ledger (a run killed before saving its ledger loses only its own count).
    with open(ledger_path) as f:
      saved = json.load(f)
    ledger.total["policy_calls"] += saved["total"].get("policy_calls", 0)
    # A spent budget finished the trees alive then without their later branches: those trees are not a prefix
    # of a run with another budget, so env_step_budget is free only while the recorded budget was not spent.
    spent = saved.get("env_step_budget", 0)
    # Ledgers before the budget became a hard cap lack "budget_exhausted": theirs ran out when they reached it.
    exhausted = saved.get("budget_exhausted",
                          saved["total"].get("env_steps", 0) + saved["total"].get("replayed_steps", 0) >= spent > 0)
    ledger.budget_exhausted = bool(exhausted) and cfg.env_step_budget == spent
    if spent > 0 and cfg.env_step_budget != spent and exhausted:
      raise ValueError(f"explore: the trees in {stage_dir} were cut short when their env_step_budget={spent} ran out "
                       f"(env_step_budget changed since, to {cfg.env_step_budget}): move that folder away to "
                       "explore again, or run it under another variant")
  if todo and not ledger.affords(cfg.max_steps):
    ledger.budget_exhausted = True
    logging.info("explore: interaction budget %d spent (%d taken; a rollout may take %d); %d tasks not started",
                 cfg.env_step_budget, ledger.interaction, cfg.max_steps, len(todo))
  elif todo:
    from tqdm import tqdm

    with (tqdm(total=len(tasks), initial=len(done), desc=f"explore ({cfg.method})", unit="task",
               disable=not primary) as bar,
          pooled.env_factory(cfg.env, env_config, cfg.env_workers, cfg.env_step_timeout_s) as make_env):
      def on_tree(tree):
        if store:
          store.append(tree)
        bar.update(1)

      if not hasattr(policy, "generate"):
        policy = policy()
      try:
        Explorer(policy, make_env, cfg.env, settings, ledger).run(todo, on_tree)
      finally:
        if store:
          store.sync()  # the finished trees are durable before the ledger (or an error) reports on them
  if primary:
    ledger.save(ledger_path)
  logging.info("explore ledger: %s", json.dumps(ledger.to_json()["total"]))
  return ledger


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  from leafe_jax.policy.factory import make_policy, weights_fingerprint

  cfg = config.explore
  processes = {}
  if spans_processes(cfg):
    import jax

    from leafe_jax.parallel import distributed

    processes = {"primary": distributed.join(config), "barrier": distributed.barrier}
    if jax.process_count() > 1 and parse_shard(cfg.shard)[1] > 1:
      raise ValueError(f"config field 'explore.shard' is {cfg.shard!r}, but the {jax.process_count()} processes of "
                       "this launch explore one task list together: use '0/1' (shards are for separate hosts)")
  os.makedirs(stage_dir, exist_ok=True)
  weights = weights_fingerprint(cfg.policy, workdir)
  run_with_policy(config, stage_dir, lambda: make_policy(
      cfg.policy, workdir, max_cache_len=cfg.max_cache_len, mesh_shape=tuple(cfg.policy_mesh),
      dtype=cfg.policy_dtype, field="explore.policy", prefill_chunk=cfg.prefill_chunk), policy_weights=weights,
      **processes)
