"""The SFT loss against a plain numpy computation of the weighted, masked next-token NLL."""

import jax.numpy as jnp
import numpy as np
import pytest

from leafe_jax.train import loss as loss_lib
from leafe_jax.train import targets

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


def _gathering_apply(params, ids, logits_positions=None, **_):
  """A fake model whose 'params' are the logits; honours logits_positions like the Decoder does."""
  if logits_positions is None:
    return params
  return jnp.take_along_axis(params, logits_positions[..., None], axis=1)


@pytest.mark.parametrize("width", [None, 5, 8])  # None: logits at every position; else at target positions
@pytest.mark.parametrize("normalization", ["token", "example"])
def test_loss_matches_numpy_weighted_masked_nll(normalization, width):
  batch = _hand_batch()
  if width is not None:
    # Row 1 has the most target positions: 4 (t = 3, 4, 6, 7 predicted from 2, 3, 5, 6).
    assert targets.max_targets_per_row(batch) == 4
    batch[loss_lib.TARGET_INDEX] = targets.target_index(batch, width)
  logits = np.random.default_rng(0).normal(size=(3, 8, VOCAB)).astype(np.float32) * 3
  loss_fn = loss_lib.make_loss_fn(_gathering_apply, normalization, NUM_KINDS)
  jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
  loss, sums = loss_fn(jnp.asarray(logits), jbatch, loss_lib.denominator(jbatch, normalization))
  want, kind_nll, kind_count = _numpy_loss(logits, batch, normalization)
  np.testing.assert_allclose(float(loss), want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(sums["nll_sum_K"]), kind_nll, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(sums["targets_K"]), kind_count)


def test_target_index_lists_each_rows_target_positions_then_pads_with_the_last():
  index = targets.target_index(_hand_batch(), 5)
  np.testing.assert_array_equal(index, [[1, 2, 4, 5, 7],  # row 0: t=2,3 (seg 1) and 6,7 (seg 2); t=4 starts seg 2
                                        [2, 3, 5, 6, 7],
                                        [7, 7, 7, 7, 7]])  # all padding
  np.testing.assert_array_equal(targets.target_index(_hand_batch(), 8), np.tile(np.arange(8), (3, 1)))
  with pytest.raises(ValueError, match="4 target positions, more than width=3"):
    targets.target_index(_hand_batch(), 3)


def test_index_width_is_the_smallest_fraction_that_holds_the_targets():
  assert targets.index_width(10, 1024, (0.125, 0.5)) == 128
  assert targets.index_width(128, 1024, (0.5, 0.125)) == 128
  assert targets.index_width(129, 1024, (0.125, 0.5)) == 512
  assert targets.index_width(600, 1024, (0.125, 0.5)) == 1024  # more than the largest: every position
  assert targets.index_width(3, 1024, ()) == 1024
  assert targets.index_width(3, 1024, (1.0,)) == 1024


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
