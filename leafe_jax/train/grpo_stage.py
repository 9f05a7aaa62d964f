"""Stage `grpo`: GRPO-RLVR on an environment (the paper's RL baseline, and the checkpoint LEAFE starts from).

Each iteration plays `group_size` episodes of each of `tasks_per_iteration` training tasks with the current
policy (the in-process sampler, on the training mesh), turns them into rows (train/grpo.py), recomputes the
rows' log-probs under the current and the initial (reference) params, and applies `minibatches` optimizer
updates of the clipped GRPO loss (the learning-rate schedule counts `minibatches` updates per iteration, taken
or not: an iteration where every group scored alike has nothing to train on). An orbax checkpoint every
`checkpoint_every` iterations (and at the end) holds the train state, the iteration and the interaction ledger:
a killed run resumes after the last one and plays the iterations since then again, with the same rollouts (they
are seeded by iteration).
`env_step_budget` is a hard cap on the env steps the run takes: an iteration plays only as many tasks as the
remaining budget holds at their worst case (`group_size` x `max_steps` steps a task), and the run stops when not
one more task fits. The fixed interaction budget shared with LEAFE's exploration, which caps its rollouts the
same way (its ledger counts the same steps).

Multi-host (a pod, a cluster): the stage joins jax.distributed with the train section's settings
(`train.distributed`, so one launch line serves both stages). Every process then plays the same rollouts, on
envs of its own, and builds the same rows (replicated host work: the rollouts are seeded, the environments
deterministic); the sampler and the updates run on the global mesh, each process placing only its devices'
slices. Processes check that they agree at every sampler call and on every iteration's rows, and stop with
`distributed.ProcessesDisagreeError` instead of training on batches that differ between hosts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time

import ml_collections
import numpy as np
from absl import logging

from leafe_jax import durable, stage_settings
from leafe_jax.envs import pool as pool_lib
from leafe_jax.envs import prompts
from leafe_jax.explore.ledger import stage_ledger_files
from leafe_jax.policy.base import DEFAULT_PREFILL_CHUNK
from leafe_jax.train import stage as train_stage

CONFIG_SECTION = "grpo"
# Fields a resumed run may change: placement, speed and bookkeeping, and the run's length (more iterations, a
# larger budget: the iterations done are the first ones of the longer run; a cosine schedule's length is recorded).
_FREE_FIELDS = ("mesh", "env_workers", "env_step_timeout_s", "micro_batch_rows_per_shard", "remat_policy",
                "logits_fractions", "attention_impl", "checkpoint_every", "keep", "async_checkpoint", "export_hf",
                "num_iterations", "env_step_budget", "budget_from_ledger", "prefill_chunk")
ROW_KEYS = ("input_ids_BxT", "segment_ids_BxT", "positions_BxT")


def spans_processes(cfg: ml_collections.ConfigDict) -> bool:
  """One SPMD program over every process of a multi-process launch (main.py): replicated rollouts."""
  del cfg
  return True


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Model and optimizer: the same fields as the train stage (init, init_path, tokenizer, model, mesh, dtype,
  # param_dtype, remat_policy, attention_impl, lr, warmup_steps, schedule, weight_decay, clip_norm, adam_*).
  base = train_stage.default_config()
  for field in ("init", "init_path", "tokenizer", "model", "mesh", "dtype", "param_dtype", "remat_policy",
                "attention_impl", "logits_fractions", "warmup_steps", "schedule", "weight_decay", "clip_norm",
                "adam_b1", "adam_b2", "adam_eps", "keep", "async_checkpoint", "export_hf"):
    c[field] = base[field]
  c.lr = 1e-6  # verl-agent GRPO actor lr (paper_notes §5 [F]); the paper's value is not given
  c.env = "sokoban"  # registered environment
  c.env_config = ml_collections.ConfigDict()  # its keyword config
  c.env_workers = 0  # env worker processes (EnvPool); 0 = in-process
  c.env_step_timeout_s = pool_lib.DEFAULT_STEP_TIMEOUT_S  # a pooled env step slower than this kills its worker
  c.split = "train"  # task pool the iterations draw from
  c.num_tasks = 4096  # size of that pool (the first n task ids of the split)
  c.tasks_per_iteration = 32  # distinct tasks per iteration (verl-agent train_data_size: 32 Sokoban, 16 others)
  c.group_size = 8  # episodes per task, the GRPO group (verl-agent env.rollout.n = 8)
  c.num_iterations = 150  # iterations (verl-agent total_epochs 150 with one batch each)
  c.env_step_budget = 0  # > 0: a hard cap on env steps (equal interaction budget; never overshot); 0 = off
  # An explore stage's ledger.json, or its stage dir (a sharded run's ledger-shard-*.json are summed), relative to
  # workdir: its env steps + replayed steps become the budget (overrides env_step_budget), so GRPO and LEAFE
  # spend the same interaction. "" = not used.
  c.budget_from_ledger = ""
  c.max_steps = 15  # episode horizon (verl-agent Sokoban max_steps)
  c.history_length = prompts.DEFAULT_HISTORY_LENGTH  # (observation, action) pairs in the action prompt
  c.temperature = 1.0  # rollout sampling temperature (verl rollout default)
  c.top_p = 1.0  # rollout nucleus
  c.max_new_tokens = 512  # response budget of one action (verl-agent max_response_length)
  c.max_cache_len = 4096  # KV cache of the rollout sampler: one action prompt + response
  c.prefill_chunk = DEFAULT_PREFILL_CHUNK  # prompt positions per prefill step of the in-process sampler (memory)
  c.seq_len = 4096  # training row length: a turn (prompt + response) must fit; longer prompts are left-truncated
  c.pack = True  # several turns per row (segments) while they fit; the loss is unchanged
  c.minibatches = 1  # optimizer updates per iteration (1 = exactly on-policy; verl: ppo_mini_batch_size)
  # Rows each batch shard (data x fsdp) holds per forward/backward pass: a minibatch runs as whole micro-batches
  # of this many rows per shard, gradients summed, so activation memory and the compiled shapes stay fixed however
  # many turns an iteration has (verl: ppo_micro_batch_size_per_gpu). 0 = a minibatch in one pass.
  c.micro_batch_rows_per_shard = 0
  c.clip_eps = 0.2  # PPO clip range ε (verl default)
  c.kl_coef = 0.01  # β of the low-variance KL to the initial policy (verl-agent kl_loss_coef); 0 = no KL
  c.invalid_action_penalty = 0.1  # reward −= this per unparsable action (verl-agent penalty coefficient)
  c.checkpoint_every = 1  # iterations between orbax checkpoints (and always the last)
  c.seed = 0  # task draws, rollout sampling and init
  return c


def _task_worst_case(cfg: ml_collections.ConfigDict) -> int:
  """The most env steps one task's group can take: every episode runs max_steps."""
  return cfg.group_size * cfg.max_steps


def check_config(cfg: ml_collections.ConfigDict) -> None:
  def fail(field: str, why: str) -> None:
    raise ValueError(f"config field 'grpo.{field}' {why} (value {cfg[field]!r})")

  for field in ("tasks_per_iteration", "group_size", "num_iterations", "max_steps", "minibatches", "seq_len",
                "max_new_tokens", "checkpoint_every", "num_tasks"):
    if cfg[field] < 1:
      fail(field, "must be >= 1")
  if cfg.tasks_per_iteration > cfg.num_tasks:
    fail("tasks_per_iteration", f"must be <= grpo.num_tasks={cfg.num_tasks}")
  if cfg.max_new_tokens >= cfg.seq_len:
    fail("max_new_tokens", f"must be < grpo.seq_len={cfg.seq_len} (a row holds a prompt and the response)")
  if not 0 < cfg.clip_eps < 1:
    fail("clip_eps", "must be in (0, 1)")
  for field in ("kl_coef", "invalid_action_penalty", "env_step_budget", "env_workers",
                "micro_batch_rows_per_shard"):
    if cfg[field] < 0:
      fail(field, "must be >= 0")
  if 0 < cfg.env_step_budget < _task_worst_case(cfg):
    fail("env_step_budget", f"holds not one task's group at its worst case (grpo.group_size x grpo.max_steps = "
         f"{_task_worst_case(cfg)} steps): the run would play nothing")
  if cfg.schedule == "cosine" and (cfg.env_step_budget or cfg.budget_from_ledger):
    # The decay spans num_iterations x minibatches optimizer steps; a budget ends the run at an iteration known
    # only as it plays, so the learning rate would stop wherever the budget ran out.
    fail("schedule", "cannot be cosine with an interaction budget (env_step_budget or budget_from_ledger): the "
         "budget, not num_iterations, ends the run; use constant")
  if cfg.temperature < 0:
    fail("temperature", "must be >= 0 (0 = greedy)")
  if not 0 < cfg.top_p <= 1:
    fail("top_p", "must be in (0, 1]")
  train_stage.check_model_fields(cfg, fail)
  train_stage.check_optimizer_fields(cfg, fail)


def episode_turns(episodes, tokenizer, invalid_action_penalty: float):
  """(training turns with their group-normalised advantage, per-iteration stats) from played episodes."""
  from leafe_jax.policy.chat import encode_prompt
  from leafe_jax.train import grpo

  groups: dict[str, list] = {}
  for episode in episodes:
    groups.setdefault(episode.task_id, []).append(episode)
  turns, rewards = [], []
  for group in groups.values():
    reward = [float(e.success) - invalid_action_penalty * e.invalid_actions for e in group]
    rewards += reward
    for episode, advantage in zip(group, grpo.group_advantages(reward), strict=True):
      if advantage == 0.0:
        continue  # no signal (the whole group scored the same): the row would only cost compute
      for messages, completion in episode.turns:
        response = tuple(completion.token_ids)
        if completion.stop_token_id is not None:
          response += (completion.stop_token_id,)
        if response:
          turns.append(grpo.Turn(tuple(encode_prompt(tokenizer, messages)), response, float(advantage)))
  stats = {
      "reward": float(np.mean(rewards)) if rewards else 0.0,
      "success": float(np.mean([e.success for e in episodes])) if episodes else 0.0,
      "successes": sum(e.success for e in episodes),
      "env_steps": sum(e.steps for e in episodes),
      "episodes": len(episodes),
      "invalid_actions": sum(e.invalid_actions for e in episodes),
      "generated_tokens": sum(e.generated_tokens for e in episodes),
      "turns": len(turns),
  }
  return turns, stats


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  """Runs GRPO iterations per `config.grpo`, resuming from `<stage_dir>/checkpoints`; exports `<stage_dir>/hf`."""
  cfg = config[CONFIG_SECTION]
  check_config(cfg)
  import jax
  import jax.numpy as jnp
  import optax
  import transformers
  from tqdm import tqdm

  from leafe_jax import envs, parallel
  from leafe_jax.envs import pooled
  from leafe_jax.eval.rollout import SamplingParams, play_episodes
  from leafe_jax.parallel import distributed
  from leafe_jax.policy.factory import resolve_path
  from leafe_jax.policy.jax_policy import JaxPolicy
  from leafe_jax.train import checkpoint, grpo, metrics, optimizer, targets
  from leafe_jax.train import loss as loss_lib
  from leafe_jax.train import state as state_lib

  # Before anything starts a JAX backend. Process 0 writes the stage's own files (orbax and the export
  # coordinate their own).
  primary = distributed.join(config)
  budget = cfg.env_step_budget
  if cfg.budget_from_ledger:
    budget = ledger_budget(resolve_path(cfg.budget_from_ledger, workdir))
    if budget < _task_worst_case(cfg):
      raise ValueError(f"grpo.budget_from_ledger={cfg.budget_from_ledger!r}: its {budget} steps hold not one task's "
                       f"group at its worst case (grpo.group_size x grpo.max_steps = {_task_worst_case(cfg)})")
  tokenizer_dir = resolve_path(cfg.tokenizer or cfg.init_path, workdir)
  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  env_config = cfg.env_config.to_dict()
  task_pool = envs.make(cfg.env, **env_config).tasks(cfg.split)[: cfg.num_tasks]
  if len(task_pool) < cfg.tasks_per_iteration:
    raise ValueError(f"grpo: {cfg.env!r} split {cfg.split!r} has {len(task_pool)} tasks, fewer than "
                     f"grpo.tasks_per_iteration={cfg.tasks_per_iteration}")

  mesh = parallel.make_mesh(parallel.resolve_mesh_shape(tuple(cfg.mesh), jax.device_count(), field="grpo.mesh"))
  total_steps = cfg.num_iterations * cfg.minibatches
  tx = optimizer.make_optimizer(cfg, total_steps)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
  ckpt = checkpoint.Checkpointer(os.path.join(stage_dir, "checkpoints"), keep=cfg.keep,
                                 async_save=cfg.async_checkpoint)
  latest = ckpt.latest_step()
  # A resumed run continues its checkpoints' optimisation and rollouts: other settings are refused, not mixed.
  stage_settings.check(CONFIG_SECTION, stage_dir, train_stage.resume_settings(cfg, workdir, _FREE_FIELDS, total_steps),
                       has_outputs=latest is not None, write=primary, what="checkpoints")
  # A resumed run restores its params; the initial ones are still needed as the KL reference, if there is one.
  model, init_params, params_sharding = train_stage.model_and_params(
      cfg, workdir, mesh, init_rng, abstract=latest is not None and cfg.kl_coef <= 0)
  state_sharding = state_lib.shardings(tx, init_params, params_sharding, mesh)
  progress = {"iteration": 0, "ledger": {}}
  if latest is None:
    state = jax.jit(lambda p, r: state_lib.create(p, tx, r), out_shardings=state_sharding)(init_params, state_rng)
  else:
    abstract = checkpoint.abstract_like(
        jax.eval_shape(lambda p, r: state_lib.create(p, tx, r), init_params, state_rng), state_sharding)
    state, progress = ckpt.restore(abstract, latest)
  # The KL reference is the initial policy; without a KL term its params are not kept.
  ref_params = init_params if cfg.kl_coef > 0 else None
  del init_params

  apply_fn = lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0]
  batch_sharding = parallel.batch_sharding(mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shards = parallel.batch_shards(mesh)
  logprob_fn = jax.jit(lambda p, b: grpo.token_logprobs(apply_fn, p, b), out_shardings=batch_sharding)
  grad_fn = jax.value_and_grad(grpo.make_policy_loss_fn(apply_fn, cfg.clip_eps, cfg.kl_coef), has_aux=True)
  batch_keys = (*ROW_KEYS, loss_lib.TARGET_INDEX, *grpo.TOKEN_KEYS)
  batch_shardings = dict.fromkeys(batch_keys, batch_sharding)

  # A minibatch is one or more micro-batches of one shape: their gradients (each over the minibatch's token
  # count) are summed in place, then one optimizer step applies them.
  def accumulate(grads, sums, params, batch, count):
    (loss, aux), micro_grads = grad_fn(params, batch, count)
    return jax.tree.map(jnp.add, grads, micro_grads), jax.tree.map(jnp.add, sums, {**aux, "loss": loss})

  def apply_update(state, grads):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), optax.global_norm(grads)

  # On the device as the sums come back, so every pass of a minibatch calls one compiled program.
  zero_sums = {key: distributed.global_from_host(np.float32(0.0), replicated)
               for key in (*grpo.LOSS_METRICS, "loss")}
  zero_grads = jax.jit(lambda p: jax.tree.map(jnp.zeros_like, p), out_shardings=params_sharding)
  jitted_accumulate = jax.jit(accumulate, in_shardings=(params_sharding, replicated, params_sharding,
                                                        batch_shardings, replicated),
                              out_shardings=(params_sharding, replicated), donate_argnums=(0,))
  jitted_apply = jax.jit(apply_update, in_shardings=(state_sharding, params_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  # The schedule counts `minibatches` updates per iteration, taken or not (an iteration without a signal, or with
  # fewer real rows than minibatches, skips some), so warmup and decay follow the iterations the config names.
  jitted_skip = jax.jit(lambda state, steps: state.replace(opt_state=optimizer.advance_schedule(state.opt_state,
                                                                                                steps)),
                        static_argnums=(1,), in_shardings=(state_sharding,), out_shardings=state_sharding,
                        donate_argnums=(0,))
  schedule = optimizer.make_schedule(cfg.lr, cfg.warmup_steps, total_steps, cfg.schedule)
  policy = JaxPolicy(tokenizer_dir, mesh=mesh, max_cache_len=cfg.max_cache_len, model=model, params=state.params,
                     prefill_chunk=cfg.prefill_chunk)
  sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
  writer = metrics.MetricsWriter(os.path.join(stage_dir, "tb"), enabled=primary)
  ledger = dict(progress["ledger"])
  iteration = int(progress["iteration"])
  start_iteration = iteration
  logging.info("grpo: iteration %d of %d, %d tasks x %d episodes per iteration, mesh %s", iteration,
               cfg.num_iterations, cfg.tasks_per_iteration, cfg.group_size, dict(mesh.shape))
  with (tqdm(total=cfg.num_iterations, initial=iteration, desc="grpo", unit="iter", disable=not primary) as bar,
        pooled.env_factory(cfg.env, env_config, cfg.env_workers, cfg.env_step_timeout_s) as make_env):
    while iteration < cfg.num_iterations:
      affordable = tasks_within_budget(budget, ledger.get("env_steps", 0), cfg.group_size, cfg.tasks_per_iteration,
                                       cfg.max_steps)
      if not affordable:
        logging.info("grpo: env step budget %d spent to %d after %d iterations (one more task could take %d)",
                     budget, ledger.get("env_steps", 0), iteration, _task_worst_case(cfg))
        break
      began = time.perf_counter()
      rng = np.random.default_rng([cfg.seed, iteration])
      tasks = [task_pool[i] for i in rng.choice(len(task_pool), cfg.tasks_per_iteration, replace=False)]
      tasks = tasks[:affordable]
      policy.update_params(state.params)
      episodes = play_episodes(policy, make_env, tasks, num_samples=cfg.group_size, max_steps=cfg.max_steps,
                               sampling=sampling, history_length=cfg.history_length,
                               seed=cfg.seed * 1_000_003 + iteration, keep_turns=True)
      turns, stats = episode_turns(episodes, tokenizer, cfg.invalid_action_penalty)
      scalars = {key: float(value) for key, value in stats.items()}
      scalars["lr"] = float(schedule(jax.device_get(optimizer.schedule_count(state.opt_state))))  # its first update's
      updates = 0
      rollout_s = time.perf_counter() - began
      if turns:
        rows, truncated = grpo.build_rows(turns, cfg.seq_len, policy.pad_id, pack=cfg.pack)
        # Padded with empty rows to whole micro-batches (or a bucketed count): few compiled shapes.
        num_real = len(rows["input_ids_BxT"])
        per_minibatch, micro = grpo.rows_per_minibatch(num_real, cfg.minibatches,
                                                          cfg.micro_batch_rows_per_shard * shards, shards)
        rows_needed = per_minibatch * cfg.minibatches
        rows = grpo.pad_rows(rows, rows_needed)
        width = targets.index_width(targets.max_targets_per_row(rows), cfg.seq_len, tuple(cfg.logits_fractions))
        host = grpo.gather_targets(rows, width)
        distributed.check_processes_agree(functools.partial(_fingerprint, host),
                                          f"grpo iteration {iteration + 1}'s rows")
        # Only the log-probs come back to the host, where the minibatches are cut.
        host["old_logprob_BxN"] = _logprobs(logprob_fn, state.params, host, micro, batch_sharding)
        host["ref_logprob_BxN"] = (host["old_logprob_BxN"] if ref_params is None
                                   else _logprobs(logprob_fn, ref_params, host, micro, batch_sharding))
        step_metrics = []
        picks = grpo.minibatch_rows(num_real, rows_needed, cfg.minibatches, rng)
        for pick in picks:
          count = np.float32(host["valid_BxN"][pick].sum())
          grads, sums = zero_grads(state.params), zero_sums
          for first in range(0, per_minibatch, micro):
            micro_batch = _on_device(host, pick[first:first + micro], batch_sharding)
            grads, sums = jitted_accumulate(grads, sums, state.params, micro_batch, count)
          state, grad_norm = jitted_apply(state, grads)
          sums, grad_norm = jax.device_get((sums, grad_norm))  # one host sync per minibatch
          step_metrics.append({**sums, "grad_norm": grad_norm})
          updates += 1
        for key in step_metrics[0]:
          scalars[key] = float(np.mean([m[key] for m in step_metrics]))
        scalars["truncated_prompts"] = float(truncated)
        scalars["rows"] = float(rows_needed)
        scalars["micro_batches"] = float(len(picks) * (per_minibatch // micro))  # forward/backward passes run
      if updates < cfg.minibatches:
        state = jitted_skip(state, cfg.minibatches - updates)
      scalars["updates"] = float(updates)
      scalars["rollout_s"] = rollout_s
      for key in ("env_steps", "episodes", "successes", "invalid_actions", "generated_tokens", "turns"):
        ledger[key] = ledger.get(key, 0) + stats[key]
      iteration += 1
      scalars["iteration_s"] = time.perf_counter() - began
      writer.write(iteration, scalars)
      if primary:
        _append_iteration(stage_dir, iteration, scalars)
      logging.info("grpo: iteration %d/%d %s", iteration, cfg.num_iterations,
                   " ".join(f"{key} {value:.4g}" for key, value in scalars.items()))
      bar.set_postfix(success=f"{scalars['success']:.3f}", env_steps=ledger["env_steps"], refresh=False)
      bar.update(1)
      spent = not tasks_within_budget(budget, ledger["env_steps"], cfg.group_size, 1, cfg.max_steps)  # loop stops
      if iteration % cfg.checkpoint_every == 0 or iteration == cfg.num_iterations or spent:
        ckpt.save(iteration, state, {"iteration": iteration, "ledger": ledger})  # checkpoints keyed by iteration
        if primary:
          _write_ledger(stage_dir, iteration, ledger)
  ckpt.close()
  writer.close()
  if primary:
    _write_ledger(stage_dir, iteration, ledger)
  trained = iteration > start_iteration
  hf_dir = os.path.join(stage_dir, "hf")
  # Re-export only if this invocation trained (a rerun of a finished stage keeps its export).
  if cfg.export_hf and (trained or not os.path.exists(os.path.join(hf_dir, "config.json"))):
    checkpoint.export_hf(model, state.params, tokenizer_dir, hf_dir)


def _on_device(host: dict[str, np.ndarray], pick: np.ndarray, sharding) -> dict:
  """Rows `pick` of a host batch (whole on every process) as global arrays of `sharding`."""
  from leafe_jax.parallel import distributed

  return {key: distributed.global_from_host(value[pick], sharding) for key, value in host.items()}


def _logprobs(logprob_fn, params, host: dict[str, np.ndarray], micro: int, sharding) -> np.ndarray:
  """f32 [R, N] on the host: `logprob_fn` over the host batch's rows, `micro` rows per pass."""
  from leafe_jax.parallel import distributed

  rows = len(host["input_ids_BxT"])
  return np.concatenate([distributed.to_host(logprob_fn(params, _on_device(host, np.arange(start, start + micro),
                                                                           sharding)))
                         for start in range(0, rows, micro)])


def tasks_within_budget(budget: int, env_steps: int, group_size: int, tasks: int, max_steps: int) -> int:
  """How many of an iteration's `tasks` fit in what is left of the budget, each at its worst case (every episode of
  its group runs `max_steps`): the budget is never overshot. 0: not one more task fits, the run ends there.
  No budget (0): all of them."""
  if not budget:
    return tasks
  return min(tasks, max(budget - env_steps, 0) // (group_size * max_steps))


def ledger_budget(path: str) -> int:
  """The interaction an explore stage spent: env steps + replayed steps of its ledger totals. `path` is one
  ledger.json, or an explore stage dir: its ledger.json, or the ledger-shard-*.json of every shard of its sharded
  run, summed (explore.ledger.stage_ledger_files refuses a missing shard and ledgers of two shard counts)."""
  if os.path.isdir(path):
    files = stage_ledger_files(path)
    if not files:
      raise FileNotFoundError(f"grpo.budget_from_ledger: {path} holds no ledger*.json (run the explore stage first)")
  elif os.path.exists(path):
    files = [path]
  else:
    raise FileNotFoundError(f"grpo.budget_from_ledger: {path} does not exist (run the explore stage first)")
  spent = 0
  for file in files:
    with open(file) as f:
      total = json.load(f)["total"]
    spent += int(total.get("env_steps", 0)) + int(total.get("replayed_steps", 0))
  return spent


def _fingerprint(arrays: dict[str, np.ndarray]) -> str:
  """A digest of a host batch (keys, shapes, dtypes, bytes): equal on every process that built the same rows."""
  digest = hashlib.sha256()
  for key in sorted(arrays):
    value = np.ascontiguousarray(arrays[key])
    digest.update(f"{key}{value.shape}{value.dtype}".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _append_iteration(stage_dir: str, iteration: int, scalars: dict) -> None:
  """One JSON line per iteration in `<stage_dir>/iterations.jsonl`; a resumed run rewrites the lines it redoes."""
  path = os.path.join(stage_dir, "iterations.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["iteration"] < iteration]
  rows.append(json.dumps({"iteration": iteration, **scalars}) + "\n")
  durable.write_lines(path, rows)


def _write_ledger(stage_dir: str, iteration: int, ledger: dict) -> None:
  durable.write_json(os.path.join(stage_dir, "ledger.json"), {"iterations": iteration, "total": ledger})
