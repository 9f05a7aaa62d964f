"""The trainer's feed over several records folders: one epoch is one pass over each folder, and it resumes."""

import collections
import os
import shutil

import numpy as np
import pytest

from leafe_jax.data import pipeline, records
from leafe_jax.train.feed import TrainFeed

FP = "tok-feed"
SEQ_LEN = 16


def _folder(path, length, first_id, n=40):
  """n records of `length` tokens; each ends with its own id (first_id + i), the only target."""
  with records.RecordWriter(str(path), FP, shard_size=16, writer_id="w") as writer:
    for i in range(n):
      writer.write(records.CorrectionRecord(input_ids=[5] * (length - 1) + [first_id + i],
                                            loss_mask=[0] * (length - 1) + [1], weight=1.0, kind="cf",
                                            task_id=f"t{first_id + i}", tokenizer=FP))
  return str(path)


def _feed(folders, seed=3):
  return TrainFeed(folders, seq_len=SEQ_LEN, batch_size=2, pack=True, seed=seed, kinds=None, process_index=0,
                   process_count=1, expected_tokenizer=FP)


def test_an_epoch_reads_every_folder_once_whatever_its_records_lengths(tmp_path):
  # 40 short records pack 4 to a row (5 batches), 40 long ones 1 to a row (20 batches): a share by record
  # count would read the short folder 2.6 times and the long one 0.6 times per epoch.
  short, long = _folder(tmp_path / "short", 4, 1000), _folder(tmp_path / "long", 16, 2000)
  feed = _feed([short, long])
  assert feed.folder_rows_per_epoch() == [10, 40] and feed.steps_for_epochs(1) == 25
  seen = collections.Counter()
  for _ in range(feed.steps_for_epochs(1)):
    batch = feed.next()
    ids = batch["input_ids_BxT"][batch["loss_mask_BxT"] > 0]
    seen.update(int(t) for t in ids)
  assert sorted(seen) == list(range(1000, 1040)) + list(range(2000, 2040))
  assert set(seen.values()) == {1}


def test_a_restored_feed_continues_with_the_same_batches(tmp_path):
  folders = [_folder(tmp_path / "short", 4, 1000), _folder(tmp_path / "long", 16, 2000)]
  whole = _feed(folders)
  reference = [whole.next() for _ in range(12)]
  first = _feed(folders)
  for _ in range(7):
    first.next()
  resumed = _feed(folders)
  resumed.restore(first.state())
  for want in reference[7:]:
    got = resumed.next()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("spelling", ["relative", "moved"])
def test_a_feed_resumes_when_the_workdir_is_spelled_or_mounted_differently(tmp_path, monkeypatch, spelling):
  # A preempted job resubmitted with a relative --workdir, or on a host that mounts it elsewhere: the same records
  # at another path string.
  folder = _folder(tmp_path / "w" / "records", 4, 1000)
  reference = _feed([folder])
  want = [reference.next() for _ in range(9)]
  first = _feed([folder])
  for _ in range(4):
    first.next()
  if spelling == "relative":
    monkeypatch.chdir(tmp_path)
    other = os.path.join("w", "records")
  else:
    shutil.copytree(tmp_path / "w", tmp_path / "moved")
    other = str(tmp_path / "moved" / "records")
  resumed = _feed([other])
  resumed.restore(first.state())
  for expected in want[4:]:
    got = resumed.next()
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])


def test_a_feed_refuses_the_position_of_other_records_or_another_folder_count(tmp_path):
  folder, other = _folder(tmp_path / "a", 4, 1000), _folder(tmp_path / "b", 4, 1000, n=39)
  first = _feed([folder])
  first.next()
  with pytest.raises(ValueError, match="records or the data options changed"):
    _feed([other]).restore(first.state())
  with pytest.raises(ValueError, match="checkpoint data state is for records folders"):
    _feed([folder, other]).restore(first.state())


def _mixed_length_folder(path, n=36, seq_len=64, seed=0):
  """n records of 6..39 tokens; each ends with its own id 1000 + i (its only target)."""
  rng = np.random.default_rng(seed)
  with records.RecordWriter(str(path), FP, shard_size=16, writer_id="w") as writer:
    for i in range(n):
      length = int(rng.integers(6, seq_len - 24))
      writer.write(records.CorrectionRecord(input_ids=[5] * (length - 1) + [1000 + i],
                                            loss_mask=[0] * (length - 1) + [1], kind="cf", tokenizer=FP))
  return str(path)


@pytest.mark.parametrize("batch_size", [2, 4])
def test_the_first_epoch_of_the_feed_reads_no_record_twice(tmp_path, batch_size):
  # A small records folder (fewer records than a packing window, as the demo's): the trainer's stream repeats
  # forever; its first whole batches are the one-epoch stream, with no record twice.
  folder = _mixed_length_folder(tmp_path / "records")
  feed = TrainFeed([folder], seq_len=64, batch_size=batch_size, pack=True, seed=0, kinds=None, process_index=0,
                   process_count=1, expected_tokenizer=FP)
  one_epoch = list(pipeline.build_dataset(pipeline.scan(folder, 64), 64, batch_size, seed=0,
                                          num_epochs=1).as_numpy_iterator())
  stream = [feed.next() for _ in range(len(one_epoch))]
  seen = collections.Counter()
  for batch in stream:
    ids = batch["input_ids_BxT"]
    seen.update(int(x) for x in ids[ids >= 1000])
  twice = sorted(i - 1000 for i, count in seen.items() if count > 1)
  assert not twice, f"records {twice} are read more than once in the first epoch ({len(one_epoch)} batches)"
  for got, want in zip(stream, one_epoch, strict=True):
    for key in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("batch_size,num_epochs", [(4, 1), (4, 3), (8, 2), (64, 1)])
def test_the_steps_for_some_epochs_train_every_record_that_many_times(tmp_path, batch_size, num_epochs):
  # Rounding the epoch's rows down to whole batches left the last rows of a small folder unread (a batch larger
  # than the folder trained on nothing at all); rounded up, the last batch takes the next pass's first rows.
  folder = _mixed_length_folder(tmp_path / "records")
  feed = TrainFeed([folder], seq_len=64, batch_size=batch_size, pack=True, seed=0, kinds=None, process_index=0,
                   process_count=1, expected_tokenizer=FP)
  rows = feed.folder_rows_per_epoch()[0]
  steps = feed.steps_for_epochs(num_epochs)
  assert steps == -(-rows * num_epochs // batch_size)
  seen = collections.Counter({1000 + i: 0 for i in range(36)})
  for _ in range(steps):
    ids = feed.next()["input_ids_BxT"]
    seen.update(int(x) for x in ids[ids >= 1000])
  assert min(seen.values()) >= num_epochs, f"records trained fewer than {num_epochs} times: {seen}"
  assert max(seen.values()) <= num_epochs + -(-batch_size // rows), seen


def test_two_folders_are_each_covered_for_the_epochs_asked(tmp_path):
  short, long = _folder(tmp_path / "short", 4, 1000, n=9), _folder(tmp_path / "long", 16, 2000, n=5)
  feed = TrainFeed([short, long], seq_len=SEQ_LEN, batch_size=4, pack=True, seed=1, kinds=None, process_index=0,
                   process_count=1, expected_tokenizer=FP)
  assert feed.folder_rows_per_epoch() == [3, 5]
  seen = collections.Counter({i: 0 for i in [*range(1000, 1009), *range(2000, 2005)]})
  for _ in range(feed.steps_for_epochs(2)):  # ceil(6 / 4) + ceil(10 / 4) = 5
    batch = feed.next()
    seen.update(int(t) for t in batch["input_ids_BxT"][batch["loss_mask_BxT"] > 0])
  assert feed.steps_for_epochs(2) == 5 and min(seen.values()) >= 2, seen

