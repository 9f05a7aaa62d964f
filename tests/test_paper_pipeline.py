"""The Sokoban paper pipeline (configs/paper/sokoban.py) end to end on a tiny random Qwen2 in models/base and
models/grpo: every stage of Table 1 through `main.run`, the paper's train/GRPO settings (bf16 compute, full
remat, per-example loss), only the sizes shrunk. Slow (`make test-all`)."""

import json
import os

import pytest

from configs.paper import sokoban
from leafe_jax import envs
from leafe_jax import main as main_lib
from leafe_jax.baselines.tiny_tokenizer import train_tokenizer
from leafe_jax.envs.sokoban import solve
from leafe_jax.envs.sokoban.level import LURD
from leafe_jax.explore import stage as explore_stage
from leafe_jax.policy.scripted import ScriptedPolicy

pytestmark = pytest.mark.slow

TASKS, MAX_STEPS, NEW_TOKENS, EXPLORE_CACHE, CACHE = 2, 3, 16, 256, 4096


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  import torch
  import transformers

  work = tmp_path_factory.mktemp("sokoban_paper")
  corpus = ["<action>up</action> <action>down</action> <action>left</action> <action>right</action> # _ P X O "
            "You are an expert agent playing Sokoban. rollback_step experience"] * 20
  train_tokenizer(corpus, 400, str(work / "tok"), CACHE)
  tokenizer = transformers.AutoTokenizer.from_pretrained(work / "tok")
  torch.manual_seed(0)
  config = transformers.Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                    max_position_embeddings=CACHE, tie_word_embeddings=True,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
  model = transformers.Qwen2ForCausalLM(config)
  for name in ("base", "grpo"):
    model.save_pretrained(work / "models" / name)
    tokenizer.save_pretrained(work / "models" / name)
  return work


def _config(stages):
  config = sokoban.get_config("qwen2.5-7b")
  with config.unlocked():
    config.stages = stages
    for name in ("explore", "eval", "ace", "early_experience", "grpo"):
      section = config[name]
      section.num_tasks, section.max_new_tokens = TASKS, NEW_TOKENS
      for field, value in (("max_steps", MAX_STEPS), ("reflection_max_new_tokens", NEW_TOKENS),
                           ("max_cache_len", CACHE)):
        if field in section:
          section[field] = value
    config.distill.reh_fraction = 1.0
    config.eval.num_samples, config.eval.ks, config.report.ks = 2, (1, 2), (1, 2)
    config.ace.tasks_per_batch = config.early_experience.tasks_per_shard = 1
    for train in [config.train] + [v.train for v in config.variants.values() if "train" in v]:
      train.batch_size, train.num_steps, train.checkpoint_every = 8, 2, 1  # on the paper mesh, (1, -1, 1)
    config.train.seq_len = config.grpo.seq_len = CACHE
    config.grpo.num_iterations, config.grpo.tasks_per_iteration, config.grpo.group_size = 1, 1, 2
    config.grpo.minibatches = 1
  return config


def _oracle_policy(config):
  """Answers the solver's move for the room in the prompt's current observation (full paper prompts)."""
  cfg = config.explore
  env = envs.make(cfg.env, **cfg.env_config.to_dict())
  plan = {}
  for task in env.tasks(cfg.split)[:TASKS]:
    observation = env.reset(task)
    for letter in solve(env.level, max_steps=env.max_steps):
      action = {v: k for k, v in LURD.items()}[letter.lower()]
      plan[observation] = action
      observation = env.step(action).observation

  def respond(messages):
    content = messages[-1]["content"]
    hits = [(content.rfind(o), a) for o, a in plan.items() if o in content]
    return f"<action>{max(hits)[1]}</action>" if hits else "<action>up</action>"

  return ScriptedPolicy(respond)


def test_every_table1_stage_runs_on_the_paper_settings_with_a_tiny_model(workdir):
  # The tiny random model solves nothing, so the LEAFE chain (distill -> train@leafe -> eval@leafe) runs on trees
  # an oracle explored; every other stage runs as a user runs it.
  small_cache = _config(("explore",))
  small_cache.explore.max_cache_len = EXPLORE_CACHE  # the first action prompt overflows it: counted, not raised
  main_lib.run(small_cache, str(workdir))
  os.rename(workdir / "explore", workdir / "explore_by_model")
  ledger = json.loads((workdir / "explore_by_model" / "ledger.json").read_text())["total"]
  assert ledger["rollouts"] == ledger["prompts_too_long"] == TASKS and ledger["env_steps"] == 0

  config = _config(tuple(s for s in sokoban.get_config("qwen2.5-7b").stages if s != "explore") + ("grpo",))
  explore_stage.run_with_policy(config, str(workdir / "explore"), _oracle_policy(config))
  main_lib.run(config, str(workdir))
  manifest = json.loads((workdir / "distill" / "records" / "manifest.json").read_text())
  assert manifest["counts"]["reh"] > 0
  for stage in ("train_leafe", "train_ee_world", "train_iwm", "grpo"):
    assert os.path.exists(workdir / stage / "hf" / "model.safetensors"), stage
  assert json.loads((workdir / "ace" / "playbook.json").read_text()) is not None
  results = {s: json.loads((workdir / s / "results.json").read_text())
             for s in ("eval_base", "eval_grpo", "eval_leafe", "eval_iwm", "eval_ace")}
  assert all(r["num_samples"] == 2 and len(r["tasks"]) == TASKS for r in results.values())
  report = (workdir / "report" / "report.md").read_text()
  rows = [line.split(" | ")[0].strip("| ") for line in report.splitlines() if line.startswith("| ") and
          " P@1 " not in line and line.count("|") == 4]
  assert rows[:5] == ["Base", "GRPO-RLVR", "LEAFE", "EarlyExp", "ACE"]  # the config's order of eval stages
