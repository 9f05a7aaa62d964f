"""Paired Pass@k differences between methods: hand-computed means and standard errors, bad input."""

import math

import numpy as np
import pytest

from leafe_jax.eval import paired

BASE = {"a": (4, 2), "b": (4, 0)}
LEAFE = {"a": (4, 4), "b": (4, 1)}


def test_paired_difference_matches_hand_computation():
  # Pass@1 per task: Base (0.5, 0), LEAFE (1, 0.25) -> differences (50, 25) points; mean 37.5, sample sd
  # sqrt(2 * 12.5^2) = 17.68, SE = 17.68 / sqrt(2) = 12.5.
  mean, se, n = paired.paired_difference(LEAFE, BASE, 1)
  assert n == 2 and mean == pytest.approx(37.5)
  assert se == pytest.approx(12.5)


def test_paired_difference_uses_only_shared_tasks_and_numpy_agrees():
  rng = np.random.default_rng(0)
  base = {f"t{i}": (8, int(rng.integers(0, 9))) for i in range(30)}
  other = {f"t{i}": (8, int(rng.integers(0, 9))) for i in range(5, 40)}  # t30..t39 have no Base result
  mean, se, n = paired.paired_difference(other, base, 1)
  diffs = np.array([100 * (other[t][1] - base[t][1]) / 8 for t in sorted(set(base) & set(other))])
  assert n == 25
  assert mean == pytest.approx(diffs.mean())
  assert se == pytest.approx(diffs.std(ddof=1) / math.sqrt(25))


def test_differences_default_to_the_first_method_and_skip_it():
  rows = paired.differences({"Base": {"m": BASE}, "LEAFE": {"m": LEAFE}}, ks=(1, 4))
  assert [(r.method, r.reference, r.k) for r in rows] == [("LEAFE", "Base", 1), ("LEAFE", "Base", 4)]
  # Pass@4 with n = 4: a task counts 1 once it has a success; Base (1, 0), LEAFE (1, 1) -> mean 50, SE 50.
  assert (rows[1].mean, rows[1].standard_error) == pytest.approx((50.0, 50.0))
  low, high = rows[1].interval_95
  assert low == pytest.approx(50 - 1.959964 * 50) and high == pytest.approx(50 + 1.959964 * 50)
  assert "| LEAFE | +37.50 ± 12.50 | +50.00 ± 50.00 |" in paired.to_markdown(rows)


def test_one_shared_task_has_no_standard_error():
  mean, se, n = paired.paired_difference({"a": (4, 4)}, {"a": (4, 0), "b": (4, 0)}, 1)
  assert (mean, n) == (pytest.approx(100.0), 1) and math.isnan(se)


def test_bad_input_names_the_problem():
  with pytest.raises(ValueError, match="share no task"):
    paired.paired_difference({"a": (4, 1)}, {"b": (4, 1)}, 1)
  with pytest.raises(ValueError, match="reference method 'GRPO' is not among"):
    paired.differences({"Base": {"m": BASE}}, ks=(1,), reference="GRPO")


def test_a_method_sharing_no_task_with_the_reference_is_left_out():
  rows = paired.differences({"Base": {"m": BASE}, "LEAFE": {"m": LEAFE}, "Other split": {"m": {"z": (4, 1)}}},
                            ks=(1,))
  assert [r.method for r in rows] == ["LEAFE"]
