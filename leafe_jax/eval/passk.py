"""Unbiased Pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code").

For a task with n independent samples of which c succeed, pass@k = 1 - C(n-c, k) / C(n, k): the probability that
a random k-subset of the n samples holds at least one success. The ratio of binomials is computed as the
product prod_{i=n-c+1}^{n} (1 - k/i), here in log space (sum of log1p), which neither overflows nor loses
precision for n in the thousands. The benchmark score is the mean over tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# A task's result: (number of samples n, number of successes c).
TaskResult = tuple[int, int]


def _check(n_T: np.ndarray, c_T: np.ndarray, k: int, names: Sequence[str] | None) -> None:
  def name(i: int) -> str:
    return repr(names[i]) if names is not None else f"#{i}"

  if isinstance(k, bool) or int(k) != k or k < 1:
    raise ValueError(f"pass@k needs an integer k >= 1, got {k!r}")
  for cond, what in [(n_T < 1, "has n < 1 samples"), (c_T < 0, "has c < 0 successes"),
                     (c_T > n_T, "has more successes c than samples n")]:
    bad = np.flatnonzero(cond)
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"task {name(i)} {what} (n={int(n_T[i])}, c={int(c_T[i])})")
  bad = np.flatnonzero(n_T < k)
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"pass@{k} needs at least k={k} samples per task; task {name(i)} has n={int(n_T[i])} "
                     f"({bad.size} task(s) too few)")


def pass_at_k(n: int | Sequence[int] | np.ndarray, c: int | Sequence[int] | np.ndarray, k: int,
              task_names: Sequence[str] | None = None) -> np.ndarray:
  """Per-task unbiased pass@k (float64 array, or a 0-d array for scalar inputs). Errors when k > n."""
  n_T = np.asarray(n, dtype=np.int64)
  c_T = np.asarray(c, dtype=np.int64)
  scalar = n_T.ndim == 0 and c_T.ndim == 0
  n_T, c_T = np.broadcast_arrays(np.atleast_1d(n_T), np.atleast_1d(c_T))
  _check(n_T, c_T, k, task_names)
  fails_T = n_T - c_T
  # i runs over 1..max(n); the factor (1 - k/i) enters the product for i in (n - c, n].
  i_I = np.arange(1, int(n_T.max()) + 1, dtype=np.float64)
  inside_TxI = (i_I[None, :] > fails_T[:, None]) & (i_I[None, :] <= n_T[:, None])
  with np.errstate(divide="ignore", invalid="ignore"):
    log_terms_TxI = np.where(inside_TxI, np.log1p(-k / i_I[None, :]), 0.0)
  all_fail_ratio_T = np.exp(log_terms_TxI.sum(axis=1))
  # Fewer than k failures: every k-subset contains a success.
  out_T = np.where(fails_T < k, 1.0, 1.0 - all_fail_ratio_T)
  return out_T.reshape(()) if scalar else out_T


def mean_pass_at_k(results: Mapping[str, TaskResult], k: int) -> float:
  """Mean pass@k over the tasks of `results` ({task_id: (n, c)})."""
  if not results:
    raise ValueError("mean_pass_at_k got no tasks")
  names = list(results)
  n_T = np.array([results[t][0] for t in names])
  c_T = np.array([results[t][1] for t in names])
  return float(pass_at_k(n_T, c_T, k, task_names=names).mean())


def pass_at_k_curve(results: Mapping[str, TaskResult], ks: Iterable[int] | None = None) -> dict[int, float]:
  """{k: mean pass@k} for k in `ks` (default 1..min n over tasks)."""
  if not results:
    raise ValueError("pass_at_k_curve got no tasks")
  if ks is None:
    ks = range(1, min(n for n, _ in results.values()) + 1)
  return {int(k): mean_pass_at_k(results, int(k)) for k in ks}
