"""Unbiased Pass@k estimator against hand values and brute-force enumeration of k-subsets."""

import itertools
from fractions import Fraction
from math import comb

import numpy as np
import pytest

from leafe_jax.eval import passk


def _brute_force(n: int, c: int, k: int) -> Fraction:
  """Fraction of k-subsets of n samples (the first c successful) that contain a success."""
  subsets = list(itertools.combinations(range(n), k))
  return Fraction(sum(any(i < c for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_enumeration_of_all_k_subsets(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      assert passk.pass_at_k(n, c, k) == pytest.approx(float(_brute_force(n, c, k)), abs=1e-12), (n, c, k)


def test_hand_computed_values():
  assert passk.pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
  assert passk.pass_at_k(10, 1, 3) == pytest.approx(0.3)  # 1 - C(9,3)/C(10,3) = 1 - 84/120
  assert passk.pass_at_k(4, 1, 4) == 1.0  # n = k: any success counts
  assert passk.pass_at_k(4, 0, 4) == 0.0
  assert passk.pass_at_k(7, 0, 3) == 0.0  # c = 0
  assert passk.pass_at_k(7, 7, 1) == 1.0  # c = n


def test_pass_at_1_is_mean_success():
  n_T = np.array([10, 20, 5, 128])
  c_T = np.array([3, 0, 5, 17])
  np.testing.assert_allclose(passk.pass_at_k(n_T, c_T, 1), c_T / n_T, rtol=1e-12)
  results = {f"t{i}": (int(n), int(c)) for i, (n, c) in enumerate(zip(n_T, c_T))}
  assert passk.mean_pass_at_k(results, 1) == pytest.approx(np.mean(c_T / n_T))


def test_large_n_is_stable_and_matches_exact_binomials():
  n, k = 1024, 128
  for c in (1, 3, 50, 500, 896, 897):
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert passk.pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12), c


def test_vectorised_over_tasks_with_different_n():
  n_T, c_T = [3, 8, 8, 6], [1, 0, 2, 6]
  got = passk.pass_at_k(n_T, c_T, 3)
  want = [float(_brute_force(n, c, 3)) for n, c in zip(n_T, c_T)]
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_errors_name_the_task():
  with pytest.raises(ValueError, match=r"at least k=5 .*task 'b' has n=4"):
    passk.mean_pass_at_k({"a": (8, 1), "b": (4, 1)}, 5)
  with pytest.raises(ValueError, match="more successes"):
    passk.pass_at_k(3, 4, 1)
  with pytest.raises(ValueError, match="k >= 1"):
    passk.pass_at_k(3, 1, 0)


def test_curve_is_monotone_and_ends_at_any_success_rate():
  results = {"a": (16, 1), "b": (16, 0), "c": (16, 8)}
  curve = passk.pass_at_k_curve(results)
  assert list(curve) == list(range(1, 17))
  values = list(curve.values())
  assert all(a <= b + 1e-15 for a, b in zip(values, values[1:]))
  assert values[-1] == pytest.approx(2 / 3)
