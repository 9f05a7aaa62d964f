"""Stage `early_experience`: the Early Experience baseline's data (records of kinds sft, iwm, sr).

Tasks are processed in groups of `tasks_per_shard`; a group's records become one durable record shard, then its
task ids are appended to `<stage_dir>/done-<i>-of-<n>.jsonl`. A killed run resumes by skipping every task that has
a durable record or a done line, so nothing is lost or duplicated (`stats.json` may miss the counts of the one
group a kill interrupted between its shard and its stats). Host i of n (`shard = "i/n"`) takes every
n-th task and writes with its own writer id. Training follows the EE recipes with the `train` stage:

- IWM: `train` on kinds ("iwm",) for 1 epoch, then `train` from that checkpoint on kinds ("sft",);
- SR: `train` on kinds ("sft", "sr") (expert and reflection data mixed);
- IL (the EE paper's imitation row): `train` on kinds ("sft",).
"""

from __future__ import annotations

import glob
import json
import os

import ml_collections
from absl import logging

from leafe_jax import durable, envs, stage_settings
from leafe_jax.baselines.early_experience import Builder, EnvRunner, Settings
from leafe_jax.envs.base import ExpertEnv
from leafe_jax.explore.stage import parse_shard
from leafe_jax.policy.base import DEFAULT_PREFILL_CHUNK

CONFIG_SECTION = "early_experience"
# A group's records are made durable together by finish_shard(); the writer must never roll a shard mid-group.
_UNBOUNDED_SHARD = 1 << 40
# Fields a rerun may change: where and how much is built, not how (the tasks of a group share a policy call, so
# tasks_per_shard stays a setting).
_FREE_FIELDS = ("env_workers", "policy_mesh", "prefill_chunk", "shard", "num_tasks")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.env = "sokoban"  # registered environment with an expert (gold_actions): sokoban, alfworld, scienceworld
  c.env_config = ml_collections.ConfigDict()  # its keyword config (free-form); match explore/eval
  # Env worker processes for the expert plays and the rollbacks (reset + replay costs O(K·N²) steps per
  # trajectory of N states); 0 = the env in-process.
  c.env_workers = 0
  c.split = "train"  # expert states come from training tasks only
  c.num_tasks = 256  # tasks (first n of the split) whose expert trajectories are used
  c.methods = ("iwm", "sr")  # which EE data to build besides the expert (sft) turns
  c.iwm_alternatives = 8  # non-expert actions per state for IWM (EE paper §B.1, ALFWorld: 8; ScienceWorld: 3)
  c.sr_alternatives = 3  # policy-proposed alternatives per state for SR (EE paper: K = 3)
  # The initial policy (EE: the model being trained proposes and reflects): HF dir relative to workdir, or
  # "openai:<base_url>#<model>". Loaded only when "sr" is in methods.
  c.policy = "models/base"
  c.tokenizer = ""  # HF tokenizer dir for the records, relative to workdir; empty = the policy's HF dir
  c.max_cache_len = 4096  # KV-cache length of the in-process sampler
  c.prefill_chunk = DEFAULT_PREFILL_CHUNK  # prompt positions per prefill step of the in-process sampler (memory)
  c.policy_mesh = ()  # in-process sampler placement (data, fsdp, tensor); () = one device
  c.policy_dtype = "float32"  # parameter and compute dtype of the in-process sampler ("bfloat16" on TPU/GPU)
  c.history_length = 2  # (observation, action) pairs in prompts; match explore.history_length and eval
  c.proposal_temperature = 1.0  # EE: alternatives sampled from the policy at temperature 1.0
  c.reflection_temperature = 1.0  # EE does not give it
  c.top_p = 1.0  # nucleus sampling for proposals and reflections
  c.max_new_tokens = 512  # proposal budget (an action turn; verl-agent max_response_length)
  c.reflection_max_new_tokens = 512  # reflection budget (EE reflections are ~120 words)
  c.il_response_template = "<action>{action}</action>"  # assistant text of an expert (sft) turn
  c.sr_response_template = "<think>\n{reflection}\n</think>\n<action>{action}</action>"  # c_i ∘ a_i
  c.require_expert_conclusion = True  # EE: drop reflections whose concluded action is not the expert's
  c.tasks_per_shard = 64  # tasks per durable record shard (and per batched policy call)
  c.shard = "0/1"  # "i/n": this host takes every n-th task starting at i
  c.seed = 0  # alternative sampling and policy sampling
  return c


def settings_of(cfg: ml_collections.ConfigDict) -> Settings:
  return Settings(
      methods=tuple(cfg.methods), iwm_alternatives=cfg.iwm_alternatives, sr_alternatives=cfg.sr_alternatives,
      history_length=cfg.history_length, proposal_temperature=cfg.proposal_temperature,
      reflection_temperature=cfg.reflection_temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
      reflection_max_new_tokens=cfg.reflection_max_new_tokens, il_response_template=cfg.il_response_template,
      sr_response_template=cfg.sr_response_template, require_expert_conclusion=cfg.require_expert_conclusion,
      seed=cfg.seed)


def _done_tasks(done_path: str, records_dir: str, writer_id: str) -> set[str]:
  """Tasks finished by an earlier run: a done line, or a record in one of this writer's finished shards."""
  from leafe_jax.data import records

  done = set()
  if os.path.exists(done_path):
    with open(done_path) as f:
      for line in f:
        if line.endswith("\n"):  # a line cut by a kill is not a finished task
          done.add(json.loads(line)["task_id"])
  for path in records.finished_shards(records_dir, writer_id):  # listed in the manifest or about to be adopted
    for raw in records.iter_serialized(path):
      done.add(records.from_example(raw).task_id)
  return done


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Value checks of `config.early_experience` that need no files (main.plan runs them before any stage)."""
  parse_shard(cfg.shard, field="early_experience.shard")
  if cfg.tasks_per_shard < 1:
    raise ValueError(f"config field 'early_experience.tasks_per_shard' must be >= 1, got {cfg.tasks_per_shard}")
  if cfg.env_workers < 0:
    raise ValueError(f"config field 'early_experience.env_workers' must be >= 0, got {cfg.env_workers}")


def run_with_policy(config: ml_collections.ConfigDict, stage_dir: str, policy, tokenizer, *,
                    policy_weights: str | None = None) -> dict:
  """Builds the configured tasks' records with `policy`; returns the stats.

  `policy`: a Policy, None when no method needs one, or a zero-argument function that makes one, called only if
  a task is left (a rerun of a finished stage loads no model). `policy_weights`: the fingerprint of an
  in-process policy's weights: records made with other weights, or other settings, are refused (stage_settings).
  """
  from tqdm import tqdm

  from leafe_jax.data import records
  from leafe_jax.policy.chat import encode_turns

  cfg = config.early_experience
  check_config(cfg)
  index, count = parse_shard(cfg.shard, field="early_experience.shard")
  env = envs.make(cfg.env, **cfg.env_config.to_dict())
  if not isinstance(env, ExpertEnv):
    raise ValueError(f"early_experience.env {cfg.env!r} has no expert (gold_actions); the baseline needs one")
  tasks = env.tasks(cfg.split)[: cfg.num_tasks][index::count]
  if not tasks:
    raise ValueError(f"early_experience: split {cfg.split!r} of {cfg.env!r} gives no tasks for shard {cfg.shard}")
  os.makedirs(stage_dir, exist_ok=True)
  records_dir = os.path.join(stage_dir, "records")
  writer_id = f"ee{index}"
  done_path = os.path.join(stage_dir, f"done-{index}-of-{count}.jsonl")
  stats_path = os.path.join(stage_dir, "stats.json" if count == 1 else f"stats-{index}-of-{count}.json")
  durable.cut_torn_tail(done_path)  # else the next line would be appended to a torn one
  done = _done_tasks(done_path, records_dir, writer_id)
  fingerprint = records.tokenizer_fingerprint(tokenizer)
  # Any shard's finished tasks count: hosts of one stage dir build with one set of settings.
  done_files = [f for f in glob.glob(os.path.join(stage_dir, "done-*.jsonl")) if os.path.getsize(f)]
  has_outputs = bool(done) or bool(done_files)
  # `shard` is free as placement, not its count: shards of another count have other writer ids and done files,
  # so every task would be built again beside its first records.
  for path in done_files:
    if not path.endswith(f"-of-{count}.jsonl"):
      raise ValueError(f"early_experience: {path} lists tasks done by shards of another count, but "
                       f"early_experience.shard is {cfg.shard!r} (shard count changed): keep the stage dir's shard "
                       "count, or move that folder away to build again")
  settings = stage_settings.of_section(cfg, _FREE_FIELDS, policy_weights=policy_weights,
                                       tokenizer_fingerprint=fingerprint)
  stage_settings.check("early_experience", stage_dir, settings, has_outputs=has_outputs, what="records")
  todo = [t for t in tasks if t not in done]
  logging.info("early_experience: %d tasks in shard %s, %d already done", len(tasks), cfg.shard, len(done))
  if todo and callable(policy) and not hasattr(policy, "generate"):
    policy = policy()
  runner = EnvRunner(env, cfg.env, cfg.env_config.to_dict(), cfg.env_workers)
  builder = Builder(env, policy, settings_of(cfg), runner)
  if os.path.exists(stats_path):
    with open(stats_path) as f:
      builder.stats.update(json.load(f))
  with (runner,
        records.RecordWriter(records_dir, tokenizer_fingerprint=fingerprint, config_json=json.dumps(cfg.to_dict()),
                             shard_size=_UNBOUNDED_SHARD, writer_id=writer_id) as writer,
        tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="early experience", unit="task") as bar,
        open(done_path, "a") as done_log):
    for start in range(0, len(todo), cfg.tasks_per_shard):
      group = todo[start:start + cfg.tasks_per_shard]
      examples = builder.build(group)
      encoded = encode_turns(tokenizer, [(ex.messages, ex.response) for ex in examples])
      for ex, (input_ids, loss_mask) in zip(examples, encoded, strict=True):
        writer.write(records.CorrectionRecord(
            input_ids=input_ids, loss_mask=loss_mask, kind=ex.kind, env=cfg.env, task_id=ex.task_id,
            tree_id=ex.task_id, step=ex.step, messages_json=json.dumps(ex.messages), tokenizer=fingerprint))
      writer.finish_shard()
      for task_id in group:
        done_log.write(json.dumps({"task_id": task_id}) + "\n")
      done_log.flush()
      os.fsync(done_log.fileno())
      durable.write_json(stats_path, dict(builder.stats), sort_keys=True)
      bar.update(len(group))
  logging.info("early_experience: %s", json.dumps(dict(builder.stats), sort_keys=True))
  return dict(builder.stats)


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  from transformers import AutoTokenizer

  from leafe_jax.policy.factory import make_policy, resolve_path, weights_fingerprint

  cfg = config.early_experience
  check_config(cfg)  # before loading a model
  if cfg.policy.startswith("openai:") and not cfg.tokenizer:
    raise ValueError("early_experience.tokenizer must name a HF tokenizer dir when the policy is a server")
  policy, weights = None, None
  if "sr" in cfg.methods:  # only self-reflection samples from the policy
    policy = lambda: make_policy(cfg.policy, workdir, max_cache_len=cfg.max_cache_len,
                                 mesh_shape=tuple(cfg.policy_mesh), dtype=cfg.policy_dtype,
                                 field="early_experience.policy", prefill_chunk=cfg.prefill_chunk)
    weights = weights_fingerprint(cfg.policy, workdir)
  tokenizer_dir = resolve_path(cfg.tokenizer or cfg.policy, workdir)
  run_with_policy(config, stage_dir, policy, AutoTokenizer.from_pretrained(tokenizer_dir), policy_weights=weights)
