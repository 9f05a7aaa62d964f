"""Pass@k curves (k = 1..n, log-2 x axis), one line per method; one panel per model."""

from __future__ import annotations

import os
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from leafe_jax.eval import passk

PANEL_SIZE = (5.0, 3.6)  # inches per model panel
DPI = 150


def _panels(results: Mapping) -> dict[str, dict[str, Mapping[str, passk.TaskResult]]]:
  """{model or "": {method: {task_id: (n, c)}}} from either accepted input shape."""
  panels: dict[str, dict[str, Mapping[str, passk.TaskResult]]] = {}
  for method, inner in results.items():
    if not inner:
      raise ValueError(f"plot_pass_at_k: method {method!r} has no results")
    per_model = isinstance(next(iter(inner.values())), Mapping)
    for model, tasks in (inner.items() if per_model else [("", inner)]):
      if not tasks:
        raise ValueError(f"plot_pass_at_k: method {method!r}, model {model!r} has no tasks")
      panels.setdefault(model, {})[method] = tasks
  return panels


def plot_pass_at_k(results: Mapping, path: str, title: str = "", max_k: int | None = None) -> str:
  """Writes a PNG of mean pass@k (%) against k; returns `path`.

  `results` is {method: {task_id: (n, c)}} (one panel) or {method: {model: {task_id: (n, c)}}} (one panel per
  model, as tables.build_table takes). Each curve runs over k = 1..min(n) of its tasks, capped by max_k.
  Uses the Agg canvas directly, so it never touches the global matplotlib backend.
  """
  if not results:
    raise ValueError("plot_pass_at_k got no methods")
  panels = _panels(results)
  fig = Figure(figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), dpi=DPI)
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (model, methods) in zip(axes, panels.items()):
    for method, tasks in methods.items():
      top = min(n for n, _ in tasks.values())
      if max_k is not None:
        top = min(top, max_k)
      curve = passk.pass_at_k_curve(tasks, range(1, top + 1))
      ax.plot(list(curve), [100.0 * v for v in curve.values()], label=method, linewidth=1.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per task)")
    ax.set_ylabel("Pass@k (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    if model:
      ax.set_title(model)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png")
  return path
