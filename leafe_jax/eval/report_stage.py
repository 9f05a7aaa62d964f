"""Stage `report`: one markdown report from every eval stage in the workdir (table, Pass@k plot, ledger, tree)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import ml_collections
from absl import logging

from leafe_jax.eval import paired, plots, tables
from leafe_jax.explore.ledger import stage_ledger_files

CONFIG_SECTION = "report"


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.eval_glob = "eval*"  # stage dirs (relative to workdir) whose results.json enter the table ("" = none)
  c.ks = (1, 16)  # Pass@k columns of the table
  # Each method's per-task Pass@k minus this method's on the same tasks, with its standard error ("" = the first
  # method of the table, e.g. Base; None = no such table): whether a gap is larger than the noise.
  c.reference_method = ""
  c.explore_dir = "explore"  # stage dir of the explorer run whose ledger and one tree are shown ("" = none)
  # Explore stage dirs compared as stage-1 samplers (paper Table 3: IS / IR / LEAFE at one budget): coverage
  # (tasks solved at least once) and what it cost, from their ledgers. Empty = no such table.
  c.sampler_dirs = ()
  c.records_dir = "distill/records"  # correction records whose counts per kind are shown ("" = none)
  c.title = "LEAFE reproduction report"  # heading of report.md
  return c


def _load_results(workdir: str, pattern: str, stages=()) -> list[dict]:
  """The results.json of every stage dir matching `pattern`: those of `stages` (ids such as "eval@base", whose
  dir is eval_base) first, in that order (the order the config lists its methods, as the paper's tables do),
  then any other matching dir by name."""
  if not pattern:
    return []
  position = {os.path.join(workdir, entry.replace("@", "_"), "results.json"): i for i, entry in enumerate(stages)}
  paths = glob.glob(os.path.join(workdir, pattern, "results.json"))
  results = []
  for path in sorted(paths, key=lambda p: (position.get(p, len(position)), p)):
    with open(path) as f:
      results.append({**json.load(f), "_dir": os.path.dirname(path)})
  return results


def _cut_short_lines(results: list[dict]) -> list[str]:
  """A line per eval whose samples were cut short (env lost, prompt over the context): counted as unsuccessful
  in the table, they say the setup, not the policy, failed those samples."""
  lines = []
  for r in results:
    cut = {"env errors": r.get("errors", 0), "prompts too long": r.get("prompts_too_long", 0)}
    if any(cut.values()):
      total = sum(t["n"] for t in r["tasks"].values())
      what = ", ".join(f"{v} {k}" for k, v in cut.items() if v)
      lines.append(f"* {r['method']} ({r['model']}): {what} of {total} samples, counted as unsuccessful.")
  return [*lines, ""] if lines else []


def _records_section(folder: str) -> list[str]:
  """Counts per record kind and target tokens of the distilled records (what stage 2 trained on)."""
  path = os.path.join(folder, "manifest.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    manifest = json.load(f)
  counts = {k: v for k, v in manifest.get("counts", {}).items() if v}
  lines = ["## Distilled records (stage 2 data)", "", "| kind | records |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in sorted(counts.items())]
  lines += [f"| target tokens | {manifest.get('num_target_tokens', 0)} |", ""]
  return lines


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _summed_totals(ledgers: list[dict]) -> dict[str, int]:
  """The ledgers' `total` counters summed (the shards of one explore run)."""
  total: dict[str, int] = {}
  for ledger in ledgers:
    for k, v in ledger.get("total", {}).items():
      total[k] = total.get(k, 0) + v
  return total


def _tree_section(workdir: str, explore_dir: str, stage_dir: str) -> list[str]:
  """The explorer's ledger totals and one rendered tree (the first one with a successful branch)."""
  from leafe_jax.explore import show

  root = os.path.join(workdir, explore_dir)
  lines: list[str] = []
  ledgers = [_read_json(p) for p in stage_ledger_files(root)] if os.path.isdir(root) else []
  if ledgers:  # one ledger.json, or every shard's of a sharded explore
    totals = _summed_totals(ledgers)
    lines += ["## Exploration ledger (totals)", "", "| counter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(totals.items())]
    lines.append("")
  tree_files = sorted(glob.glob(os.path.join(root, "trees", "*.jsonl")))
  if tree_files:
    text, png = show.render_example(tree_files, os.path.join(stage_dir, "tree.png"))
    lines += ["## One backtrack tree", "", "```", text, "```", "", f"![tree]({os.path.basename(png)})", ""]
  return lines


def sampler_rows(workdir: str, sampler_dirs) -> list[dict]:
  """One row per explore stage dir: tasks, coverage and interaction cost, summed over its ledger shards."""
  rows = []
  for name in sampler_dirs:
    folder = os.path.join(workdir, name)
    paths = stage_ledger_files(folder) if os.path.isdir(folder) else []
    if not paths:
      raise FileNotFoundError(f"report: {os.path.join(workdir, name)} has no ledger*.json: run that explore stage")
    ledgers = [_read_json(p) for p in paths]
    tasks = sum(ledger.get("num_tasks") or len(ledger["per_task"]) for ledger in ledgers)
    solved = sum(1 for ledger in ledgers for counts in ledger["per_task"].values() if counts.get("successes"))
    total = _summed_totals(ledgers)
    rows.append({
        "sampler": name, "tasks": tasks, "solved": solved, "coverage": 100.0 * solved / tasks if tasks else 0.0,
        "interaction_steps": total.get("env_steps", 0) + total.get("replayed_steps", 0),
        "rollouts": total.get("rollouts", 0), "policy_calls": total.get("policy_calls", 0),
        "generated_tokens": total.get("generated_tokens", 0),
    })
  return rows


def _differences_section(rows: list[paired.Difference], path: str) -> list[str]:
  with open(path, "w") as f:
    json.dump([{**dataclasses.asdict(r), "interval_95": r.interval_95} for r in rows], f, indent=1)
  if not rows:
    return []
  reference, tasks = rows[0].reference, sorted({r.num_tasks for r in rows})
  return [f"## Difference from {reference} (paired over the same tasks)", "",
          f"Mean over tasks of each task's Pass@k minus {reference}'s, in percent points, ± its standard error "
          f"({'/'.join(map(str, tasks))} tasks); a gap within two standard errors of 0 is noise.", "",
          paired.to_markdown(rows)]


def _samplers_section(rows: list[dict], stage_dir: str) -> list[str]:
  with open(os.path.join(stage_dir, "samplers.json"), "w") as f:
    json.dump(rows, f, indent=1)
  lines = ["## Stage-1 samplers at one budget (coverage = tasks solved at least once)", "",
           "| sampler | tasks | solved | coverage % | interaction steps | rollouts | policy calls | generated tokens |",
           "|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r['sampler']} | {r['tasks']} | {r['solved']} | {r['coverage']:.2f} | {r['interaction_steps']} | "
            f"{r['rollouts']} | {r['policy_calls']} | {r['generated_tokens']} |" for r in rows]
  return [*lines, ""]


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  cfg = config.report
  os.makedirs(stage_dir, exist_ok=True)
  results = _load_results(workdir, cfg.eval_glob, tuple(config.get("stages", ())))
  samplers = sampler_rows(workdir, cfg.sampler_dirs)
  if not results and not samplers:
    raise FileNotFoundError(f"report: no {cfg.eval_glob}/results.json under {workdir}: run the eval stages first")
  lines = [f"# {cfg.title}", ""]
  if results:
    by_method: dict = {}
    source: dict = {}  # (method, model) -> the stage dir its cell comes from
    for r in results:
      cell = (r["method"], r["model"])
      if cell in source:  # one cell, two evals: the table would show whichever came last
        raise ValueError(f"report: {source[cell]} and {r['_dir']} both hold results of method {cell[0]!r} on model "
                         f"{cell[1]!r}; give one eval another eval.method / eval.model_label, or move it out of "
                         f"{cfg.eval_glob!r}")
      source[cell] = r["_dir"]
      by_method.setdefault(r["method"], {})[r["model"]] = {t: (v["n"], v["c"]) for t, v in r["tasks"].items()}
    table = tables.results_table(by_method, ks=tuple(cfg.ks))
    tables.write_table(table, stage_dir)
    png = plots.plot_pass_at_k(by_method, os.path.join(stage_dir, "pass_at_k.png"))
    lines += ["## Pass@k on held-out tasks", "", tables.to_markdown(table), ""]
    lines += _cut_short_lines(results)
    differences_path = os.path.join(stage_dir, "paired_differences.json")
    if os.path.exists(differences_path):  # an earlier report's, which this one may not replace
      os.remove(differences_path)
    if cfg.reference_method is not None and len(by_method) > 1:
      lines += _differences_section(paired.differences(by_method, tuple(cfg.ks), cfg.reference_method or None),
                                    differences_path)
    lines += [f"![Pass@k]({os.path.basename(png)})", ""]
  if samplers:
    lines += _samplers_section(samplers, stage_dir)
  if cfg.records_dir:
    lines += _records_section(os.path.join(workdir, cfg.records_dir))
  if cfg.explore_dir:
    lines += _tree_section(workdir, cfg.explore_dir, stage_dir)
  report_path = os.path.join(stage_dir, "report.md")
  with open(report_path, "w") as f:
    f.write("\n".join(lines))
  logging.info("report written to %s", report_path)
  print(f"Report: {report_path}")
