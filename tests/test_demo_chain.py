"""`make demo`'s whole stage chain, shrunk to minutes: every stage's output, and a rerun that redoes nothing."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.py")

ENV_SECTIONS = ("expert_data", "explore", "grpo", "early_experience", "eval")
MAX_STEPS = 10  # episode horizon (and room solvability bound) everywhere
WARMUP_STEPS = 300  # the base policy must emit parsable actions and solve some one-box rooms
FINETUNE_STEPS = 30
FINETUNE_VARIANTS = ("leafe", "reh_only", "ee_world", "iwm")
EXPLORE_TASKS, EE_TASKS, EVAL_TASKS, EVAL_SAMPLES, KS = 16, 8, 8, 4, (1, 2, 4)
GRPO_ITERATIONS = 8  # an upper bound: the explorer's interaction budget ends the run first

# --config.<field>=<value> flags on top of configs/demo.py.
OVERRIDES = {
    **{f"{s}.env_config.num_boxes": 1 for s in ENV_SECTIONS},
    **{f"{s}.env_config.max_steps": MAX_STEPS for s in ENV_SECTIONS},
    **{f"{s}.max_steps": MAX_STEPS for s in ("explore", "grpo", "eval")},
    "expert_data.num_tasks": 96,
    "expert_data.reflection_repeats": 8,
    "train.model.d_model": 48,
    "train.model.num_layers": 2,
    "train.model.num_heads": 2,
    "train.model.num_kv_heads": 1,
    "train.model.head_dim": 24,
    "train.model.d_ff": 96,
    "train.num_steps": WARMUP_STEPS,
    "train.batch_size": 8,
    "train.seq_len": 128,
    "train.warmup_steps": 10,
    "train.log_every": 50,
    "train.logits_fractions": (),
    "variants.ee_world.train.batch_size": 8,
    "variants.iwm.train.batch_size": 8,
    "explore.num_tasks": EXPLORE_TASKS,
    "explore.max_attempts": 4,
    "explore.concurrency": EXPLORE_TASKS,
    "distill.reh_fraction": 1.0,  # every successful rollout: a handful of them must still give D_reh records
    "grpo.num_tasks": 8,
    "grpo.tasks_per_iteration": 4,
    "grpo.group_size": 4,
    "grpo.num_iterations": GRPO_ITERATIONS,
    "grpo.minibatches": 1,
    "grpo.seq_len": 128,
    "grpo.max_cache_len": 128,
    "grpo.logits_fractions": (),
    "early_experience.num_tasks": EE_TASKS,
    "early_experience.tasks_per_shard": 4,
    "eval.num_tasks": EVAL_TASKS,
    "eval.num_samples": EVAL_SAMPLES,
    "eval.ks": KS,
    "eval.tasks_per_chunk": 4,
    "eval.max_cache_len": 128,
    "report.ks": KS,
}

# The fine-tune variants set num_epochs; their step count is a field they lack, which no --config flag can add
# (the config is locked): this wrapper adds it, everything else goes through flags.
WRAPPER = f'''"""configs/demo.py with num_steps in its fine-tune variants."""
import importlib.util

_spec = importlib.util.spec_from_file_location("demo_config", {DEMO!r})
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)


def get_config():
  config = _demo.get_config()
  for variant in {FINETUNE_VARIANTS!r}:
    config.variants[variant].train.num_steps = {FINETUNE_STEPS}
  return config
'''


def _demo_config():
  import importlib.util

  spec = importlib.util.spec_from_file_location("demo_config", DEMO)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _run(config_path: str, workdir: str) -> None:
  flags = [f"--config.{key}={value!r}" for key, value in OVERRIDES.items()]
  proc = subprocess.run([sys.executable, "-m", "leafe_jax.main", f"--config={config_path}", f"--workdir={workdir}",
                         *flags], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-6000:]


def _snapshot(root: str) -> dict[str, tuple[int, str]]:
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = (os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
  return out


def _json(*path):
  with open(os.path.join(*path)) as f:
    return json.load(f)


def _jsonl(*path):
  with open(os.path.join(*path)) as f:
    return [json.loads(line) for line in f if line.strip()]


def _check_records(folder: str) -> dict[str, int]:
  """The manifest's per-kind counts, checked against the records read back from the shards."""
  from leafe_jax.data import records

  manifest = records.read_manifest(folder)
  read = dict.fromkeys(records.KINDS, 0)
  for rec in records.iter_records(folder):
    read[rec.kind] += 1
  assert read == manifest["counts"] and sum(read.values()) == manifest["total"]
  return manifest["counts"]


def _check_outputs(workdir: str, config) -> None:
  from leafe_jax.explore.distill import successful_branches
  from leafe_jax.explore.tree import load_trees

  stage_dirs = [entry.replace("@", "_") for entry in config.stages]
  # One folder per stage, and JAX's compilation cache (config.compilation_cache_dir, on by default).
  assert sorted([*stage_dirs, config.get("compilation_cache_dir", "compilation_cache")]) == sorted(os.listdir(workdir))

  stats = _json(workdir, "expert_data", "stats.json")
  assert os.path.exists(os.path.join(workdir, "expert_data", "DONE"))
  assert sum(_check_records(os.path.join(workdir, "expert_data", "records")).values()) == stats["examples"] > 0

  # Stage 1: one tree per task, its counters in the ledger; the base policy solves some rooms.
  trees = list(load_trees(os.path.join(workdir, "explore", "trees", "shard-0-of-1.jsonl")))
  ledger = _json(workdir, "explore", "ledger.json")
  assert len({t.task_id for t in trees}) == len(trees) == ledger["num_tasks"] == EXPLORE_TASKS
  assert set(ledger["per_task"]) == {t.task_id for t in trees}
  successes = [(t, n) for t in trees for n in t.nodes if n.outcome == "success"]
  assert ledger["total"]["rollouts"] == sum(len(t.nodes) for t in trees)
  assert ledger["total"]["successes"] == len(successes) > 0
  assert all(1 <= len(t.nodes) <= OVERRIDES["explore.max_attempts"] for t in trees)

  # Distilled records: what the trees hold (reh_fraction 1: every action turn of every successful rollout).
  counts = _check_records(os.path.join(workdir, "distill", "records"))
  assert counts["reh"] == sum(1 for t, n in successes for turn in t.path_turns(n) if turn.action) > 0
  assert counts["cf"] == sum(min(len(successful_branches(t)), config.distill.max_cf_per_task) for t in trees)
  assert counts["cf"] + counts["reh"] == sum(counts.values())

  ee_counts = _check_records(os.path.join(workdir, "early_experience", "records"))
  assert {kind for kind, n in ee_counts.items() if n} == {"sft", "iwm"}  # the demo's EarlyExp is IWM only
  assert len(_jsonl(workdir, "early_experience", "done-0-of-1.jsonl")) == EE_TASKS

  # Every trained policy: a final checkpoint at its step count and a complete HF export of the tiny model.
  weights, last_checkpoint = {}, {}
  for name, steps in [("train_warmup", WARMUP_STEPS), *((f"train_{v}", FINETUNE_STEPS) for v in FINETUNE_VARIANTS),
                      ("grpo", None)]:
    hf = os.path.join(workdir, name, "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(hf)), name
    hf_config = _json(hf, "config.json")
    assert (hf_config["hidden_size"], hf_config["num_hidden_layers"], hf_config["vocab_size"]) == (48, 2, 384)
    checkpoints = os.listdir(os.path.join(workdir, name, "checkpoints"))
    last_checkpoint[name] = max(int(step) for step in checkpoints if step.isdigit())
    assert steps is None or last_checkpoint[name] == steps, name
    with open(os.path.join(hf, "model.safetensors"), "rb") as f:
      weights[name] = hashlib.sha256(f.read()).hexdigest()
  # Every stage trained its own weights, except that without cf records LEAFE's data is exactly L_reh only's.
  assert (weights.pop("train_leafe") == weights["train_reh_only"]) == (counts["cf"] == 0)
  assert len(set(weights.values())) == len(weights)

  # GRPO spends the explorer's interaction budget and never more: it stops when one more task's worst case (group
  # size x max_steps) no longer fits what is left.
  budget = ledger["total"]["env_steps"] + ledger["total"]["replayed_steps"]
  grpo_ledger = _json(workdir, "grpo", "ledger.json")
  iterations = _jsonl(workdir, "grpo", "iterations.jsonl")
  assert [row["iteration"] for row in iterations] == list(range(1, grpo_ledger["iterations"] + 1))
  assert last_checkpoint["grpo"] == grpo_ledger["iterations"] < GRPO_ITERATIONS
  steps = [row["env_steps"] for row in iterations]
  assert sum(steps) == grpo_ledger["total"]["env_steps"]
  assert budget - OVERRIDES["grpo.group_size"] * MAX_STEPS < sum(steps) <= budget

  # Pass@k per method: in [0, 1], non-decreasing in k, pass@1 = mean c/n, pass@n = share of tasks solved once.
  methods = {}
  for stage in stage_dirs:
    if not stage.startswith("eval_"):
      continue
    results = _json(workdir, stage, "results.json")
    variant = config.variants[stage.removeprefix("eval_")]
    assert results["method"] == variant.eval.method
    assert len(_jsonl(workdir, stage, "outcomes.jsonl")) == len(results["tasks"]) == EVAL_TASKS
    n = np.array([t["n"] for t in results["tasks"].values()])
    c = np.array([t["c"] for t in results["tasks"].values()])
    assert np.all(n == EVAL_SAMPLES) and np.all((c >= 0) & (c <= n))
    pass_at = [results["pass_at"][str(k)] for k in KS]
    assert all(0.0 <= p <= 1.0 for p in pass_at) and pass_at == sorted(pass_at), (stage, pass_at)
    assert pass_at[0] == pytest.approx(np.mean(c / n)) and pass_at[-1] == pytest.approx(np.mean(c > 0))
    methods[results["method"]] = pass_at
  assert len(methods) == 5

  # The report names every method, with the eval stages' numbers (in percent).
  with open(os.path.join(workdir, "report", "report.md")) as f:
    report = f.read()
  assert report.startswith(f"# {config.report.title}")
  assert all(method in report for method in methods)
  table = _json(workdir, "report", "pass_at_k.json")
  assert table["ks"] == list(KS) and sorted(table["methods"]) == sorted(methods)
  for row in table["rows"]:
    assert [row[f"pass@{k}"] for k in KS] == pytest.approx([100 * p for p in methods[row["method"]]])
  assert {"pass_at_k.png", "tree.png"} <= set(os.listdir(os.path.join(workdir, "report")))


@pytest.mark.slow
def test_demo_chain_writes_every_stage_output_and_a_rerun_redoes_nothing(tmp_path):
  """The shrunk demo runs every stage through `python -m leafe_jax.main`; the same command again resumes."""
  config_path, workdir = str(tmp_path / "demo_small.py"), str(tmp_path / "workdir")
  with open(config_path, "w") as f:
    f.write(WRAPPER)
  config = _demo_config()
  _run(config_path, workdir)
  _check_outputs(workdir, config)

  before = _snapshot(workdir)
  _run(config_path, workdir)
  after = _snapshot(workdir)
  # Nothing added, removed or rewritten with other bytes.
  assert set(after) == set(before)
  assert {p for p in before if before[p][1] != after[p][1]} == set()
  # The work itself is not redone: trees, records, checkpoints, model exports, eval outcomes keep their mtimes.
  work = [p for p in before
          if p.startswith(("expert_data", "explore/trees", "distill")) or p.endswith(".tfrecord")
          or "/checkpoints/" in p or "/hf/" in p or p.endswith("outcomes.jsonl")]
  assert len(work) > 50
  assert [p for p in work if before[p][0] != after[p][0]] == []
