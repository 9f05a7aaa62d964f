"""The LEAFE explorer with scripted policies: branching, replay verification, records, resume, bad input."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from leafe_jax.data import records
from leafe_jax.envs import Step
from leafe_jax.envs.sokoban import SokobanEnv, load_xsb
from leafe_jax.explore import distill, engine, reflection, show
from leafe_jax.explore import stage as explore_stage
from leafe_jax.explore.ledger import Ledger
from leafe_jax.explore.tree import TreeStore, load_trees
from leafe_jax.policy.base import PROMPT_TOO_LONG, Completion, prompt_seeds
from leafe_jax.policy.scripted import ScriptedPolicy

CORRIDOR = load_xsb("#######\n#@ $ .#\n#######")[0]  # right x3 solves it


def _corridor_env():
  return SokobanEnv(level=CORRIDOR, max_steps=3, compact_prompt=True)


def _corridor_policy():
  env = _corridor_env()
  start = env.reset("level")
  after_one = env.step("right").observation
  after_two = env.step("right").observation
  # Root: right, then the mistake "left" (back to the start), then right: the step limit ends it unsolved.
  plan = {start: "right", after_one: "left", after_two: "right"}

  def respond(messages):
    content = messages[-1]["content"]
    if content.endswith("reflect:"):
      return reflection.format_reflection(2, "go right")
    if "hint: go right" in content:
      return "<action>right</action>"
    return f"<action>{plan[content.split(chr(10) * 2)[0]]}</action>"

  return ScriptedPolicy(respond)


def _settings(**kw):
  base = {"history_length": 0, "max_steps": 3, "max_depth": 2, "max_attempts": 4}
  return engine.ExploreSettings(**{**base, **kw})


def _explore(policy, make_env, tasks, settings):
  trees, ledger = [], Ledger()
  engine.Explorer(policy, make_env, "sokoban", settings, ledger).run(tasks, trees.append)
  return trees, ledger


def test_failed_rollout_branches_at_the_reflected_step_and_the_branch_succeeds():
  trees, ledger = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  (tree,) = trees
  root, branch = tree.nodes
  assert [t.action for t in root.turns] == ["right", "left", "right"] and root.outcome == "failure"
  assert root.reflections[0].rollback_step == 2 and root.reflections[0].queued
  assert branch.parent == 0 and branch.rollback_step == 2 and branch.experience == "go right"
  assert branch.prefix_actions == ["right"] and branch.outcome == "success"
  assert [t.step for t in branch.turns] == [2, 3]
  # The replayed prefix reproduced the recorded observations (o_0, o_1), so no divergence was counted.
  assert branch.prefix_observations == [root.turns[0].observation, root.turns[1].observation]
  assert ledger.total["divergences"] == 0 and ledger.total["replayed_steps"] == 1
  assert ledger.total["branches"] == 1 and ledger.total["successes"] == 1
  # The hint is in the branch's first prompt only, never in its clean prompt.
  assert "hint: go right" in branch.turns[0].messages[-1]["content"]
  assert "hint" not in branch.turns[0].clean_messages[-1]["content"]
  assert "hint" not in branch.turns[1].messages[-1]["content"]


def test_distillation_gives_exactly_one_cf_and_the_successful_path_as_reh():
  trees, _ = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  examples = distill.build_examples(trees, max_cf_per_task=3, reh_fraction=1.0, reh_weight=0.5, seed=0)
  cf = [e for e in examples if e.kind == "cf"]
  reh = [e for e in examples if e.kind == "reh"]
  assert len(cf) == 1 and cf[0].step == 2 and cf[0].response == "<action>right</action>"
  assert cf[0].experience == "go right" and "go right" not in json.dumps(cf[0].messages)
  assert [e.step for e in reh] == [1, 2, 3] and all(e.weight == 0.5 for e in reh)


def test_cf_records_contain_no_experience_tokens(tmp_path):
  from leafe_jax.baselines.tiny_tokenizer import train_tokenizer
  from leafe_jax.explore import distill_stage

  trees, _ = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  tree_dir = tmp_path / "explore" / "trees"
  store = TreeStore(str(tree_dir / "shard-0-of-1.jsonl"))
  for tree in trees:
    store.append(tree)
  corpus = [json.dumps(t.to_json()) for t in trees] + ["hint: go right"]
  train_tokenizer(corpus, vocab_size=300, out_dir=str(tmp_path / "tok"), model_max_length=512)
  config = ml_collections.ConfigDict({"distill": distill_stage.default_config()})
  config.distill.tokenizer, config.distill.reh_fraction = "tok", 1.0
  config.distill.allow_unfinished_explore = True  # trees stored by hand: no explore stage wrote a ledger
  distill_stage.run(config, str(tmp_path), str(tmp_path / "distill"))
  folder = str(tmp_path / "distill" / "records")
  assert records.read_manifest(folder)["counts"]["cf"] == 1
  from transformers import AutoTokenizer

  tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
  experience_ids = tok.encode("go right")
  for rec in records.iter_records(folder, kinds=("cf",)):
    assert "go right" not in tok.decode(rec.input_ids)
    ids = list(rec.input_ids)
    assert not any(ids[i:i + len(experience_ids)] == experience_ids for i in range(len(ids)))
    assert rec.experience == "go right"


class NoisyStartEnv:
  """Test-only env whose first observation changes on every reset: replay can never be trusted. Action "b"
  succeeds, so a branch that ran despite the divergence would succeed and give records."""

  name = "noisy"
  prompt_template = None

  def tasks(self, split):
    return ["t0"]

  def reset(self, task_id):
    self.t = 0
    return f"start {random.random()}"

  def step(self, action):
    self.t += 1
    success = action == "b"
    return Step(f"obs {self.t}", float(success), self.t >= 2 or success, success, {})

  @property
  def instruction(self):
    return "do it"

  def admissible_actions(self):
    return ["a", "b"]


def _noisy_respond(messages):
  """Acts "a" (never succeeds), reflects tau=2 with "try b", and takes "b" (success) when told to."""
  content = messages[-1]["content"]
  if "rollback_step" in content:
    return "<rollback_step>2</rollback_step><experience>try b</experience>"
  return "<action>b</action>" if "try b" in content else "<action>a</action>"


def test_a_nondeterministic_env_triggers_the_divergence_check_and_no_record():
  trees, ledger = _explore(ScriptedPolicy(_noisy_respond), NoisyStartEnv, ["t0"], _settings(max_steps=2))
  outcomes = [n.outcome for n in trees[0].nodes]
  assert outcomes == ["failure", "diverged"] and not trees[0].nodes[1].turns
  assert ledger.total["divergences"] >= 1
  assert distill.build_examples(trees, max_cf_per_task=3, reh_fraction=1.0, reh_weight=1.0, seed=0) == []


@pytest.mark.parametrize("reflection_text", ["no tags at all", "<rollback_step>9</rollback_step><experience>x"
                                             "</experience>", "<rollback_step>0</rollback_step><experience>x"
                                             "</experience>", "<rollback_step>1</rollback_step><experience> "
                                             "</experience>"])
def test_garbage_reflections_and_actions_are_counted_never_raised(reflection_text):
  respond = lambda m: reflection_text if m[-1]["content"].endswith("reflect:") else "I refuse to use tags"
  trees, ledger = _explore(ScriptedPolicy(respond), _corridor_env, ["level"], _settings())
  assert len(trees[0].nodes) == 1 and trees[0].nodes[0].outcome == "failure"
  assert ledger.total["invalid_actions"] == 3 and ledger.total["unparsable_reflections"] == 1
  assert ledger.total["branches"] == 0


def test_empty_task_list_explores_nothing():
  trees, ledger = _explore(_corridor_policy(), _corridor_env, [], _settings())
  assert trees == [] and ledger.total["policy_calls"] == 0


def test_one_policy_call_per_tick_serves_every_live_rollout():
  env = SokobanEnv(dim=(6, 6), num_boxes=1, max_steps=4, compact_prompt=True)
  tasks = env.tasks("train", 5)
  policy = ScriptedPolicy(lambda m: "<rollback_step>1</rollback_step><experience>x</experience>"
                          if m[-1]["content"].endswith("reflect:") else "<action>up</action>")
  _explore(policy, lambda: SokobanEnv(dim=(6, 6), num_boxes=1, max_steps=4, compact_prompt=True), tasks,
           _settings(max_steps=4, method="is", max_attempts=1, concurrency=5))
  assert policy.calls[0] == 5 and len(policy.calls) <= 4


class _SettingsRecorder(ScriptedPolicy):
  """A scripted policy that also keeps each call's prompt kinds and sampling settings."""

  def __init__(self, respond):
    super().__init__(respond)
    self.kinds, self.settings = [], []

  def generate(self, prompts, **kw):
    self.kinds.append(["reflect" if m[-1]["content"].endswith("reflect:") else "act" for m in prompts])
    self.settings.append((kw["temperature"], kw["max_new_tokens"]))
    return super().generate(prompts, **kw)


def test_actions_and_reflections_share_one_call_with_their_own_settings():
  make_env = lambda: SokobanEnv(dim=(6, 6), num_boxes=1, max_steps=6, compact_prompt=True)
  policy = _SettingsRecorder(lambda m: reflection.format_reflection(1, "x") if m[-1]["content"].endswith("reflect:")
                             else "<action>up</action>")
  trees, ledger = _explore(policy, make_env, make_env().tasks("train", 3),
                           _settings(max_steps=6, reflect_every=2, max_attempts=3, concurrency=3, temperature=0.7,
                                     reflection_temperature=0.2, reflection_max_new_tokens=99))
  assert ledger.total["policy_calls"] == len(policy.calls) == _ticks_of(trees)
  # A periodic reflection after step 2 rides along with the same rollouts' third action.
  assert any("act" in kinds and "reflect" in kinds for kinds in policy.kinds)
  assert ledger.total["reflections"] == sum(k.count("reflect") for k in policy.kinds) > 0
  for kinds, (temperature, max_new) in zip(policy.kinds, policy.settings):
    want = [(0.7, 256) if kind == "act" else (0.2, 99) for kind in kinds]
    got = list(zip(*(v if isinstance(v, list) else [v] * len(kinds) for v in (temperature, max_new))))
    assert got == want


def test_ledger_counts_the_prompts_served_per_task_and_they_sum_to_the_total():
  make_env = lambda: SokobanEnv(dim=(6, 6), num_boxes=1, max_steps=6, compact_prompt=True)
  policy = ScriptedPolicy(lambda m: reflection.format_reflection(1, "x") if m[-1]["content"].endswith("reflect:")
                          else "<action>up</action>")
  trees, ledger = _explore(policy, make_env, make_env().tasks("train", 3),
                           _settings(max_steps=6, reflect_every=2, max_attempts=3, concurrency=3))
  per_task = {t.task_id: t.ledger["policy_requests"] for t in trees}
  assert sum(per_task.values()) == ledger.total["policy_requests"] == sum(policy.calls) > ledger.total["policy_calls"]
  for tree in trees:  # each task's actions plus its reflections
    assert per_task[tree.task_id] == sum(len(n.turns) + len(n.reflections) for n in tree.nodes)
    assert tree.ledger == dict(ledger.per_task[tree.task_id])


def _ticks_of(trees) -> int:
  """Ticks of a run whose tasks all start together and each act every tick until their reflections are done."""
  return max(sum(len(n.turns) for n in t.nodes) + sum(1 for n in t.nodes for r in n.reflections
                                                         if r.trigger == "failure") for t in trees)


def test_show_renders_text_and_a_png(tmp_path):
  trees, _ = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  text = show.render_text(trees[0])
  assert "branch at step 2" in text and "e: go right" in text
  png = show.render_png(trees[0], str(tmp_path / "tree.png"))
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_show_cli_prints_the_tree_and_writes_a_png_beside_the_tree_file(tmp_path):
  trees, _ = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  TreeStore(str(tmp_path / "shard-0-of-1.jsonl")).append(trees[0])
  cli = [sys.executable, "-m", "leafe_jax.explore.show", f"--tree={tmp_path / 'shard-0-of-1.jsonl'}"]
  out = subprocess.run(cli, capture_output=True, text=True, check=True, timeout=120).stdout
  png = tmp_path / "shard-0-of-1.task-level.png"
  assert "branch at step 2" in out and f"picture: {png}" in out
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  override = tmp_path / "mine.png"
  out = subprocess.run([*cli, "--task=level", f"--png={override}"], capture_output=True, text=True, check=True,
                       timeout=120).stdout
  assert f"picture: {override}" in out and override.read_bytes()[:4] == b"\x89PNG"
  assert show.default_png_path("d/trees.jsonl", "seed:12") == "d/trees.task-seed_12.png"


def _stable_action(messages):
  content = messages[-1]["content"]
  if content.endswith("reflect:"):
    return "<rollback_step>1</rollback_step><experience>try another way</experience>"
  digest = hashlib.sha256(content.encode()).digest()[0]
  return f"<action>{('up', 'down', 'left', 'right')[digest % 4]}</action>"


_RESUME_SCRIPT = """
import sys, ml_collections
sys.path.insert(0, {tests!r})
from test_explore import _stable_action, explore_config
from leafe_jax.explore import stage
from leafe_jax.policy.scripted import ScriptedPolicy
stage.run_with_policy(explore_config(), {stage_dir!r}, ScriptedPolicy(_stable_action, latency_s={latency}))
"""


def explore_config():
  config = ml_collections.ConfigDict({"explore": explore_stage.default_config()})
  cfg = config.explore
  cfg.env_config = ml_collections.ConfigDict({"dim": (6, 6), "num_boxes": 1, "max_steps": 6, "compact_prompt": True})
  cfg.num_tasks, cfg.history_length, cfg.max_steps, cfg.max_attempts, cfg.concurrency = 12, 0, 6, 3, 3
  return config


def _run_script(stage_dir, latency):
  code = _RESUME_SCRIPT.format(tests=os.path.dirname(__file__), stage_dir=str(stage_dir), latency=latency)
  return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_sigkill_then_rerun_gives_the_same_trees_as_an_uninterrupted_run(tmp_path):
  _run_script(tmp_path / "whole", 0.0).wait(timeout=120)
  proc = _run_script(tmp_path / "killed", 0.02)
  tree_file = tmp_path / "killed" / "trees" / "shard-0-of-1.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and not (tree_file.exists() and tree_file.read_text().count("\n") >= 2):
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  _run_script(tmp_path / "killed", 0.0).wait(timeout=120)
  as_set = lambda path: sorted(json.dumps(t.to_json(), sort_keys=True) for t in load_trees(str(path)))
  whole = as_set(tmp_path / "whole" / "trees" / "shard-0-of-1.jsonl")
  assert len(whole) == 12 and as_set(tree_file) == whole
  # Per-task interaction counters are equal; only the batched policy-call count depends on the batching.
  ledger = lambda d: json.loads((d / "ledger.json").read_text())
  killed, whole_ledger = ledger(tmp_path / "killed"), ledger(tmp_path / "whole")
  assert killed["per_task"] == whole_ledger["per_task"]
  assert {k: v for k, v in killed["total"].items() if k != "policy_calls"} == {
      k: v for k, v in whole_ledger["total"].items() if k != "policy_calls"}
  # And the distill stage makes the same correction records from both.
  whole_records, killed_records = (_distilled_records(tmp_path, name) for name in ("whole", "killed"))
  assert killed_records == whole_records and {kind for kind, *_ in whole_records} == {"cf", "reh"}


def _distilled_records(tmp_path, name: str) -> list[tuple]:
  """The distill stage over `tmp_path/name`'s trees (every success rehearsed), its records as sorted tuples."""
  from leafe_jax.baselines.tiny_tokenizer import train_tokenizer
  from leafe_jax.explore import distill_stage

  tok = tmp_path / "tok"
  if not tok.exists():
    train_tokenizer([_stable_action([{"content": "up down left right"}])], vocab_size=300, out_dir=str(tok),
                    model_max_length=8192)
  config = ml_collections.ConfigDict({"distill": distill_stage.default_config()})
  config.distill.trees, config.distill.tokenizer = str(tmp_path / name / "trees"), str(tok)
  config.distill.reh_fraction = 1.0
  out = tmp_path / name / "distill"
  distill_stage.run(config, str(tmp_path / name), str(out))
  return sorted((r.kind, r.task_id, r.node_id, r.step, tuple(r.input_ids), tuple(r.loss_mask), r.weight,
                 r.experience, r.messages_json, r.tokenizer) for r in records.iter_records(str(out / "records")))


def test_a_finished_distill_refuses_other_settings_or_trees_explored_since(tmp_path):
  from leafe_jax.explore import distill_stage

  config = explore_config()
  config.explore.num_tasks = 4
  explore_stage.run_with_policy(config, str(tmp_path / "run"), ScriptedPolicy(_stable_action))
  first = _distilled_records(tmp_path, "run")
  assert _distilled_records(tmp_path, "run") == first  # a rerun of the finished stage skips
  distill = ml_collections.ConfigDict({"distill": distill_stage.default_config()})
  distill.distill.trees, distill.distill.tokenizer = str(tmp_path / "run" / "trees"), str(tmp_path / "tok")
  distill.distill.reh_fraction, distill.distill.max_cf_per_task = 1.0, 1
  with pytest.raises(ValueError, match=r"distill: the records in .* \(max_cf_per_task changed"):
    distill_stage.run(distill, str(tmp_path / "run"), str(tmp_path / "run" / "distill"))
  config.explore.num_tasks = 6  # the explore stage extended: its new trees are in no record
  explore_stage.run_with_policy(config, str(tmp_path / "run"), ScriptedPolicy(_stable_action))
  with pytest.raises(ValueError, match=r"\(trees_files changed"):
    _distilled_records(tmp_path, "run")


def _late_rollback(messages):
  """Acts like `_stable_action`; reflects with tau = the last step, so every branch replays a prefix."""
  content = messages[-1]["content"]
  if content.endswith("reflect:"):
    taken = sum(1 for line in content.splitlines() if line.split(" ")[-1] in ("up", "down", "left", "right"))
    return f"<rollback_step>{max(1, taken)}</rollback_step><experience>try another way</experience>"
  return _stable_action(messages)


def test_pooled_envs_give_the_same_trees_as_in_process_envs(tmp_path):
  config = explore_config()
  config.explore.reflect_every = 2
  runs = {}
  for workers in (0, 2):
    config.explore.env_workers = workers
    ledger = explore_stage.run_with_policy(config, str(tmp_path / str(workers)), ScriptedPolicy(_late_rollback))
    trees = load_trees(str(tmp_path / str(workers) / "trees" / "shard-0-of-1.jsonl"))
    runs[workers] = ([json.dumps(t.to_json(), sort_keys=True) for t in trees], ledger.to_json())
  assert runs[2] == runs[0]
  assert runs[0][1]["total"]["replayed_steps"] > 0 and runs[0][1]["total"]["branches"] > 0


class _KillingPolicy(ScriptedPolicy):
  """`_late_rollback`, and at its `kill_at`-th call a SIGKILL to the pool worker that holds `victim`'s episode."""

  def __init__(self, pool, victim, kill_at):
    super().__init__(_late_rollback)
    self.pool, self.victim, self.kill_at = pool, victim, kill_at

  def generate(self, prompts, **kw):
    if len(self.calls) + 1 == self.kill_at:
      os.kill(self.pool.worker_pids()[self.pool.worker_of(self.victim[0].episode_id)], signal.SIGKILL)
    return super().generate(prompts, **kw)


def test_a_killed_pool_worker_errors_only_its_rollout_and_exploration_finishes():
  from leafe_jax.envs.pool import EnvPool
  from leafe_jax.envs.pooled import PooledEnv

  env_config = dict(explore_config().explore.env_config)
  tasks = SokobanEnv(**env_config).tasks("train", 2)
  settings = _settings(max_steps=6, max_attempts=3, concurrency=2)
  expected, _ = _explore(ScriptedPolicy(_late_rollback), lambda: SokobanEnv(**env_config), tasks, settings)
  with EnvPool("sokoban", env_config, num_workers=2, step_timeout_s=30.0) as pool:
    made = []
    make_env = lambda: made.append(PooledEnv(pool)) or made[-1]
    trees, ledger = _explore(_KillingPolicy(pool, made, kill_at=2), make_env, tasks, settings)
    assert pool.restarts == 1
  by_task = {t.task_id: t for t in trees}
  assert sorted(by_task) == sorted(tasks) and ledger.total["errors"] == 1
  # The other task's episode lived on the other worker: its tree is as without the kill.
  other = next(t for t in expected if t.task_id == tasks[1])
  assert json.dumps(by_task[tasks[1]].to_json()) == json.dumps(other.to_json())
  errored = [n for n in by_task[tasks[0]].nodes if n.outcome == "error"]
  assert len(errored) == 1 and by_task[tasks[0]].ledger["errors"] == 1
  # The lost rollout's request was queued again and ran on the replacement worker.
  retry = by_task[tasks[0]].nodes[errored[0].node_id + 1:]
  assert any((n.parent, n.rollback_step) == (errored[0].parent, errored[0].rollback_step) for n in retry)


def test_rerun_of_a_finished_explore_keeps_the_ledger_totals(tmp_path):
  first = explore_stage.run_with_policy(explore_config(), str(tmp_path), ScriptedPolicy(_stable_action)).to_json()
  assert first["total"]["policy_calls"] > 0
  again = explore_stage.run_with_policy(explore_config(), str(tmp_path), ScriptedPolicy(_stable_action)).to_json()
  assert again["total"] == first["total"]
  assert json.loads((tmp_path / "ledger.json").read_text())["total"] == first["total"]


def test_explore_refuses_to_resume_trees_of_other_settings_or_policy_weights(tmp_path):
  run = lambda config, weights="w1": explore_stage.run_with_policy(
      config, str(tmp_path), ScriptedPolicy(_stable_action), policy_weights=weights)
  config = explore_config()
  config.explore.num_tasks = 4
  run(config)
  more = explore_config()  # more tasks, at another concurrency: extent and placement, a plain resume
  more.explore.num_tasks, more.explore.concurrency = 6, 2
  run(more)
  assert len(list(load_trees(str(tmp_path / "trees" / "shard-0-of-1.jsonl")))) == 6
  hotter = explore_config()
  hotter.explore.temperature = 0.5
  with pytest.raises(ValueError, match=r"explore: the trees in .* made with other settings \(temperature changed"):
    run(hotter)
  with pytest.raises(ValueError, match=r"\(policy_weights changed"):
    run(config, weights="w2")  # a retrained policy
  other_shard = explore_config()  # another host of the same stage dir, with its own seed
  other_shard.explore.shard, other_shard.explore.seed = "1/2", 1
  with pytest.raises(ValueError, match=r"\(seed changed"):
    run(other_shard)


def test_tree_line_round_trips_and_writes_equal_clean_messages_once(tmp_path):
  trees, _ = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  tree = trees[0]
  line = json.loads(tree.to_json_line())
  turns = [t for n in line["nodes"] for t in n["turns"]]
  with_experience = [t for t in turns if t["clean_messages"] is not None]
  assert with_experience and len(with_experience) < len(turns)  # only the branch's first turn showed e
  assert all(t["clean_messages"] != t["messages"] for t in with_experience)
  store = TreeStore(str(tmp_path / "trees.jsonl"))
  store.append(tree)
  (loaded,) = store.load()
  assert loaded.to_json() == tree.to_json()


def test_tree_store_writes_every_tree_and_fsyncs_in_groups_and_on_sync(tmp_path, monkeypatch):
  trees, _ = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  synced = []
  real_fsync = os.fsync
  monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
  path = tmp_path / "trees" / "shard-0-of-1.jsonl"
  store = TreeStore(str(path), fsync_every=3, fsync_s=3600.0)
  for i in range(1, 5):
    store.append(trees[0])
    # Written through at once (what a SIGKILL keeps); fsynced (what a machine crash keeps) every 3rd tree.
    assert path.read_text().count("\n") == i
    assert len(synced) == {1: 0, 2: 0, 3: 2, 4: 2}[i]  # the first fsync also syncs the new file's directory
  store.sync()
  assert len(synced) == 3
  store.sync()  # nothing new since
  assert len(synced) == 3
  TreeStore(str(path), fsync_every=3, fsync_s=0.0).append(trees[0])  # fsync_s=0: every tree
  assert len(synced) == 4 and len(TreeStore(str(path)).load()) == 5


@pytest.mark.parametrize("damage", ["torn", "hole"])
def test_tree_store_cuts_a_damaged_tail_and_the_rerun_redoes_those_tasks(tmp_path, damage):
  config = explore_config()
  config.explore.num_tasks = 4
  explore_stage.run_with_policy(config, str(tmp_path / "whole"), ScriptedPolicy(_stable_action))
  whole = (tmp_path / "whole" / "trees" / "shard-0-of-1.jsonl").read_text()
  lines = whole.splitlines(keepends=True)
  if damage == "torn":  # a kill mid-write, or a crash before the fsync: the last line is cut short
    kept = "".join(lines[:2]) + lines[2][: len(lines[2]) // 2]
  else:  # a crash before the fsync: a page of the unsynced tail never reached the disk (zeros), a later one did
    kept = "".join(lines[:2]) + lines[2][:10] + "\0" * 100 + lines[2][110:] + lines[3]
  tree_file = tmp_path / damage / "trees" / "shard-0-of-1.jsonl"
  tree_file.parent.mkdir(parents=True)
  tree_file.write_text(kept)
  explore_stage.run_with_policy(config, str(tmp_path / damage), ScriptedPolicy(_stable_action))
  as_set = lambda text: sorted(text.splitlines())
  assert as_set(tree_file.read_text()) == as_set(whole)


def test_reflections_sample_at_the_reflection_temperature():
  policy = _corridor_policy()
  seen = []
  generate = policy.generate

  def recording_generate(prompts, **kwargs):
    seen.append((prompts[0][-1]["content"].endswith("reflect:"), kwargs["temperature"]))
    return generate(prompts, **kwargs)

  policy.generate = recording_generate
  _explore(policy, _corridor_env, ["level"], _settings(temperature=0.7, reflection_temperature=0.0))
  assert (True, 0.0) in seen and (False, 0.7) in seen
  assert set(seen) == {(True, 0.0), (False, 0.7)}


class _TooLongPolicy(ScriptedPolicy):
  """The corridor policy, but prompts for which `too_long(content)` holds do not fit its context."""

  def __init__(self, too_long):
    super().__init__(_corridor_policy().respond)
    self.too_long = too_long

  def generate(self, prompts, **kwargs):
    out = super().generate(prompts, **kwargs)
    return [[Completion(text="", finish_reason=PROMPT_TOO_LONG)] if self.too_long(m[-1]["content"]) else row
            for m, row in zip(prompts, out)]


def test_an_action_prompt_too_long_ends_its_rollout_unreflected_and_is_counted():
  env = _corridor_env()
  env.reset("level")
  after_one = env.step("right").observation
  policy = _TooLongPolicy(lambda content: content.startswith(after_one) and not content.endswith("reflect:"))
  (tree,), ledger = _explore(policy, _corridor_env, ["level"], _settings())
  (root,) = tree.nodes
  assert root.outcome == PROMPT_TOO_LONG and [t.action for t in root.turns] == ["right"]
  assert not root.reflections and ledger.total["reflections"] == 0
  assert ledger.total["prompts_too_long"] == 1 and ledger.total["env_steps"] == 1
  assert ledger.total["invalid_actions"] == 0 and ledger.total["errors"] == 0


def test_a_reflection_prompt_too_long_gives_no_branch_and_is_not_unparsable():
  (tree,), ledger = _explore(_TooLongPolicy(lambda content: content.endswith("reflect:")), _corridor_env, ["level"],
                             _settings())
  (root,) = tree.nodes
  assert root.outcome == "failure" and len(root.reflections) == 1 and not root.reflections[0].queued
  assert ledger.total["prompts_too_long"] == 1 and ledger.total["unparsable_reflections"] == 0
  assert ledger.total["branches"] == 0 and ledger.total["reflections"] == 1


class _SeededPolicy:
  """A sampler stand-in: what it draws for a prompt depends on the prompt's seed (as JaxPolicy's and a seeded
  server's samples do); ScriptedPolicy ignores the seed, which hides how the explorer chooses it."""

  def generate(self, prompts, *, seed=0, **kw):
    out = []
    for messages, prompt_seed in zip(prompts, prompt_seeds(seed, len(prompts))):
      content = messages[-1]["content"]
      draw = hashlib.sha256(f"{content}|{prompt_seed}".encode()).digest()[0]
      text = (reflection.format_reflection(1 + draw % 2, "try another way") if content.endswith("reflect:")
              else f"<action>{('up', 'down', 'left', 'right')[draw % 4]}</action>")
      out.append([Completion(text=text)])
    return out


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_killed_and_resumed_explore_gives_the_trees_of_an_uninterrupted_run_with_a_sampling_policy(tmp_path,
                                                                                                    concurrency):
  # README: "a two-process explore killed mid-run and resumed (the trees of an uninterrupted run ...)". The call
  # seed was `seed * 1_000_003 + tick`, the tick counted from the start of the process: a resumed run redoes the
  # unfinished tasks from tick 0 and samples them differently; then one seed per call, from the tasks it served,
  # so a redone task sharing calls with other tasks than before sampled differently. Now each prompt has its own
  # seed, from its task and the task's own call count.
  config = explore_config()
  config.explore.concurrency = concurrency
  explore_stage.run_with_policy(config, str(tmp_path / "whole"), _SeededPolicy())
  whole = tmp_path / "whole" / "trees" / "shard-0-of-1.jsonl"
  killed = tmp_path / "killed" / "trees" / "shard-0-of-1.jsonl"
  killed.parent.mkdir(parents=True)
  killed.write_text("".join(whole.read_text().splitlines(keepends=True)[:3]))  # a SIGKILL after three trees
  explore_stage.run_with_policy(config, str(tmp_path / "killed"), _SeededPolicy())
  as_set = lambda path: sorted(json.dumps(t.to_json(), sort_keys=True) for t in load_trees(str(path)))
  assert len(as_set(whole)) == 12 and as_set(killed) == as_set(whole)


def test_distill_refuses_the_trees_of_an_explore_shard_that_has_not_finished(tmp_path):
  from leafe_jax.explore import distill_stage

  trees, ledger = _explore(_corridor_policy(), _corridor_env, ["level"], _settings())
  tree_dir = tmp_path / "explore" / "trees"
  TreeStore(str(tree_dir / "shard-1-of-2.jsonl")).append(trees[0])
  files = [str(tree_dir / "shard-1-of-2.jsonl")]
  # A killed (or still running) shard: trees, no ledger yet.
  with pytest.raises(RuntimeError, match=r"explore shard 1/2 has not finished: .*ledger-shard-1-of-2\.json"):
    distill_stage.load_finished_trees(str(tree_dir), files)
  # The ledger of an earlier, shorter run of the shard: it lists none of the file's tasks.
  (tmp_path / "explore" / "ledger-shard-1-of-2.json").write_text(json.dumps({"per_task": {"other": {}}}))
  with pytest.raises(RuntimeError, match="1 tasks \\(e.g. 'level'\\) that its ledger"):
    distill_stage.load_finished_trees(str(tree_dir), files)
  assert [t.task_id for t in distill_stage.load_finished_trees(str(tree_dir), files, allow_unfinished=True)] == [
      "level"]
  ledger.save(str(tmp_path / "explore" / "ledger-shard-1-of-2.json"))  # as the shard saves it when it ends
  assert [t.task_id for t in distill_stage.load_finished_trees(str(tree_dir), files)] == ["level"]



def test_a_spent_budget_cannot_grow_on_resume_but_an_unspent_one_can(tmp_path):
  # A spent budget finished the trees alive then without their later branches; a rerun with a larger budget kept
  # them as done (found by a review helper).
  def run(stage_dir, num_tasks, budget):
    config = explore_config()
    config.explore.num_tasks, config.explore.env_step_budget = num_tasks, budget
    explore_stage.run_with_policy(config, str(stage_dir), ScriptedPolicy(_stable_action))

  run(tmp_path / "spent", 6, 10)
  with pytest.raises(ValueError, match=r"cut short when their env_step_budget=10 ran out"):
    run(tmp_path / "spent", 6, 0)
  run(tmp_path / "unspent", 4, 100_000)
  run(tmp_path / "unspent", 6, 0)
  assert len(list(load_trees(str(tmp_path / "unspent" / "trees" / "shard-0-of-1.jsonl")))) == 6


def test_a_smaller_task_list_than_the_trees_is_refused(tmp_path):
  # The ledger counted the earlier run's extra trees against the new num_tasks (found by a review helper).
  def run(num_tasks):
    config = explore_config()
    config.explore.num_tasks = num_tasks
    explore_stage.run_with_policy(config, str(tmp_path), ScriptedPolicy(_stable_action))

  run(4)
  with pytest.raises(ValueError, match=r"holds trees of 2 tasks outside this run's 2"):
    run(2)
  run(4)  # the same count resumes (nothing left to do)


def test_another_shard_count_in_the_stage_dir_is_refused(tmp_path):
  # Shards of another count read other tree files: every task was explored again beside its first tree, and
  # distill read both (found by a review helper). Another index of the same count is placement: free.
  def run(shard):
    config = explore_config()
    config.explore.num_tasks, config.explore.shard = 4, shard
    explore_stage.run_with_policy(config, str(tmp_path), ScriptedPolicy(_stable_action))

  run("0/1")
  with pytest.raises(ValueError, match=r"holds trees of 1 shards, but explore.shard is '0/2'"):
    run("0/2")
