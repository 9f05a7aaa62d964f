"""Stage `expert_data`: warm-up SFT records for a policy trained from scratch (the CPU demo).

From noisy-expert Sokoban trajectories (baselines/sokoban_expert.py) it writes three kinds of `sft` examples,
all rendered through the same prompt builders the explorer uses, so the warm policy can take part in LEAFE:

1. acting: every turn of every trajectory (mistakes included, so the policy is imperfect on purpose; with
   `acting_in_lost_states` off, not the random moves of states the solver already calls lost);
2. acting with experience: at fatal steps, the action prompt with e = "avoid <bad action>" -> the solver's action
   (teaches the policy to use e, the contextual intervention of a'_tau ~ pi(.|h_tau, q, e)); optionally also
   e = "avoid <the solver's action>" -> the best other move, where e changes the answer the grid alone gives;
3. reflecting: for failed trajectories, the reflection prompt -> <rollback_step>fatal step</rollback_step>
   <experience>avoid <bad action></experience>.

It also trains the tokenizer (byte-level BPE) on that text when `tokenizer_vocab_size` > 0. Outputs:
`<stage_dir>/tokenizer` (HF tokenizer dir) and `<stage_dir>/records` (correction records). A finished stage
leaves `<stage_dir>/DONE`; an unfinished one is redone from scratch on rerun (it is deterministic and fast).
"""

from __future__ import annotations

import json
import os
import random
import shutil

import ml_collections
from absl import logging

from leafe_jax import envs, stage_settings
from leafe_jax.baselines.sokoban_expert import ExpertTrajectory, best_other_action, noisy_expert_trajectory, replay_to
from leafe_jax.baselines.tiny_tokenizer import train_tokenizer
from leafe_jax.envs.prompts import build_action_prompt
from leafe_jax.explore import reflection
from leafe_jax.policy.chat import encode_turns

CONFIG_SECTION = "expert_data"
_FREE_FIELDS = ("shard_size",)  # how the records are split into files, not which records
# Recorded settings that predate a field ran with this value.
_ADDED_FIELDS = {"end_on_irreversible": False, "acting_in_lost_states": True,
                 "overriding_experience_examples_per_task": 0}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.env = "sokoban"  # only Sokoban has an exact solver to act as the expert
  c.env_config = ml_collections.ConfigDict()  # SokobanEnv keyword config (free-form); match explore.env_config
  c.split = "train"  # expert tasks come from the training seeds, never the held-out ones
  c.num_tasks = 2000  # rooms played by the noisy expert
  c.trajectories_per_task = 2  # noisy-expert episodes per room
  c.mistake_prob = 0.15  # chance the expert plays a non-solver action at a step (makes the policy imperfect)
  # End an expert episode at its first deadlock, as the explorer's "irreversible" failure signal ends a rollout:
  # the reflection examples then show the trajectories the policy reflects on (fatal step = the last push), and
  # no acting example is a random move after a deadlock (rooms lost to the step limit still have them).
  c.end_on_irreversible = False
  # Acting examples of states the solver already calls lost (no solution in the steps left), where the expert's
  # moves are random: off, the policy imitates only moves made while the room could still be solved.
  c.acting_in_lost_states = True
  c.experience_examples_per_task = 1  # extra "avoid X" -> solver action examples at random on-plan states
  # Extra "avoid <solver action>" -> best other move examples at random on-plan states. In the examples above the
  # grid alone already gives the answer, so a small policy learns to ignore e; here e overrides it.
  c.overriding_experience_examples_per_task = 0
  c.history_length = 0  # (observation, action) pairs in the action prompt; match explore.history_length
  # Copies of each reflection example: reflections are ~1 in 15 examples, and a from-scratch model trained on
  # that mix keeps answering the reflection prompt with an action.
  c.reflection_repeats = 1
  c.response_template = "<action>{action}</action>"  # the assistant text of an acting turn
  c.experience_template = "avoid {action}"  # experience e that names the fatal action
  c.tokenizer = ""  # existing HF tokenizer dir (relative to workdir); empty = train one (below)
  c.tokenizer_vocab_size = 512  # byte-level BPE vocabulary when training a tokenizer
  c.tokenizer_max_length = 1024  # model_max_length saved with the tokenizer
  c.shard_size = 4096  # records per TFRecord shard
  c.seed = 0  # which mistakes are injected
  return c


def _acting_messages(env, cfg, turns, index: int, experience: str | None):
  turn = turns[index]
  history = [(t.observation, t.action) for t in turns[:index]]
  return build_action_prompt(
      env,
      instruction=env.instruction,
      history=history,
      current_observation=turn.observation,
      admissible_actions=env.admissible_actions(),
      step_count=index,
      history_length=cfg.history_length,
      experience=experience,
  )


def build_examples(env, cfg, trajectory: ExpertTrajectory, rng: random.Random) -> list[tuple[list, str, str]]:
  """(messages, response, experience) examples of one trajectory; experience is "" when not in the prompt."""
  turns = trajectory.turns
  respond = lambda action: cfg.response_template.format(action=action)
  examples = [(_acting_messages(env, cfg, turns, i, None), respond(t.action), "") for i, t in enumerate(turns)
              if cfg.acting_in_lost_states or t.optimal_action is not None]
  on_plan = [i for i, t in enumerate(turns) if t.optimal_action is not None]
  picks = rng.sample(on_plan, min(cfg.experience_examples_per_task, len(on_plan)))
  for i in picks:
    bad = rng.choice([a for a in env.admissible_actions() if a != turns[i].optimal_action])
    e = cfg.experience_template.format(action=bad)
    examples.append((_acting_messages(env, cfg, turns, i, e), respond(turns[i].optimal_action), e))
  if cfg.overriding_experience_examples_per_task:
    for i in rng.sample(on_plan, min(cfg.overriding_experience_examples_per_task, len(on_plan))):
      replay_to(env, trajectory, i)
      other = best_other_action(env, avoid=turns[i].optimal_action)
      if other is not None:
        e = cfg.experience_template.format(action=turns[i].optimal_action)
        examples.append((_acting_messages(env, cfg, turns, i, e), respond(other), e))
  if trajectory.fatal_step is not None:
    fatal = turns[trajectory.fatal_step - 1]
    e = cfg.experience_template.format(action=fatal.action)
    if fatal.optimal_action is not None:
      examples.append(
          (_acting_messages(env, cfg, turns, trajectory.fatal_step - 1, e), respond(fatal.optimal_action), e)
      )
    if not trajectory.success:
      messages = reflection.build_reflection_prompt(
          env,
          instruction=env.instruction,
          steps=[(t.observation, t.action) for t in turns],
          final_observation=trajectory.final_observation,  # as the explorer's reflection prompt shows it
          outcome="failure",
      )
      examples += [(messages, reflection.format_reflection(trajectory.fatal_step, e), "")] * cfg.reflection_repeats
  return examples


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Value checks of `config.expert_data` that need no files (main.plan runs them before any stage)."""
  if cfg.env != "sokoban":
    raise ValueError(f"expert_data.env is {cfg.env!r}; only 'sokoban' has a built-in expert (the solver)")


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  from transformers import AutoTokenizer

  from leafe_jax.data import records

  cfg = config.expert_data
  check_config(cfg)
  source_tokenizer = (cfg.tokenizer if os.path.isabs(cfg.tokenizer) else os.path.join(workdir, cfg.tokenizer)
                      if cfg.tokenizer else "")
  inputs = {}
  if source_tokenizer and os.path.isdir(source_tokenizer):
    inputs["tokenizer_files"] = stage_settings.files_fingerprint(
        [os.path.join(source_tokenizer, n) for n in os.listdir(source_tokenizer)], source_tokenizer)
  settings = stage_settings.of_section(cfg, _FREE_FIELDS, **inputs)
  done = os.path.exists(os.path.join(stage_dir, "DONE"))
  if done:
    stage_settings.check("expert_data", stage_dir, settings, has_outputs=True, what="records and tokenizer",
                         added_fields=_ADDED_FIELDS)
    logging.info("expert_data: %s is complete, skipping", stage_dir)
    return
  shutil.rmtree(stage_dir, ignore_errors=True)
  stage_settings.check("expert_data", stage_dir, settings, has_outputs=False)
  env = envs.make(cfg.env, **cfg.env_config.to_dict())
  rng = random.Random(cfg.seed)
  examples = []
  successes = 0
  for task_id in env.tasks(cfg.split, cfg.num_tasks):
    for _ in range(cfg.trajectories_per_task):
      trajectory = noisy_expert_trajectory(env, task_id, cfg.mistake_prob, rng, cfg.end_on_irreversible)
      successes += trajectory.success
      examples += [(task_id, *ex) for ex in build_examples(env, cfg, trajectory, rng)]
  num_trajectories = cfg.num_tasks * cfg.trajectories_per_task
  logging.info("expert_data: %d examples from %d trajectories (%d successful)", len(examples),
               num_trajectories, successes)

  tokenizer_dir = os.path.join(stage_dir, "tokenizer")
  if source_tokenizer:
    shutil.copytree(source_tokenizer, tokenizer_dir)
  else:
    corpus = (m["content"] for _, messages, response, _ in examples for m in [*messages, {"content": response}])
    train_tokenizer(corpus, cfg.tokenizer_vocab_size, tokenizer_dir, cfg.tokenizer_max_length)
  tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
  fingerprint = records.tokenizer_fingerprint(tokenizer)
  order = list(range(len(examples)))
  rng.shuffle(order)
  with records.RecordWriter(os.path.join(stage_dir, "records"), tokenizer_fingerprint=fingerprint,
                            config_json=json.dumps(cfg.to_dict()), shard_size=cfg.shard_size) as writer:
    encoded = encode_turns(tokenizer, [(examples[i][1], examples[i][2]) for i in order])
    for i, (input_ids, loss_mask) in zip(order, encoded, strict=True):
      task_id, messages, response, experience = examples[i]
      writer.write(records.CorrectionRecord(
          input_ids=input_ids, loss_mask=loss_mask, kind="sft", env=cfg.env, task_id=task_id,
          experience=experience, messages_json=json.dumps(messages), tokenizer=fingerprint,
      ))
  with open(os.path.join(stage_dir, "stats.json"), "w") as f:
    json.dump({"examples": len(examples), "trajectories": num_trajectories, "expert_successes": successes}, f)
  open(os.path.join(stage_dir, "DONE"), "w").close()
