"""The SFT loss against a plain numpy computation of the weighted, masked next-token NLL."""

import jax.numpy as jnp
import numpy as np
import pytest

from leafe_jax.train import loss as loss_lib

VOCAB = 11
NUM_KINDS = 5


def _hand_batch():
  # Row 0: two packed examples (segments 1, 2) then padding; row 1: one example; row 2: all padding.
  input_ids = np.array([[1, 4, 5, 6, 2, 7, 8, 0], [3, 9, 10, 4, 5, 6, 7, 8], [0] * 8], np.int32)
  segment_ids = np.array([[1, 1, 1, 1, 2, 2, 2, 0], [1] * 8, [0] * 8], np.int32)
  positions = np.array([[0, 1, 2, 3, 0, 1, 2, 0], list(range(8)), [0] * 8], np.int32)
  # loss_mask 1 on a segment's first token of segment 2 checks the cross-segment rule (must not count).
  loss_mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 1, 1], [0] * 8], np.float32)
  weight = np.array([[1, 1, 1, 1, 0.5, 0.5, 0.5, 0], [2.0] * 8, [0] * 8], np.float32)
  kind = np.array([[0, 0, 0, 0, 1, 1, 1, 0], [1] * 8, [0] * 8], np.int32)
  return {
      "input_ids_BxT": input_ids,
      "segment_ids_BxT": segment_ids,
      "positions_BxT": positions,
      "loss_mask_BxT": loss_mask,
      "weight_BxT": weight,
      "kind_BxT": kind,
  }


def _numpy_loss(logits, batch, normalization):
  """Explicit loops: per example (row, segment), the list of (nll, weight) of its counted targets."""
  examples = {}
  kind_nll = np.zeros(NUM_KINDS)
  kind_count = np.zeros(NUM_KINDS)
  b_size, t_size = batch["input_ids_BxT"].shape
  for b in range(b_size):
    for t in range(1, t_size):
      seg = batch["segment_ids_BxT"][b]
      if batch["loss_mask_BxT"][b, t] != 1 or seg[t] == 0 or seg[t - 1] != seg[t]:
        continue
      row = logits[b, t - 1].astype(np.float64)
      log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
      nll = log_z - row[batch["input_ids_BxT"][b, t]]
      examples.setdefault((b, seg[t]), []).append((nll, batch["weight_BxT"][b, t]))
      kind_nll[batch["kind_BxT"][b, t]] += nll
      kind_count[batch["kind_BxT"][b, t]] += 1
  if normalization == "token":
    num = sum(w * nll for ex in examples.values() for nll, w in ex)
    den = sum(w for ex in examples.values() for _, w in ex)
    return num / den, kind_nll, kind_count
  per_example = [ex[0][1] * np.mean([nll for nll, _ in ex]) for ex in examples.values()]
  return np.mean(per_example), kind_nll, kind_count


@pytest.mark.parametrize("normalization", ["token", "example"])
def test_loss_matches_numpy_weighted_masked_nll(normalization):
  batch = _hand_batch()
  logits = np.random.default_rng(0).normal(size=(3, 8, VOCAB)).astype(np.float32) * 3
  loss_fn = loss_lib.make_loss_fn(lambda params, ids, **_: params, normalization, NUM_KINDS)
  jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
  loss, sums = loss_fn(jnp.asarray(logits), jbatch, loss_lib.denominator(jbatch, normalization))
  want, kind_nll, kind_count = _numpy_loss(logits, batch, normalization)
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(sums["nll_sum_K"]), kind_nll, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(sums["targets_K"]), kind_count)


def test_example_normalization_counts_examples_once_whatever_their_length():
  batch = _hand_batch()
  jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
  # Examples with targets: (row 0, seg 1), (row 0, seg 2), (row 1, seg 1).
  assert float(loss_lib.denominator(jbatch, "example")) == pytest.approx(3.0)
  # token: seg 1 has 2 targets (w 1), seg 2 has 2 (t=5,6,7 minus first token t=4... t=5,6) (w .5), row 1 has 4 (w 2).
  assert float(loss_lib.denominator(jbatch, "token")) == pytest.approx(2 * 1 + 2 * 0.5 + 4 * 2)


def test_all_padding_batch_gives_zero_loss_not_nan():
  batch = {k: jnp.asarray(v[2:]) for k, v in _hand_batch().items()}
  loss_fn = loss_lib.make_loss_fn(lambda params, ids, **_: params, "token", NUM_KINDS)
  loss, _ = loss_fn(jnp.ones((1, 8, VOCAB)), batch, loss_lib.denominator(batch, "token"))
  assert float(loss) == 0.0


def test_unknown_normalization_is_refused():
  with pytest.raises(ValueError, match="loss_normalization"):
    loss_lib.make_loss_fn(lambda *a, **k: None, "sequence", NUM_KINDS)
