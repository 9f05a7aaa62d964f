"""Paired differences of Pass@k between methods, with standard errors over tasks.

Every method of a report is evaluated on the same held-out tasks, so the question "is LEAFE above Base?" is about
the mean over tasks of the per-task difference pass@k(LEAFE) - pass@k(Base). Pairing removes the spread of task
difficulty, which dominates the standard error of each cell alone (Miller 2024, "Adding Error Bars to Evals",
§4). The standard error is the sample standard deviation of the per-task differences over sqrt(number of
tasks); each per-task difference is itself an unbiased estimate from the task's samples, so their spread holds
the sampling noise within a task as well as the differences between tasks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from leafe_jax.eval import passk

# A two-sided 95% normal interval is the difference +- Z_95 standard errors.
Z_95 = 1.959964


@dataclasses.dataclass(frozen=True)
class Difference:
  method: str
  reference: str
  model: str
  k: int
  mean: float  # percent points, method minus reference
  standard_error: float  # percent points; nan with fewer than two paired tasks
  num_tasks: int  # tasks both methods were evaluated on

  @property
  def interval_95(self) -> tuple[float, float]:
    half = Z_95 * self.standard_error
    return self.mean - half, self.mean + half


def paired_difference(results: Mapping[str, passk.TaskResult], reference: Mapping[str, passk.TaskResult],
                      k: int) -> tuple[float, float, int]:
  """(mean, standard error, tasks) of per-task pass@k(results) - pass@k(reference) in percent points, over the
  tasks both hold. Errors when they share no task."""
  tasks = sorted(set(results) & set(reference))
  if not tasks:
    raise ValueError("paired_difference: the two results share no task id")
  scores_T, reference_T = (
      passk.pass_at_k([r[t][0] for t in tasks], [r[t][1] for t in tasks], k, task_names=tasks)
      for r in (results, reference))
  diff_T = 100.0 * (scores_T - reference_T)
  se = float(diff_T.std(ddof=1) / np.sqrt(len(tasks))) if len(tasks) > 1 else float("nan")
  return float(diff_T.mean()), se, len(tasks)


def differences(results: Mapping[str, Mapping[str, Mapping[str, passk.TaskResult]]], ks: Sequence[int],
                reference: str | None = None) -> list[Difference]:
  """Each method against `reference` (default: the first method) on every model both were evaluated on and on
  the tasks both hold (a pair with no task in common, e.g. evals of other splits, is left out);
  results = {method: {model: {task_id: (n, c)}}}, in the table's order."""
  methods = list(results)
  reference = reference or (methods[0] if methods else None)
  if reference not in results:
    raise ValueError(f"paired differences: reference method {reference!r} is not among the results {methods}")
  rows = []
  for method in methods:
    if method == reference:
      continue
    for model, tasks in results[method].items():
      if model not in results[reference] or not set(tasks) & set(results[reference][model]):
        continue
      for k in ks:
        mean, se, n = paired_difference(tasks, results[reference][model], k)
        rows.append(Difference(method, reference, model, int(k), mean, se, n))
  return rows


def to_markdown(rows: Sequence[Difference]) -> str:
  """Rows = methods, columns = model x P@k, cells "Δ ± SE" in percent points."""
  columns = list(dict.fromkeys((r.model, r.k) for r in rows))
  cells = {(r.method, r.model, r.k): r for r in rows}
  lines = ["| Method | " + " | ".join(f"{model} ΔP@{k}" for model, k in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for method in dict.fromkeys(r.method for r in rows):
    texts = []
    for model, k in columns:
      row = cells.get((method, model, k))
      texts.append("—" if row is None else f"{row.mean:+.2f} ± {row.standard_error:.2f}")
    lines.append(f"| {method} | " + " | ".join(texts) + " |")
  return "\n".join(lines) + "\n"
