"""Stage `ace`: the ACE baseline's playbook (baselines/ace.py), evolved over training tasks with a fixed policy.

Tasks are played in batches of `tasks_per_batch` (one episode each, the playbook in every action prompt); each
finished episode is reflected on, the batch's lessons are curated into new bullets, and the state (playbook,
batches done, counters) is replaced atomically in `<stage_dir>/playbook.json` after every batch, so a killed run
resumes at the next batch. `<stage_dir>/playbook.txt` is the rendered playbook. Evaluate with the eval stage's
`playbook` field pointing at playbook.json (`ace.load_playbook`) (the paper applies ACE to the GRPO model).
"""

from __future__ import annotations

import collections
import json
import os

import ml_collections
from absl import logging

from leafe_jax import durable, envs, stage_settings
from leafe_jax.baselines import ace
from leafe_jax.envs import pool as pool_lib
from leafe_jax.envs import pooled
from leafe_jax.eval.rollout import SamplingParams, play_episodes
from leafe_jax.policy.base import DEFAULT_PREFILL_CHUNK

CONFIG_SECTION = "ace"


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.env = "sokoban"  # registered environment
  c.env_config = ml_collections.ConfigDict()  # its keyword config (free-form); match explore / eval
  c.env_workers = 0  # env worker processes (EnvPool); 0 = envs in-process
  c.env_step_timeout_s = pool_lib.DEFAULT_STEP_TIMEOUT_S  # a pooled env step slower than this kills its worker
  c.split = "train"  # the playbook is learned on training tasks only
  c.num_tasks = 256  # first n tasks of the split
  c.num_epochs = 1  # passes over those tasks
  c.tasks_per_batch = 16  # episodes per curation step (one batched reflector call, one curator call)
  c.policy = "models/grpo"  # generator, reflector and curator: HF dir relative to workdir, or openai:<url>#<model>
  c.max_cache_len = 8192  # KV-cache length of the in-process sampler (reflector prompts hold a trajectory)
  c.prefill_chunk = DEFAULT_PREFILL_CHUNK  # prompt positions per prefill step of the in-process sampler (memory)
  c.policy_mesh = ()  # in-process sampler placement (data, fsdp, tensor); () = one device
  c.policy_dtype = "float32"  # parameter and compute dtype of the in-process sampler ("bfloat16" on TPU/GPU)
  c.max_bullets = 100  # playbook cap; append-only (the LEAFE authors' ACE runs, as a note reports)
  c.max_steps = 15  # episode horizon; match eval
  c.history_length = 2  # (observation, action) pairs in the action prompt; match eval
  c.reflected_steps = 20  # last steps of an episode shown to the reflector
  c.temperature = 1.0  # generator sampling temperature while learning the playbook
  c.top_p = 1.0  # nucleus sampling
  c.max_new_tokens = 512  # generator response budget
  c.reflection_temperature = 0.7  # reflector and curator sampling temperature (ACE does not fix one here)
  c.reflection_max_new_tokens = 512  # reflector and curator response budget
  c.seed = 0  # sampling seed
  return c


# Fields a rerun may change: where and how fast episodes are played, and more epochs over the same tasks (the
# batches done are the first ones of a longer run).
_FREE_FIELDS = ("env_workers", "env_step_timeout_s", "policy_mesh", "prefill_chunk", "num_epochs")


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Value checks of `config.ace` that need no files (main.plan runs them before any stage)."""
  if cfg.tasks_per_batch < 1 or cfg.num_epochs < 1 or cfg.max_bullets < 1:
    raise ValueError("config fields 'ace.tasks_per_batch', 'ace.num_epochs' and 'ace.max_bullets' must be >= 1")


def run_with_policy(config: ml_collections.ConfigDict, stage_dir: str, policy, *,
                    policy_weights: str | None = None) -> ace.Playbook:
  """Evolves the playbook with `policy`; returns it (also saved in stage_dir).

  `policy`: a Policy, or a zero-argument function that makes one, called only if a batch is left (a rerun of a
  finished stage loads no model). `policy_weights`: the fingerprint of an in-process policy's weights: a
  playbook evolved with other weights, or other settings, is refused (stage_settings).
  """
  cfg = config.ace
  check_config(cfg)
  env_config = cfg.env_config.to_dict()
  tasks = envs.make(cfg.env, **env_config).tasks(cfg.split)[: cfg.num_tasks]
  if not tasks:
    raise ValueError(f"ace: split {cfg.split!r} of {cfg.env!r} has no tasks")
  order = [t for _ in range(cfg.num_epochs) for t in tasks]
  batches = [order[i:i + cfg.tasks_per_batch] for i in range(0, len(order), cfg.tasks_per_batch)]
  os.makedirs(stage_dir, exist_ok=True)
  state_path = os.path.join(stage_dir, "playbook.json")
  state = {"playbook": ace.Playbook().to_json(), "batches_done": 0, "stats": {}}
  if os.path.exists(state_path):
    with open(state_path) as f:
      state = json.load(f)
  # More epochs extend the run only when no batch straddles two epochs (else the last batch of the shorter run
  # is not a batch of the longer one, and the longer run's next tasks would be skipped).
  free = _FREE_FIELDS if len(tasks) % cfg.tasks_per_batch == 0 else tuple(f for f in _FREE_FIELDS
                                                                          if f != "num_epochs")
  settings = stage_settings.of_section(cfg, free, policy_weights=policy_weights)
  stage_settings.check("ace", stage_dir, settings, has_outputs=state["batches_done"] > 0, what="playbook batches")
  playbook = ace.Playbook.from_json(state["playbook"])
  stats = collections.Counter(state["stats"])
  logging.info("ace: %d batches, %d done, %d bullets", len(batches), state["batches_done"], len(playbook.bullets))
  sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
  if state["batches_done"] < len(batches):
    from tqdm import tqdm

    if not hasattr(policy, "generate"):
      policy = policy()
    with (tqdm(total=len(batches), initial=state["batches_done"], desc="ace", unit="batch") as bar,
          pooled.env_factory(cfg.env, env_config, cfg.env_workers, cfg.env_step_timeout_s) as make_env):
      for index in range(state["batches_done"], len(batches)):
        # Generator: each task of the batch once, with the playbook as it stands.
        episodes = play_episodes(policy, make_env, batches[index], num_samples=1, max_steps=cfg.max_steps,
                                 sampling=sampling, history_length=cfg.history_length,
                                 seed=cfg.seed * 1_000_003 + index, playbook=playbook.render() or None)
        stats["episodes"] += len(episodes)
        stats["successes"] += sum(e.success for e in episodes)
        # Reflector: one call over the batch's episodes.
        prompts = [ace.reflector_messages(e.instruction, e.history, e.success, playbook, cfg.reflected_steps)
                   for e in episodes]
        replies = policy.generate(prompts, n=1, temperature=cfg.reflection_temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.reflection_max_new_tokens, seed=cfg.seed + index)
        lessons = []
        for (reply, *_) in replies:
          parsed = ace.parse_reflection(reply.text)
          if parsed is None:
            stats["unparsable_reflections"] += 1
            continue
          tags, lesson = parsed
          playbook.tag(tags)
          lessons += [lesson] if lesson else []
        # Curator: the batch's lessons -> new bullets, merged deterministically.
        if lessons:
          (reply, *_), = policy.generate([ace.curator_messages(lessons, playbook)], n=1,
                                         temperature=cfg.reflection_temperature, top_p=cfg.top_p,
                                         max_new_tokens=cfg.reflection_max_new_tokens, seed=cfg.seed + index)
          contents = ace.parse_curation(reply.text)
          if contents is None:
            stats["unparsable_curations"] += 1
          else:
            stats["bullets_added"] += playbook.add(contents, cfg.max_bullets)
        stats["reflector_calls"] += 1
        stats["curator_calls"] += bool(lessons)
        durable.write_json(state_path,
                           {"playbook": playbook.to_json(), "batches_done": index + 1, "stats": dict(stats)})
        with open(os.path.join(stage_dir, "playbook.txt"), "w") as f:
          f.write(playbook.render() + "\n")
        bar.update(1)
  logging.info("ace: %d bullets; %s", len(playbook.bullets), json.dumps(dict(stats), sort_keys=True))
  return playbook


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  from leafe_jax.policy.factory import make_policy, weights_fingerprint

  cfg = config.ace
  check_config(cfg)  # before loading a model
  weights = weights_fingerprint(cfg.policy, workdir)
  run_with_policy(config, stage_dir, lambda: make_policy(
      cfg.policy, workdir, max_cache_len=cfg.max_cache_len, mesh_shape=tuple(cfg.policy_mesh),
      dtype=cfg.policy_dtype, field="ace.policy", prefill_chunk=cfg.prefill_chunk), policy_weights=weights)
