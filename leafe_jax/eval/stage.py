"""Stage `eval`: Pass@k of one policy on one environment split, from n independent samples per task.

Results are appended per chunk of tasks to `<stage_dir>/outcomes.jsonl` (flushed and fsynced), so a killed
evaluation resumes with the tasks it has no row for (their samples draw as in an uninterrupted run: each from a
seed of its own); `<stage_dir>/results.json` is written when all are done.
With `env_workers` > 0 the envs step in an EnvPool of that many processes; a sample whose env is lost counts as
unsuccessful and in the row's `errors`; a sample whose prompt outgrows the policy's context (`max_cache_len`)
ends there, unsuccessful, and counts in `prompts_too_long` (both totals are in results.json).

With an in-process policy the stage spans the processes of a multi-process launch (a model too large for one
host): every process plays the same samples, the sampler runs on the global mesh, process 0 writes the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import ml_collections
from absl import logging

from leafe_jax import durable, envs, stage_settings
from leafe_jax.envs import pool as pool_lib
from leafe_jax.envs import pooled, prompts
from leafe_jax.eval import passk
from leafe_jax.eval.rollout import SamplingParams, TaskOutcome, run_episodes
from leafe_jax.policy.base import DEFAULT_PREFILL_CHUNK
from leafe_jax.policy.factory import in_process, make_policy

CONFIG_SECTION = "eval"


def spans_processes(cfg: ml_collections.ConfigDict) -> bool:
  """With an in-process policy, one SPMD program over every process of a multi-process launch (main.py)."""
  return in_process(cfg.policy)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "base"  # row label in the results table (Base, GRPO, LEAFE, ...)
  c.model_label = "model"  # column label (the backbone, e.g. Qwen2.5-7B)
  c.policy = "train/hf"  # HF dir relative to workdir, or "openai:<base_url>#<model>"
  c.env = "sokoban"  # registered environment name
  c.env_config = ml_collections.ConfigDict()  # keyword config of the environment (free-form)
  # Env worker processes (an EnvPool; all of a pool's envs step concurrently each tick); 0 = envs in-process.
  c.env_workers = 0
  c.env_step_timeout_s = pool_lib.DEFAULT_STEP_TIMEOUT_S  # a pooled env step slower than this kills its worker
  c.split = "test"  # held-out split; Sokoban test seeds are [2^16, 2^32) as in verl-agent
  c.num_tasks = 500  # paper test-set sizes inferred in paper_notes §3 (Sokoban 500)
  c.num_samples = 128  # n samples per task; paper reports Pass@128 (paper_notes §7)
  c.ks = (1, 8, 16, 128)  # k values reported; each must be <= num_samples
  c.temperature = 0.4  # verl-agent validation temperature (paper_notes §7 [F]); paper's value not found
  c.top_p = 1.0  # nucleus sampling; paper's value not found
  c.max_new_tokens = 512  # verl-agent max_response_length (paper_notes §3 [F])
  c.max_steps = 15  # episode horizon; verl-agent Sokoban max_steps (paper_notes §3 [F])
  c.history_length = prompts.DEFAULT_HISTORY_LENGTH  # (observation, action) pairs shown in the prompt
  c.tasks_per_chunk = 16  # tasks per resumable chunk (results are saved after each)
  # Episodes alive at once (each holds an env: a ScienceWorld env is a JVM); the rest of the chunk's
  # tasks x num_samples wait and start as others finish. 0 = the whole chunk at once (one big batch per tick).
  c.max_live_episodes = 0
  c.max_cache_len = 4096  # KV-cache length of the in-process sampler
  c.prefill_chunk = DEFAULT_PREFILL_CHUNK  # prompt positions per prefill step of the in-process sampler (memory)
  # In-process sampler placement: (data, fsdp, tensor) device counts, one -1 = the rest; () = one device.
  # (1, 1, -1) splits a large model's heads and MLP over every device (tensor parallel decoding).
  c.policy_mesh = ()
  c.policy_dtype = "float32"  # parameter and compute dtype of the in-process sampler ("bfloat16" on TPU/GPU)
  c.playbook = ""  # an ace stage's playbook.json (relative to workdir) shown in every action prompt; "" = none
  c.seed = 0  # sampling seed
  return c


# Fields a rerun may change: labels, where or how fast the samples are played (a sample's draws are its own:
# eval/rollout.py), and the k values reported from them; not which samples are drawn.
_FREE_FIELDS = ("method", "model_label", "env_workers", "env_step_timeout_s", "policy_mesh", "ks",
                "tasks_per_chunk", "max_live_episodes", "prefill_chunk")


# How samples are seeded (eval/rollout.py), recorded with the settings: outcomes written before the marker drew
# with one seed per policy call, so an eval left unfinished then is refused rather than completed with other
# random numbers (a finished one still reports, nothing is sampled again).
SEEDING = "per_prompt"
_SEEDING_BEFORE_THE_MARKER = "per_call"


def sampling_settings(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """What the outcomes depend on: every field but the free ones, the in-process policy's weights, and the text
  of the ACE playbook every action prompt shows (a re-learned playbook keeps its path)."""
  from leafe_jax.policy.factory import resolve_path, weights_fingerprint

  inputs = {}
  if in_process(cfg.policy):
    inputs["policy_weights"] = weights_fingerprint(cfg.policy, workdir)
  if cfg.playbook:
    inputs["playbook_text"] = hashlib.sha256((_playbook_text(resolve_path(cfg.playbook, workdir)) or "").encode()
                                             ).hexdigest()
  return stage_settings.of_section(cfg, _FREE_FIELDS, seeding=SEEDING, **inputs)


def _playbook_text(path: str) -> str | None:
  """The rendered ACE playbook of an ace stage's playbook.json (None when it has no bullets)."""
  from leafe_jax.baselines.ace import load_playbook

  return load_playbook(path).render() or None


def _load_done(path: str) -> dict[str, dict]:
  done: dict[str, dict] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          row = json.loads(line)
          done[row["task_id"]] = row
  return done


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Value checks of an eval section that need no files (`main.plan` runs them before any stage starts)."""
  for field in ("tasks_per_chunk", "num_samples"):
    if cfg[field] < 1:
      raise ValueError(f"config field 'eval.{field}' must be >= 1, got {cfg[field]}")
  if not cfg.ks or min(cfg.ks) < 1:
    raise ValueError(f"config field 'eval.ks' must list k >= 1, got {tuple(cfg.ks)}")
  if max(cfg.ks) > cfg.num_samples:
    raise ValueError(f"eval.ks {tuple(cfg.ks)} has k > eval.num_samples={cfg.num_samples}")
  if cfg.env not in envs.names():
    raise ValueError(f"config field 'eval.env' {cfg.env!r} is not a registered environment: {envs.names()}")
  if cfg.env_workers < 0:
    raise ValueError(f"config field 'eval.env_workers' must be >= 0, got {cfg.env_workers}")


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  cfg = config.eval
  check_config(cfg)
  spans = spans_processes(cfg)
  primary = True  # writes the files; every process of a multi-process launch plays the same samples
  if spans:
    from leafe_jax.parallel import distributed

    primary = distributed.join(config)
  os.makedirs(stage_dir, exist_ok=True)
  env_config = cfg.env_config.to_dict()
  task_ids = envs.make(cfg.env, **env_config).tasks(cfg.split)[: cfg.num_tasks]
  if not task_ids:
    raise ValueError(f"eval: environment {cfg.env!r} split {cfg.split!r} has no tasks")
  outcomes_path = os.path.join(stage_dir, "outcomes.jsonl")
  if primary:
    durable.cut_torn_tail(outcomes_path)  # the row a kill cut short is redone
  if spans:
    distributed.barrier("eval: outcomes repaired")  # then every process reads the same finished chunks
  done = _load_done(outcomes_path)
  # A task's samples draw from seeds of their own (eval/rollout.py), so only the missing tasks are played, in
  # chunks of any size, and they play as in an uninterrupted run.
  missing = [t for t in task_ids if t not in done]
  unrecorded_seeding = _SEEDING_BEFORE_THE_MARKER if missing else SEEDING
  stage_settings.check("eval", stage_dir, sampling_settings(cfg, workdir), has_outputs=bool(done), write=primary,
                       what="outcomes", added_fields={"seeding": unrecorded_seeding})
  todo = [missing[i : i + cfg.tasks_per_chunk] for i in range(0, len(missing), cfg.tasks_per_chunk)]
  logging.info("eval %s: %d tasks, %d done, n=%d", cfg.method, len(task_ids), len(done), cfg.num_samples)
  if todo:
    from tqdm import tqdm

    policy = make_policy(cfg.policy, workdir, max_cache_len=cfg.max_cache_len, mesh_shape=tuple(cfg.policy_mesh),
                         dtype=cfg.policy_dtype, field="eval.policy", prefill_chunk=cfg.prefill_chunk)
    sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    playbook = None
    if cfg.playbook:
      from leafe_jax.policy.factory import resolve_path

      playbook = _playbook_text(resolve_path(cfg.playbook, workdir))
    remaining = len(missing)
    with (open(outcomes_path, "a") if primary else contextlib.nullcontext() as out,
          tqdm(total=remaining, desc=f"eval {cfg.method}", unit="task", disable=not primary) as bar,
          pooled.env_factory(cfg.env, env_config, cfg.env_workers, cfg.env_step_timeout_s) as make_env):
      for chunk in todo:
        outcomes: list[TaskOutcome] = run_episodes(
            policy,
            make_env,
            chunk,
            num_samples=cfg.num_samples,
            max_steps=cfg.max_steps,
            sampling=sampling,
            history_length=cfg.history_length,
            seed=cfg.seed,
            max_live=cfg.max_live_episodes,
            playbook=playbook,
        )
        rows = [{"task_id": o.task_id, "n": o.n, "c": o.c, "steps": list(o.steps), "errors": o.errors,
                 "prompts_too_long": o.prompts_too_long} for o in outcomes]
        done.update((row["task_id"], row) for row in rows)
        if primary:
          out.write("".join(json.dumps(row) + "\n" for row in rows))  # one write per chunk
          out.flush()
          os.fsync(out.fileno())
        bar.update(len(chunk))
  n = [done[t]["n"] for t in task_ids]
  c = [done[t]["c"] for t in task_ids]
  results = {
      "method": cfg.method,
      "model": cfg.model_label,
      "env": cfg.env,
      "split": cfg.split,
      "num_samples": cfg.num_samples,
      "pass_at": {str(k): float(passk.pass_at_k(n, c, k).mean()) for k in cfg.ks},
      "tasks": {t: {"n": done[t]["n"], "c": done[t]["c"]} for t in task_ids},
      # Unsuccessful samples that were cut short rather than failed by the policy (rows written before this
      # counter existed have none).
      "errors": sum(done[t].get("errors", 0) for t in task_ids),
      "prompts_too_long": sum(done[t].get("prompts_too_long", 0) for t in task_ids),
  }
  if primary:
    durable.write_json(os.path.join(stage_dir, "results.json"), results)
  logging.info("eval %s: %s", cfg.method, results["pass_at"])
