"""Pass@k curves (k = 1..n, log-2 x axis), one line per method, for one model."""

from __future__ import annotations

import os
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from leafe_jax.eval import passk

FIGSIZE = (5.0, 3.6)
DPI = 150


def plot_pass_at_k(results: Mapping[str, Mapping[str, passk.TaskResult]], path: str, title: str = "",
                   max_k: int | None = None) -> str:
  """Writes a PNG of mean pass@k (%) against k for each method of {method: {task_id: (n, c)}}; returns path.

  k runs over 1..min(n) of each method's tasks (capped by max_k). Uses the Agg canvas directly, so it never
  touches the global matplotlib backend.
  """
  if not results:
    raise ValueError("plot_pass_at_k got no methods")
  fig = Figure(figsize=FIGSIZE, dpi=DPI)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for method, tasks in results.items():
    if not tasks:
      raise ValueError(f"plot_pass_at_k: method {method!r} has no tasks")
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
  if title:
    ax.set_title(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, format="png")
  return path
