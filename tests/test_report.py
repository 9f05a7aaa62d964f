"""The report stage: Pass@k table from eval results, the samplers table from explore ledgers, bad input."""

import json

import ml_collections
import pytest

from leafe_jax.eval import report_stage


def _write_json(path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


def _config(**overrides):
  report = report_stage.default_config()
  report.update(overrides)
  return ml_collections.ConfigDict({"report": report})


def test_pass_at_k_table_matches_hand_computed_values(tmp_path):
  # Two tasks, n = 4: task a solved 2 of 4, task b never. Pass@1 = (0.5 + 0) / 2; Pass@4 = (1 + 0) / 2.
  # Pass@2 for a: 1 - C(2,2)/C(4,2) = 5/6, so Pass@2 = 5/12.
  _write_json(tmp_path / "eval_base" / "results.json",
              {"method": "Base", "model": "m", "tasks": {"a": {"n": 4, "c": 2}, "b": {"n": 4, "c": 0}}})
  _write_json(tmp_path / "eval_leafe" / "results.json",
              {"method": "LEAFE", "model": "m", "tasks": {"a": {"n": 4, "c": 4}, "b": {"n": 4, "c": 1}}})
  _write_json(tmp_path / "distill" / "records" / "manifest.json",
              {"counts": {"cf": 3, "reh": 7, "sr": 0}, "num_target_tokens": 90})
  report_stage.run(_config(ks=(1, 2, 4), explore_dir=""), str(tmp_path), str(tmp_path / "report"))
  table = json.loads((tmp_path / "report" / "pass_at_k.json").read_text())
  text = (tmp_path / "report" / "report.md").read_text()
  assert "| Base | 25.00 | 41.67 | 50.00 |" in text.replace("**", "")
  # LEAFE: Pass@1 = (1 + 0.25) / 2; Pass@2 for b = 1 - C(3,2)/C(4,2) = 1/2 -> (1 + 0.5) / 2; Pass@4 = 1.
  assert "| LEAFE | 62.50 | 75.00 | 100.00 |" in text.replace("**", "")
  assert table and (tmp_path / "report" / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"
  assert "| cf | 3 |\n| reh | 7 |\n| target tokens | 90 |" in text and "| sr |" not in text
  # Paired over tasks a, b: Pass@1 differences (50, 25) points -> +37.50 +- 12.50 (tests/test_paired.py).
  assert "## Difference from Base (paired over the same tasks)" in text
  assert "| LEAFE | +37.50 ± 12.50 |" in text
  differences = json.loads((tmp_path / "report" / "paired_differences.json").read_text())
  assert [(d["method"], d["k"], d["num_tasks"]) for d in differences] == [("LEAFE", 1, 2), ("LEAFE", 2, 2),
                                                                          ("LEAFE", 4, 2)]


def test_reference_method_none_leaves_the_differences_out(tmp_path):
  for method, c in [("Base", 1), ("LEAFE", 2)]:
    _write_json(tmp_path / f"eval_{method}" / "results.json",
                {"method": method, "model": "m", "tasks": {"a": {"n": 2, "c": c}}})
  report_stage.run(_config(ks=(1,), explore_dir="", records_dir=""), str(tmp_path), str(tmp_path / "report"))
  assert (tmp_path / "report" / "paired_differences.json").exists()
  report_stage.run(_config(ks=(1,), explore_dir="", records_dir="", reference_method=None), str(tmp_path),
                   str(tmp_path / "report"))
  assert "Difference from" not in (tmp_path / "report" / "report.md").read_text()
  assert not (tmp_path / "report" / "paired_differences.json").exists()  # the first report's is gone too


def test_sampler_table_sums_ledger_shards_and_counts_coverage(tmp_path):
  shard = lambda per_task, calls, num_tasks: {
      "total": {"env_steps": sum(c.get("env_steps", 0) for c in per_task.values()), "replayed_steps": 3,
                "policy_calls": calls, "rollouts": len(per_task), "generated_tokens": 10},
      "per_task": per_task, "num_tasks": num_tasks}
  _write_json(tmp_path / "explore_is" / "ledger-shard-0-of-2.json",
              shard({"t0": {"env_steps": 4, "successes": 1}, "t2": {"env_steps": 8}}, 5, 2))
  _write_json(tmp_path / "explore_is" / "ledger-shard-1-of-2.json", shard({"t1": {"env_steps": 8}}, 4, 2))
  _write_json(tmp_path / "explore_leafe" / "ledger.json",
              shard({"t0": {"env_steps": 4, "successes": 1}, "t1": {"env_steps": 6, "successes": 2}}, 7, 4))
  report_stage.run(_config(sampler_dirs=("explore_is", "explore_leafe"), explore_dir=""), str(tmp_path),
                   str(tmp_path / "report"))
  rows = {r["sampler"]: r for r in json.loads((tmp_path / "report" / "samplers.json").read_text())}
  assert (rows["explore_is"]["tasks"], rows["explore_is"]["solved"]) == (4, 1)
  assert rows["explore_is"]["coverage"] == 25.0
  assert rows["explore_is"]["interaction_steps"] == 4 + 8 + 8 + 3 + 3
  assert rows["explore_is"]["policy_calls"] == 9
  assert (rows["explore_leafe"]["solved"], rows["explore_leafe"]["coverage"]) == (2, 50.0)
  assert "| explore_leafe | 4 | 2 | 50.00 |" in (tmp_path / "report" / "report.md").read_text()


def test_report_without_results_or_ledgers_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="run the eval stages first"):
    report_stage.run(_config(explore_dir=""), str(tmp_path), str(tmp_path / "report"))
  with pytest.raises(FileNotFoundError, match="explore_is has no ledger"):
    report_stage.run(_config(sampler_dirs=("explore_is",)), str(tmp_path), str(tmp_path / "report"))


def test_table_rows_follow_the_order_the_config_lists_its_eval_stages(tmp_path):
  for stage, method in (("eval_ace", "ACE"), ("eval_base", "Base"), ("eval_leafe", "LEAFE"), ("eval_extra", "X")):
    _write_json(tmp_path / stage / "results.json", {"method": method, "model": "m", "tasks": {"a": {"n": 1, "c": 0}}})
  config = _config(ks=(1,), explore_dir="", records_dir="", reference_method=None)
  config.stages = ("eval@base", "eval@leafe", "train@ace", "eval@ace", "report")
  report_stage.run(config, str(tmp_path), str(tmp_path / "report"))
  rows = [line.split(" | ")[0].strip("| ") for line in (tmp_path / "report" / "report.md").read_text().splitlines()
          if line.startswith("| ") and "Method" not in line]
  assert rows == ["Base", "LEAFE", "ACE", "X"]  # listed stages first, in order; then the rest by dir name


def test_samples_cut_short_are_listed_under_the_table(tmp_path):
  _write_json(tmp_path / "eval_base" / "results.json", {"method": "Base", "model": "m", "errors": 0,
              "prompts_too_long": 0, "tasks": {"a": {"n": 2, "c": 1}}})
  _write_json(tmp_path / "eval_leafe" / "results.json", {"method": "LEAFE", "model": "m", "errors": 1,
              "prompts_too_long": 3, "tasks": {"a": {"n": 2, "c": 0}, "b": {"n": 2, "c": 0}}})
  report_stage.run(_config(ks=(1,), explore_dir="", records_dir=""), str(tmp_path), str(tmp_path / "report"))
  text = (tmp_path / "report" / "report.md").read_text()
  assert "* LEAFE (m): 1 env errors, 3 prompts too long of 4 samples, counted as unsuccessful." in text
  assert "* Base" not in text


def _stage_ledger(path, steps, replayed=0, per_task=None):
  path.write_text(json.dumps({"total": {"env_steps": steps, "replayed_steps": replayed},
                              "per_task": per_task or {"t": {"successes": 1}}}))


def test_report_sampler_rows_refuse_ledgers_of_two_shard_counts_or_a_missing_shard(tmp_path):
  d = tmp_path / "explore_is"
  d.mkdir()
  _stage_ledger(d / "ledger.json", 60, per_task={"a": {"successes": 1}, "b": {"successes": 0}})
  _stage_ledger(d / "ledger-shard-0-of-2.json", 30, per_task={"a": {"successes": 1}})
  _stage_ledger(d / "ledger-shard-1-of-2.json", 25, per_task={"b": {"successes": 0}})
  with pytest.raises((RuntimeError, ValueError), match="shard"):
    report_stage.sampler_rows(str(tmp_path), ["explore_is"])  # was 4 tasks, 2 solved, 115 steps
  (d / "ledger.json").unlink()
  (d / "ledger-shard-1-of-2.json").unlink()
  with pytest.raises((RuntimeError, ValueError, FileNotFoundError), match="shard"):
    report_stage.sampler_rows(str(tmp_path), ["explore_is"])  # was 1 task, coverage 100%


def test_two_evals_of_one_method_and_model_are_refused_not_one_of_them_shown(tmp_path):
  # An eval variant left with the base config's method label (configs/paper/common.py: "Base", "set per
  # variant") lands in the Base row: the table showed whichever eval sorted last.
  for stage, c in (("eval_base", 0), ("eval_hotter", 4)):
    _write_json(tmp_path / stage / "results.json", {"method": "Base", "model": "m", "tasks": {"a": {"n": 4, "c": c}}})
  config = _config(ks=(1,), explore_dir="", records_dir="", reference_method=None)
  config.stages = ("eval@base", "eval@hotter", "report")
  with pytest.raises(ValueError, match=r"eval_base and .*eval_hotter both hold results of method 'Base'"):
    report_stage.run(config, str(tmp_path), str(tmp_path / "report"))


def test_the_exploration_ledger_section_sums_the_shards_of_a_sharded_explore(tmp_path):
  # It read explore/ledger.json only: a sharded explore (ledger-shard-<i>-of-<n>.json) showed no ledger at all.
  for i, steps in enumerate((5, 7)):
    _write_json(tmp_path / "explore" / f"ledger-shard-{i}-of-2.json",
                {"total": {"env_steps": steps, "policy_calls": 2}, "per_task": {f"t{i}": {}}, "num_tasks": 1})
  _write_json(tmp_path / "eval" / "results.json", {"method": "Base", "model": "m", "tasks": {"a": {"n": 4, "c": 1}}})
  report_stage.run(_config(ks=(1,), records_dir=""), str(tmp_path), str(tmp_path / "report"))
  text = (tmp_path / "report" / "report.md").read_text()
  assert "| env_steps | 12 |" in text and "| policy_calls | 4 |" in text
