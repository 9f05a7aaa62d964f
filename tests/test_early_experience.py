"""The Early Experience baseline's data on real Sokoban rooms with scripted policies: expert turns, world-model
targets, self-reflections, replay divergence, kill and resume of the stage."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from leafe_jax.baselines import early_experience as ee
from leafe_jax.baselines import early_experience_stage as ee_stage
from leafe_jax.data import records
from leafe_jax.envs.base import Step
from leafe_jax.envs.prompts import build_action_prompt
from leafe_jax.envs.sokoban import ACTIONS, SokobanEnv
from leafe_jax.policy.scripted import ScriptedPolicy

ENV_CONFIG = {"dim": (6, 6), "num_boxes": 1, "max_steps": 15, "compact_prompt": True}


def _env():
  return SokobanEnv(**ENV_CONFIG)


def _task(env):
  return env.tasks("train", 5)[4]  # a room whose plan takes 8 steps, all four directions


def _replayed_observation(task_id, prefix, action):
  """Independent reference: a fresh env, the expert prefix, then `action`."""
  env = _env()
  env.reset(task_id)
  for a in prefix:
    env.step(a)
  return env.step(action).observation


def test_sokoban_gold_actions_solve_the_room():
  env = _env()
  for task_id in env.tasks("train", 5):
    plan = env.gold_actions(task_id)
    env.reset(task_id)
    steps = [env.step(a) for a in plan]
    assert plan and steps[-1].success and not any(s.done for s in steps[:-1])


def test_expert_turns_use_the_explorer_prompt_and_the_expert_action():
  env = _env()
  task_id = _task(env)
  plan = env.gold_actions(task_id)
  examples = ee.Builder(env, None, ee.Settings(methods=(), history_length=2)).build([task_id])
  assert [e.kind for e in examples] == ["sft"] * len(plan)
  env.reset(task_id)
  history = []
  for i, (example, action) in enumerate(zip(examples, plan, strict=True)):
    observation = env.render()
    expected = build_action_prompt(env, instruction=env.instruction, history=history, current_observation=observation,
                                   admissible_actions=env.admissible_actions(), step_count=i, history_length=2)
    assert example.messages == expected and example.response == f"<action>{action}</action>" and example.step == i
    history.append((observation, action))
    env.step(action)


def test_world_model_targets_are_the_observations_the_actions_lead_to():
  env = _env()
  task_id = _task(env)
  plan = env.gold_actions(task_id)
  builder = ee.Builder(env, None, ee.Settings(methods=("iwm",), iwm_alternatives=2))
  iwm = [e for e in builder.build([task_id]) if e.kind == "iwm"]
  assert len(iwm) == 3 * len(plan)  # 2 alternatives + the expert action per state
  for step in range(len(plan)):
    at_state = [e for e in iwm if e.step == step]
    actions = [e.messages[-1]["content"].rsplit("takes the action: ", 1)[1].split("\n")[0] for e in at_state]
    assert actions[-1] == plan[step] and plan[step] not in actions[:-1] and len(set(actions)) == 3
    assert set(actions) <= set(ACTIONS)
    for action, example in zip(actions, at_state, strict=True):
      assert example.response == _replayed_observation(task_id, plan[:step], action)
      assert example.messages[0]["content"] == ee.WORLD_MODEL_SYSTEM
  assert builder.stats["alternatives_executed"] == 2 * len(plan) and builder.stats["replay_divergences"] == 0


def _reflecting_policy(agree_on):
  """Proposes "up" every time; reflects naming the expert action last when it is in `agree_on`, else another."""
  def respond(messages):
    content = messages[-1]["content"]
    if "Expert action: " not in content:
      return "<action>up</action>"
    expert = content.split("Expert action: ", 1)[1].split("\n")[0]
    other = next(a for a in ACTIONS if a != expert)
    if expert in agree_on:
      return f"Going {other} hits the wall, so I should go {expert}."
    return f"Going {expert} looks fine, but I will go {other}."
  return ScriptedPolicy(respond)


def test_self_reflections_end_in_the_expert_action_and_others_are_dropped():
  env = _env()
  task_id = _task(env)
  plan = env.gold_actions(task_id)
  agree_on = {"up", "left"}
  keep = [i for i, a in enumerate(plan) if a in agree_on]
  assert 0 < len(keep) < len(plan)
  builder = ee.Builder(env, _reflecting_policy(agree_on), ee.Settings(methods=("sr",), sr_alternatives=3,
                                                                        history_length=0))
  sr = [e for e in builder.build([task_id]) if e.kind == "sr"]
  assert [e.step for e in sr] == keep
  for example in sr:
    reflection, action = example.response.split("</think>\n<action>")
    assert action == f"{plan[example.step]}</action>" and reflection.startswith("<think>\n")
    assert "Expert action" not in example.messages[-1]["content"]  # the record's prompt is the plain action prompt
  assert builder.stats["sr_dropped"] == len(plan) - len(keep)
  assert builder.stats["policy_calls"] == 2  # one batched proposal call, one batched reflection call
  # Every state got 3 distinct non-expert alternatives; identical or unparsable proposals were replaced.
  assert builder.stats["alternatives_executed"] == 3 * len(plan) and builder.stats["sr_proposals_replaced"] > 0


def test_env_worker_processes_give_the_same_examples_as_the_in_process_env():
  env = _env()
  tasks = env.tasks("train", 6)
  settings = ee.Settings(methods=("iwm", "sr"), iwm_alternatives=2, history_length=0)
  inline = ee.Builder(env, _reflecting_policy({"up"}), settings)
  expected = inline.build(tasks)
  with ee.EnvRunner(env, "sokoban", ENV_CONFIG, workers=2) as runner:
    pooled = ee.Builder(env, _reflecting_policy({"up"}), settings, runner)
    assert pooled.build(tasks) == expected
  assert pooled.stats == inline.stats and {e.kind for e in expected} == {"sft", "iwm", "sr"}


def test_proposals_are_distinct_admissible_non_expert_actions():
  state = ee.ExpertState("t", 0, "q", (), "o", ("up", "down", "left", "right"), "up", "o2")
  chosen, replaced = ee.proposed_alternatives(["<action>down</action>", "<action>Down</action>", "<action>up</action>",
                                               "fly"], state, 4, random.Random(0))
  # Three proposals were unusable, but only two non-expert actions were left to replace them.
  assert chosen[0] == "down" and sorted(chosen) == ["down", "left", "right"] and replaced == 2


def test_concluded_action_is_the_candidate_named_last_as_whole_words():
  candidates = ["go to fridge 1", "go to fridge 10", "open fridge 1"]
  assert ee.concluded_action("Not go to fridge 1; I go to fridge 10.", candidates) == "go to fridge 10"
  assert ee.concluded_action("Open fridge 1 first? No: GO TO FRIDGE 1", candidates) == "go to fridge 1"
  assert ee.concluded_action("nothing relevant", candidates) is None


class _DriftingEnv:
  """A corridor whose start observation changes on every reset after the first: replay must diverge."""

  name = "drifting"
  instruction = "walk right twice"

  def __init__(self):
    self.resets = 0

  def tasks(self, split):
    return ["t"]

  def reset(self, task_id):
    self.resets += 1
    self.pos = 0
    return f"start {self.resets if self.resets > 1 else ''}".strip()

  def step(self, action):
    self.pos += action == "right"
    return Step(f"at {self.pos}", 0.0, self.pos == 2, self.pos == 2, {})

  def admissible_actions(self):
    return ["left", "right"]

  def gold_actions(self, task_id):
    return ["right", "right"]


def test_a_replay_that_diverges_drops_the_states_alternatives_and_is_counted():
  builder = ee.Builder(_DriftingEnv(), None, ee.Settings(methods=("iwm",), iwm_alternatives=1))
  examples = builder.build(["t"])
  assert [e.kind for e in examples] == ["sft", "sft"]  # the expert turns were recorded before any replay
  assert builder.stats["replay_divergences"] == 2 and builder.stats["alternatives_executed"] == 0


def test_an_env_without_an_expert_is_refused(tmp_path):
  config = _stage_config(num_tasks=1)
  config.early_experience.env = "coding"
  config.early_experience.env_config = ml_collections.ConfigDict()
  with pytest.raises(ValueError, match="has no expert"):
    ee_stage.run_with_policy(config, str(tmp_path), None, None)


def _stage_config(num_tasks=6, tasks_per_shard=2):
  config = ml_collections.ConfigDict({"early_experience": ee_stage.default_config()})
  cfg = config.early_experience
  cfg.env_config = ml_collections.ConfigDict(ENV_CONFIG)
  cfg.num_tasks, cfg.tasks_per_shard, cfg.history_length, cfg.iwm_alternatives = num_tasks, tasks_per_shard, 0, 2
  return config


def make_tokenizer(path):
  from leafe_jax.baselines.tiny_tokenizer import train_tokenizer

  env = _env()
  corpus = [env.reset(t) for t in env.tasks("train", 4)] + list(ACTIONS) + [ee.REFLECTION_PROMPT]
  train_tokenizer(corpus, vocab_size=300, out_dir=str(path), model_max_length=4096)


_RESUME_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from transformers import AutoTokenizer
from test_early_experience import _reflecting_policy, _stage_config
from leafe_jax.baselines import early_experience_stage
policy = _reflecting_policy({{"up", "left"}})
policy.latency_s = {latency}
early_experience_stage.run_with_policy(_stage_config(), {stage_dir!r}, policy, AutoTokenizer.from_pretrained({tok!r}))
"""


def _run_stage(stage_dir, tok, latency):
  code = _RESUME_SCRIPT.format(tests=os.path.dirname(__file__), stage_dir=str(stage_dir), tok=str(tok),
                               latency=latency)
  return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _record_set(stage_dir):
  return sorted(json.dumps([r.task_id, r.kind, r.step, list(r.input_ids), list(r.loss_mask)])
                for r in records.iter_records(str(stage_dir / "records")))


def test_sigkill_then_rerun_gives_the_records_of_an_uninterrupted_run(tmp_path):
  make_tokenizer(tmp_path / "tok")
  whole_run = _run_stage(tmp_path / "whole", tmp_path / "tok", 0.0)  # alongside: the killed run mostly waits
  proc = _run_stage(tmp_path / "killed", tmp_path / "tok", 0.3)
  done = tmp_path / "killed" / "done-0-of-1.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and not (done.exists() and done.read_text().count("\n") >= 2):
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL and done.read_text().count("\n") < 6
  assert _run_stage(tmp_path / "killed", tmp_path / "tok", 0.0).wait(timeout=120) == 0
  assert whole_run.wait(timeout=120) == 0
  whole = _record_set(tmp_path / "whole")
  assert _record_set(tmp_path / "killed") == whole
  kinds = {json.loads(r)[1] for r in whole}
  assert kinds == {"sft", "iwm", "sr"}
  manifest = records.read_manifest(str(tmp_path / "whole" / "records"))
  assert sum(manifest["counts"].values()) == len(whole)
  stats = json.loads((tmp_path / "whole" / "stats.json").read_text())
  assert stats["tasks"] == 6 and stats["records_sft"] == manifest["counts"]["sft"]


def test_a_rerun_refuses_records_of_other_settings_or_policy_weights(tmp_path):
  from transformers import AutoTokenizer

  make_tokenizer(tmp_path / "tok")
  tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
  run = lambda config, weights="w1": ee_stage.run_with_policy(
      config, str(tmp_path / "ee"), _reflecting_policy({"up", "left"}), tok, policy_weights=weights)
  run(_stage_config(num_tasks=2))
  assert run(_stage_config(num_tasks=4))["tasks"] == 4  # more tasks: a plain resume
  with pytest.raises(ValueError, match=r"early_experience: the records in .* \(iwm_alternatives changed"):
    config = _stage_config(num_tasks=4)
    config.early_experience.iwm_alternatives = 3
    run(config)
  with pytest.raises(ValueError, match=r"\(policy_weights changed"):
    run(_stage_config(num_tasks=4), weights="w2")


def test_a_rerun_after_a_kill_between_a_shard_rename_and_its_manifest_update_duplicates_nothing(tmp_path):
  # The shard is durable (RecordWriter adopts it on reopen), so its tasks are done: building them again wrote
  # the group's records twice.
  from transformers import AutoTokenizer

  make_tokenizer(tmp_path / "tok")
  tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
  config = _stage_config(num_tasks=4)
  config.early_experience.methods = ("iwm",)  # no policy needed
  ee_stage.run_with_policy(config, str(tmp_path / "whole"), None, tok)
  killed = tmp_path / "killed"
  ee_stage.run_with_policy(config, str(killed), None, tok)
  part_path = killed / "records" / "manifest-ee0.json"  # back to: 2nd shard renamed, manifest and done log not
  part = json.loads(part_path.read_text())
  assert len(part["shards"]) == 2
  part_path.write_text(json.dumps({**part, "shards": part["shards"][:1]}))
  done = killed / "done-0-of-1.jsonl"
  done.write_text("".join(done.read_text().splitlines(keepends=True)[:2]))
  ee_stage.run_with_policy(config, str(killed), None, tok)
  assert _record_set(killed) == _record_set(tmp_path / "whole")


def test_policy_proposals_never_make_a_listed_template_an_alternative():
  # uniform_alternatives skips a listed entry the env's parser rejects (WebShop's `search[<your query>]`); a
  # policy copying it into its <action> block got it executed as an SR alternative.
  from leafe_jax.envs.webshop.env import SEARCH_TEMPLATE, WebShopEnv

  state = ee.ExpertState("t", 0, "q", (), "o", (SEARCH_TEMPLATE, "click[a]", "click[b]", "click[c]"), "click[a]",
                         "o2")
  chosen, replaced = ee.proposed_alternatives([f"<action>{SEARCH_TEMPLATE}</action>", "<action>click[b]</action>"],
                                              state, 2, random.Random(0), WebShopEnv.parse_action)
  assert SEARCH_TEMPLATE not in chosen and "click[b]" in chosen and len(chosen) == 2 and replaced == 1


def test_another_shard_count_in_the_stage_dir_is_refused(tmp_path):
  from transformers import AutoTokenizer

  make_tokenizer(tmp_path / "tok")
  tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
  config = _stage_config(num_tasks=2)
  config.early_experience.methods = ("iwm",)
  ee_stage.run_with_policy(config, str(tmp_path / "ee"), None, tok)
  config.early_experience.shard = "0/2"
  with pytest.raises(ValueError, match=r"shards of another count, but early_experience.shard is '0/2'"):
    ee_stage.run_with_policy(config, str(tmp_path / "ee"), None, tok)


class _SeedDrawingPolicy:
  """Proposes an action drawn from each prompt's own seed (as a sampler does): shows which seed a prompt got."""

  def generate(self, prompts, *, n=1, seed=0, **kw):
    from leafe_jax.policy.base import Completion, prompt_seeds

    return [[Completion(text=f"<action>{ACTIONS[random.Random(prompt_seed * 7 + j).randrange(4)]}</action>")
             for j in range(n)] for prompt_seed in prompt_seeds(seed, len(prompts))]


def test_a_states_proposals_do_not_depend_on_the_group_it_is_built_in(tmp_path):
  # The proposal call passed one seed (settings.seed) per group: prompt i of every group drew alike, and a state's
  # proposals changed with its position in its group. Each state now seeds from its task and step.
  def proposals(tasks_per_shard):
    builder = ee.Builder(_env(), _SeedDrawingPolicy(), ee.Settings(methods=("sr",), sr_alternatives=2,
                                                                   history_length=0))
    env = _env()
    states = [st for t in env.tasks("train", 3) for st in ee.expert_trajectory(env, t)[0]]
    out = {}
    for start in range(0, len(states), tasks_per_shard):
      out.update(builder._sr_alternatives(states[start:start + tasks_per_shard],
                                          {st.task_id: random.Random(0) for st in states}))
    return out

  assert proposals(1) == proposals(5)
