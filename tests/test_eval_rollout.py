"""Evaluation rollouts and the eval stage, with test-only policies keyed on the observation."""

import json
import os
import shutil
import signal

import ml_collections
import numpy as np
import pytest

from leafe_jax import stage_settings
from leafe_jax.envs import registry
from leafe_jax.envs.sokoban import SokobanEnv, solve
from leafe_jax.envs.sokoban.level import LURD
from leafe_jax.eval import rollout
from leafe_jax.eval import stage as eval_stage
from leafe_jax.policy.base import PROMPT_TOO_LONG, Completion, prompt_seeds

ENV_CONFIG = {"dim": (6, 6), "num_boxes": 1, "max_steps": 10, "compact_prompt": True}
_ACTION_OF = {letter: action for action, letter in LURD.items()}


class OraclePolicy:
  """Answers with the solver's move for the grid in the prompt (test-only; records every call)."""

  def __init__(self, task_ids):
    env = SokobanEnv(**ENV_CONFIG)
    self.plan = {}
    for task in task_ids:
      obs = env.reset(task)
      for letter in solve(env.level, max_steps=env.max_steps):
        action = _ACTION_OF[letter.lower()]
        self.plan[obs] = action
        obs = env.step(action).observation
    self.calls = []

  def generate(self, prompts, *, n=1, temperature=1.0, top_p=1.0, max_new_tokens=16, stop=(), seed=0):
    self.calls.append(len(prompts))
    out = []
    for messages in prompts:
      grid = messages[-1]["content"].split("\n\n")[0]
      out.append([Completion(text=f"<action>{self.plan.get(grid, 'up')}</action>", token_ids=(1, 2))] * n)
    return out


class GarblePolicy:
  def generate(self, prompts, **kwargs):
    return [[Completion(text="I think I will dance")] for _ in prompts]


def _tasks(n=3):
  return SokobanEnv(**ENV_CONFIG).tasks("test", n)


def test_oracle_solves_every_episode_with_one_policy_call_per_tick():
  tasks = _tasks()
  policy = OraclePolicy(tasks)
  outcomes = rollout.run_episodes(
      policy, lambda: SokobanEnv(**ENV_CONFIG), tasks, num_samples=4, max_steps=10,
      sampling=rollout.SamplingParams(), history_length=0, seed=0,
  )
  assert [o.task_id for o in outcomes] == tasks
  assert all(o.n == 4 and o.c == 4 for o in outcomes)
  # Every live episode advances in the same call: the first tick sees all 12 episodes at once.
  assert policy.calls[0] == 12 and len(policy.calls) == max(max(o.steps) for o in outcomes)


def test_max_live_bounds_the_envs_alive_and_keeps_the_outcomes():
  tasks = _tasks()
  alive, most_alive = set(), [0]

  class CountedEnv(SokobanEnv):
    def reset(self, task_id=None):
      alive.add(id(self))
      most_alive[0] = max(most_alive[0], len(alive))
      return super().reset(task_id)

    def release(self):
      alive.discard(id(self))

  make = lambda: CountedEnv(**ENV_CONFIG)
  policy = OraclePolicy(tasks)
  bounded = rollout.run_episodes(policy, make, tasks, num_samples=4, max_steps=10,
                                 sampling=rollout.SamplingParams(), history_length=0, seed=0, max_live=5)
  assert most_alive[0] == 5 and not alive  # never more than 5 envs; every finished one released
  assert max(policy.calls) == 5
  whole = rollout.run_episodes(OraclePolicy(tasks), make, tasks, num_samples=4, max_steps=10,
                               sampling=rollout.SamplingParams(), history_length=0, seed=0)
  assert [(o.task_id, o.n, o.c, o.steps) for o in bounded] == [(o.task_id, o.n, o.c, o.steps) for o in whole]


def test_unparsable_actions_fail_within_the_step_limit():
  tasks = _tasks(2)
  outcomes = rollout.run_episodes(
      GarblePolicy(), lambda: SokobanEnv(**ENV_CONFIG), tasks, num_samples=2, max_steps=5,
      sampling=rollout.SamplingParams(), history_length=0, seed=0,
  )
  assert all(o.c == 0 and set(o.steps) == {5} for o in outcomes)


def _eval_config(tmp_path):
  config = ml_collections.ConfigDict({"eval": eval_stage.default_config()})
  cfg = config.eval
  cfg.env_config = ml_collections.ConfigDict(ENV_CONFIG)
  cfg.num_tasks, cfg.num_samples, cfg.ks, cfg.max_steps = 3, 4, (1, 4), 10
  cfg.history_length, cfg.tasks_per_chunk = 0, 2
  return config


def test_eval_stage_writes_pass_at_k_and_resumes_without_redoing_tasks(tmp_path, monkeypatch):
  config = _eval_config(tmp_path)
  made = []

  def fake_make_policy(spec, workdir, **kwargs):
    made.append(spec)
    return OraclePolicy(_tasks())

  monkeypatch.setattr(eval_stage, "make_policy", fake_make_policy)
  stage_dir = tmp_path / "eval"
  eval_stage.run(config, str(tmp_path), str(stage_dir))
  results = json.loads((stage_dir / "results.json").read_text())
  assert results["pass_at"] == {"1": 1.0, "4": 1.0}
  assert sorted(results["tasks"]) == sorted(_tasks())
  # A rerun finds every task done and builds no policy.
  eval_stage.run(config, str(tmp_path), str(stage_dir))
  assert made == [config.eval.policy]
  lines = (stage_dir / "outcomes.jsonl").read_text().splitlines()
  assert len(lines) == 3
  # A kill mid-write leaves a torn last line: the rerun cuts it and redoes that task only.
  with open(stage_dir / "outcomes.jsonl", "w") as f:
    f.write("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
  eval_stage.run(config, str(tmp_path), str(stage_dir))
  assert (stage_dir / "outcomes.jsonl").read_text().splitlines() == lines and len(made) == 2
  assert json.loads((stage_dir / "results.json").read_text()) == results


@pytest.mark.parametrize("field", ["tasks_per_chunk", "num_samples"])
def test_eval_stage_refuses_a_count_below_one(tmp_path, field):
  config = _eval_config(tmp_path)
  config.eval[field] = 0
  with pytest.raises(ValueError, match=f"'eval.{field}' must be >= 1"):
    eval_stage.run(config, str(tmp_path), str(tmp_path / "eval"))


def test_eval_stage_refuses_to_resume_outcomes_of_other_settings_or_weights(tmp_path, monkeypatch):
  monkeypatch.setattr(eval_stage, "make_policy", lambda spec, workdir, **kwargs: OraclePolicy(_tasks()))
  weights = tmp_path / "train" / "hf" / "model.safetensors"  # the config's policy dir, as bytes only
  weights.parent.mkdir(parents=True)
  weights.write_bytes(bytes(range(256)) * 1024)
  stage_dir = tmp_path / "eval"
  eval_stage.run(_eval_config(tmp_path), str(tmp_path), str(stage_dir))
  relabelled = _eval_config(tmp_path)
  relabelled.eval.method, relabelled.eval.env_workers = "Renamed", 2  # labels and placement: a plain resume
  relabelled.eval.ks = (1,)  # another report of the same samples
  eval_stage.run(relabelled, str(tmp_path), str(stage_dir))
  assert list(json.loads((stage_dir / "results.json").read_text())["pass_at"]) == ["1"]
  hotter = _eval_config(tmp_path)
  hotter.eval.temperature = 0.9
  with pytest.raises(ValueError, match=r"outcomes in .* made with other settings \(temperature changed"):
    eval_stage.run(hotter, str(tmp_path), str(stage_dir))
  data = bytearray(weights.read_bytes())
  data[len(data) // 2] ^= 1  # a retrained export of the same shapes
  weights.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=r"\(policy_weights changed"):
    eval_stage.run(_eval_config(tmp_path), str(tmp_path), str(stage_dir))
  # A copy of the same weights (a moved workdir, new file times) has their fingerprint.
  shutil.copytree(weights.parent, tmp_path / "copy")
  assert stage_settings.hf_dir_fingerprint(str(tmp_path / "copy")) == stage_settings.hf_dir_fingerprint(
      str(weights.parent))


def test_eval_stage_refuses_to_resume_outcomes_sampled_with_another_ace_playbook(tmp_path, monkeypatch):
  # The ACE row's outcomes depend on the playbook every action prompt shows: a re-learned playbook (same
  # playbook.json path) resumed, and reported, the old playbook's outcomes.
  from leafe_jax.baselines import ace

  monkeypatch.setattr(eval_stage, "make_policy", lambda spec, workdir, **kwargs: OraclePolicy(_tasks()))
  config = _eval_config(tmp_path)
  config.eval.playbook = "ace/playbook.json"

  def write_playbook(bullet):
    playbook = ace.Playbook()
    playbook.add([bullet], max_bullets=10)
    (tmp_path / "ace").mkdir(exist_ok=True)
    (tmp_path / "ace" / "playbook.json").write_text(json.dumps({"playbook": playbook.to_json(), "batches_done": 1}))

  write_playbook("Push boxes along walls.")
  eval_stage.run(config, str(tmp_path), str(tmp_path / "eval"))
  eval_stage.run(config, str(tmp_path), str(tmp_path / "eval"))  # the same playbook: a plain resume
  write_playbook("Never push a box into a corner.")  # the ace stage re-learned its playbook
  with pytest.raises(ValueError, match=r"\(playbook_text changed"):
    eval_stage.run(config, str(tmp_path), str(tmp_path / "eval"))


def test_eval_stage_refuses_k_larger_than_n(tmp_path):
  config = _eval_config(tmp_path)
  config.eval.ks = (1, 8)
  with pytest.raises(ValueError, match="k > eval.num_samples"):
    eval_stage.run(config, str(tmp_path), str(tmp_path / "eval"))


def test_pooled_envs_give_the_same_outcomes_as_in_process_envs(tmp_path, monkeypatch):
  monkeypatch.setattr(eval_stage, "make_policy", lambda spec, workdir, **kwargs: OraclePolicy(_tasks()))
  rows = {}
  for workers in (0, 2):
    config = _eval_config(tmp_path)
    config.eval.env_workers = workers
    eval_stage.run(config, str(tmp_path), str(tmp_path / f"eval{workers}"))
    rows[workers] = (tmp_path / f"eval{workers}" / "outcomes.jsonl").read_text()
  assert rows[2] == rows[0] and '"errors": 0' in rows[0]


class _KillOnFirstCall(OraclePolicy):
  """The oracle, which also SIGKILLs the pool worker of the first episode's env on its first call."""

  def __init__(self, task_ids, pool, envs):
    super().__init__(task_ids)
    self.pool, self.envs = pool, envs

  def generate(self, prompts, **kw):
    if not self.calls:
      os.kill(self.pool.worker_pids()[self.pool.worker_of(self.envs[0].episode_id)], signal.SIGKILL)
    return super().generate(prompts, **kw)


def test_a_killed_pool_worker_fails_only_its_episodes():
  from leafe_jax.envs.pool import EnvPool
  from leafe_jax.envs.pooled import PooledEnv

  tasks = _tasks(2)
  with EnvPool("sokoban", ENV_CONFIG, num_workers=2, step_timeout_s=30.0) as pool:
    envs = []
    make_env = lambda: envs.append(PooledEnv(pool)) or envs[-1]
    outcomes = rollout.run_episodes(
        _KillOnFirstCall(tasks, pool, envs), make_env, tasks, num_samples=2, max_steps=10,
        sampling=rollout.SamplingParams(), history_length=0, seed=0,
    )
  # Episodes go to the least loaded worker (0, 1, 0, 1): worker 0 held sample 0 of each task.
  assert [o.errors for o in outcomes] == [1, 1]
  # Every episode on the surviving worker solved its task; the lost ones count as failures.
  assert [o.c for o in outcomes] == [1, 1] and [o.n for o in outcomes] == [2, 2]



class _OverflowAfter(OraclePolicy):
  """The oracle, but from its call `calls` on, no prompt fits its context."""

  def __init__(self, task_ids, calls):
    super().__init__(task_ids)
    self.overflow_from = calls

  def generate(self, prompts, **kwargs):
    out = super().generate(prompts, **kwargs)
    if len(self.calls) <= self.overflow_from:
      return out
    return [[Completion(text="", finish_reason=PROMPT_TOO_LONG)] for _ in prompts]


def test_a_prompt_too_long_ends_the_episode_unsuccessful_counted_and_its_env_released():
  tasks, released = _tasks(2), []

  class ReleasedEnv(SokobanEnv):
    def release(self):
      released.append(id(self))

  outcomes = rollout.run_episodes(
      _OverflowAfter(tasks, calls=1), lambda: ReleasedEnv(**ENV_CONFIG), tasks, num_samples=3, max_steps=10,
      sampling=rollout.SamplingParams(), history_length=0, seed=0,
  )
  for o in outcomes:
    assert o.n == 3 and o.errors == 0 and o.prompts_too_long == o.n - o.c
    assert all(steps == 1 for steps, ok in zip(o.steps, o.successes) if not ok)  # one step, then the overflow
  assert sum(o.prompts_too_long for o in outcomes) > 0 and len(set(released)) == 6


class RowSeededPolicy:
  """A sampler whose row i of a call seeded `seed` draws from its own stream (seed, i), as the in-process
  sampler and the OpenAI client (prompt i of a call seeded `seed` samples with seed * 2^20 + i) do."""

  def generate(self, prompts, *, n=1, seed=0, **kwargs):
    seeds = prompt_seeds(seed, len(prompts))
    out = []
    for i, _ in enumerate(prompts):
      up = np.random.default_rng(seeds[i]).random() < 0.5
      out.append([Completion(text="<action>up</action>" if up else "<action>down</action>", token_ids=(1,))] * n)
    return out


def _bandit_config():
  """One-step tasks of tests/test_grpo.py's bandit ("up" succeeds), 16 samples each, 2 tasks per chunk."""
  config = ml_collections.ConfigDict({"eval": eval_stage.default_config()})
  cfg = config.eval
  cfg.env, cfg.num_tasks, cfg.num_samples, cfg.ks, cfg.max_steps = "bandit", 4, 16, (1, 16), 1
  cfg.history_length, cfg.tasks_per_chunk = 0, 2
  return config


def test_eval_resume_of_a_partly_written_chunk_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
  monkeypatch.setitem(registry._REGISTRY, "bandit", "test_grpo:BanditEnv")
  monkeypatch.setattr(eval_stage, "make_policy", lambda *a, **k: RowSeededPolicy())
  whole = tmp_path / "whole"
  eval_stage.run(_bandit_config(), str(tmp_path), str(whole))
  lines = (whole / "outcomes.jsonl").read_text().splitlines()
  assert len(lines) == 4
  # A kill while chunk 0 (tasks 0 and 1, one write) was written: task 0's row is whole, task 1's torn.
  resumed = tmp_path / "resumed"
  resumed.mkdir()
  (resumed / "outcomes.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
  eval_stage.run(_bandit_config(), str(tmp_path), str(resumed))
  got = (resumed / "outcomes.jsonl").read_text().splitlines()
  by_task = lambda rows: {json.loads(row)["task_id"]: json.loads(row) for row in rows}
  assert by_task(got) == by_task(lines)  # task 1 was redone alone in its batch, with its own samples' seeds
  assert got == lines  # and one row per task
  assert json.loads((resumed / "results.json").read_text()) == json.loads((whole / "results.json").read_text())


def test_a_sample_draws_alike_at_any_chunking_and_live_bound(tmp_path, monkeypatch):
  """Each prompt's seed is a function of (seed, task, sample, step): another tasks_per_chunk or
  max_live_episodes (free fields) changes which samples share a call, not what any sample draws."""
  monkeypatch.setitem(registry._REGISTRY, "bandit", "test_grpo:BanditEnv")
  monkeypatch.setattr(eval_stage, "make_policy", lambda *a, **k: RowSeededPolicy())
  eval_stage.run(_bandit_config(), str(tmp_path), str(tmp_path / "chunks_of_2"))
  config = _bandit_config()
  config.eval.tasks_per_chunk, config.eval.max_live_episodes = 3, 5
  eval_stage.run(config, str(tmp_path), str(tmp_path / "chunks_of_3"))
  rows = lambda d: sorted((tmp_path / d / "outcomes.jsonl").read_text().splitlines())
  assert rows("chunks_of_2") == rows("chunks_of_3")
  successes = [json.loads(r)["c"] for r in rows("chunks_of_2")]
  assert 0 < sum(successes) < 4 * 16  # the samples do differ from each other
  other_seed = _bandit_config()
  other_seed.eval.seed = 1
  eval_stage.run(other_seed, str(tmp_path), str(tmp_path / "seed_1"))
  assert rows("seed_1") != rows("chunks_of_2")
  # A resume after tasks_per_chunk changed is allowed (free field) and plays only the missing tasks.
  resumed = tmp_path / "resumed"
  shutil.copytree(tmp_path / "chunks_of_3", resumed)
  kept = rows("chunks_of_3")[:1]
  (resumed / "outcomes.jsonl").write_text(kept[0] + "\n")
  (resumed / "results.json").unlink()
  eval_stage.run(_bandit_config(), str(tmp_path), str(resumed))
  assert sorted((resumed / "outcomes.jsonl").read_text().splitlines()) == rows("chunks_of_2")


class SeedRecorder(RowSeededPolicy):
  def __init__(self):
    self.seeds = []

  def generate(self, prompts, *, n=1, seed=0, **kwargs):
    self.seeds.append(prompt_seeds(seed, len(prompts)))
    return super().generate(prompts, n=n, seed=seed, **kwargs)


def test_a_task_listed_twice_plays_other_samples_at_its_second_listing(monkeypatch):
  """ACE's batches over several epochs can list one task twice in one call: each listing must draw on its own."""
  from test_grpo import BanditEnv

  policy = SeedRecorder()
  episodes = rollout.play_episodes(policy, BanditEnv, ["t0", "t0", "t1"], num_samples=2, max_steps=1,
                                   sampling=rollout.SamplingParams(), history_length=0, seed=7)
  assert sorted((e.task_id, e.sample_index) for e in episodes) == [("t0", 0), ("t0", 1), ("t0", 2), ("t0", 3),
                                                                   ("t1", 0), ("t1", 1)]
  assert len(policy.seeds) == 1 and len(set(policy.seeds[0])) == 6


def test_an_eval_left_unfinished_under_per_call_seeds_is_refused_a_finished_one_reports(tmp_path, monkeypatch):
  monkeypatch.setitem(registry._REGISTRY, "bandit", "test_grpo:BanditEnv")
  monkeypatch.setattr(eval_stage, "make_policy", lambda *a, **k: RowSeededPolicy())
  whole = tmp_path / "whole"
  eval_stage.run(_bandit_config(), str(tmp_path), str(whole))
  settings = json.loads((whole / "settings.json").read_text())
  assert settings.pop("seeding") == "per_prompt"
  (whole / "settings.json").write_text(json.dumps(settings))  # as the version before the marker wrote it
  eval_stage.run(_bandit_config(), str(tmp_path), str(whole))  # finished: reports, samples nothing
  lines = (whole / "outcomes.jsonl").read_text().splitlines()
  (whole / "outcomes.jsonl").write_text("\n".join(lines[:2]) + "\n")
  with pytest.raises(ValueError, match=r"\(seeding changed"):
    eval_stage.run(_bandit_config(), str(tmp_path), str(whole))
