"""Result tables in the paper's layout: rows = methods, columns = model x (P@1, P@k), values in % success.

Input: {method: {model: {task_id: (n, c)}}}. Output as markdown (best value per column in bold, as in the
paper), CSV, or JSON (values plus the task counts behind each cell).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence

from leafe_jax.eval import passk

Results = Mapping[str, Mapping[str, Mapping[str, passk.TaskResult]]]
# Percent values are printed with this many decimals (the paper prints two).
DECIMALS = 2
MISSING = "—"


@dataclasses.dataclass(frozen=True)
class Table:
  methods: tuple[str, ...]
  models: tuple[str, ...]
  ks: tuple[int, ...]
  # (method, model, k) -> percent; absent when the method was not run on that model.
  values: Mapping[tuple[str, str, int], float]
  num_tasks: Mapping[tuple[str, str], int]

  def columns(self) -> list[tuple[str, int]]:
    return [(model, k) for model in self.models for k in self.ks]


def build_table(results: Results, ks: Sequence[int] = (1, 128), methods: Sequence[str] | None = None,
                models: Sequence[str] | None = None) -> Table:
  """Computes mean pass@k (in %) per method, model and k. Orders follow `methods`/`models` or first appearance."""
  if not results:
    raise ValueError("build_table got no results")
  methods = tuple(methods) if methods is not None else tuple(results)
  if models is None:
    models = tuple(dict.fromkeys(m for per_model in results.values() for m in per_model))
  values, num_tasks = {}, {}
  for method in methods:
    for model in models:
      tasks = results.get(method, {}).get(model)
      if not tasks:
        continue
      num_tasks[(method, model)] = len(tasks)
      for k in ks:
        try:
          values[(method, model, k)] = 100.0 * passk.mean_pass_at_k(tasks, k)
        except ValueError as e:
          raise ValueError(f"method {method!r}, model {model!r}: {e}") from e
  return Table(methods=methods, models=tuple(models), ks=tuple(ks), values=values, num_tasks=num_tasks)


# The name the report stage uses.
results_table = build_table


def _header(model: str, k: int) -> str:
  return f"{model} P@{k}"


def _fmt(value: float | None) -> str:
  return MISSING if value is None else f"{value:.{DECIMALS}f}"


def to_markdown(table: Table, bold_best: bool = True) -> str:
  cols = table.columns()
  best = {}
  for model, k in cols:
    present = [round(v, DECIMALS) for (_, mo, kk), v in table.values.items() if (mo, kk) == (model, k)]
    best[(model, k)] = max(present) if present else None
  lines = ["| Method | " + " | ".join(_header(m, k) for m, k in cols) + " |",
           "|---|" + "---|" * len(cols)]
  for method in table.methods:
    cells = []
    for model, k in cols:
      value = table.values.get((method, model, k))
      text = _fmt(value)
      if bold_best and value is not None and round(value, DECIMALS) == best[(model, k)]:
        text = f"**{text}**"
      cells.append(text)
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["method"] + [_header(m, k) for m, k in table.columns()])
  for method in table.methods:
    row = [table.values.get((method, model, k)) for model, k in table.columns()]
    writer.writerow([method] + ["" if v is None else f"{v:.{DECIMALS}f}" for v in row])
  return buf.getvalue()


def to_json(table: Table) -> str:
  """{"ks", "methods", "models", "rows": [{"method", "model", "num_tasks", "pass@1": %, ...}]} (full precision)."""
  rows = []
  for method in table.methods:
    for model in table.models:
      if (method, model) not in table.num_tasks:
        continue
      row = {"method": method, "model": model, "num_tasks": table.num_tasks[(method, model)]}
      row.update({f"pass@{k}": table.values[(method, model, k)] for k in table.ks})
      rows.append(row)
  doc = {"unit": "percent", "ks": list(table.ks), "methods": list(table.methods), "models": list(table.models),
         "rows": rows}
  return json.dumps(doc, indent=1)


def write_table(table: Table, folder: str, name: str = "pass_at_k") -> dict[str, str]:
  """Writes <name>.md, <name>.csv and <name>.json under `folder`; returns {format: path}."""
  os.makedirs(folder, exist_ok=True)
  paths = {}
  for fmt, render in [("md", to_markdown), ("csv", to_csv), ("json", to_json)]:
    path = os.path.join(folder, f"{name}.{fmt}")
    with open(path, "w") as f:
      f.write(render(table))
    paths[fmt] = path
  return paths
