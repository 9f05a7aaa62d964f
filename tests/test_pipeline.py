"""tf.data reader: packing invariants, padding, host split, exact resume, and the bad-input errors."""

import collections
import itertools
import os
import pathlib

import numpy as np
import pytest

from leafe_jax.data import pipeline, records

FP = "tok-test-a"
SEQ_LEN = 16


def _record(i: int, length: int, kind: str = "cf") -> records.CorrectionRecord:
  rng = np.random.default_rng(i)
  ids = [int(t) for t in rng.integers(1, 900, size=length - 1)] + [1000 + i]  # unique last token
  mask = [int(m) for m in rng.integers(0, 2, size=length - 1)] + [1]
  return records.CorrectionRecord(input_ids=ids, loss_mask=mask, weight=0.25 * (i % 4 + 1), kind=kind,
                                  task_id=f"t{i}", tokenizer=FP)


def _lengths(n):
  return [3 + (7 * i) % (SEQ_LEN + 4) for i in range(n)]  # a few longer than SEQ_LEN


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("records"))
  with records.RecordWriter(path, FP, shard_size=10, writer_id="host0") as w:
    for i, length in enumerate(_lengths(40)):
      w.write(_record(i, length, records.KINDS[i % len(records.KINDS)]))
  return path


def _expected_segments(folder, kinds=None):
  """Independent reference: each record's kept tokens (last SEQ_LEN), its mask with the first cleared."""
  out = collections.Counter()
  for rec in records.iter_records(folder, kinds):
    ids, mask = list(rec.input_ids)[-SEQ_LEN:], list(rec.loss_mask)[-SEQ_LEN:]
    mask[0] = 0
    out[(tuple(ids), tuple(mask), rec.weight, records.KINDS.index(rec.kind))] += 1
  return out


def _segments(batches):
  """Splits every row into its segments, checking the per-row invariants on the way."""
  out = collections.Counter()
  for batch in batches:
    for b in range(batch["input_ids_BxT"].shape[0]):
      row = {k: v[b] for k, v in batch.items()}
      seg = row["segment_ids_BxT"]
      real = seg > 0
      # Padding only at the end; segment ids 1, 2, ... in order; no segment interleaves with another.
      assert np.all(real[: real.sum()]) and not np.any(real[real.sum():])
      assert np.all(np.diff(seg[real]) >= 0) and (seg[real][0] == 1 if real.any() else True)
      assert set(np.unique(seg[real])) == set(range(1, seg.max() + 1))
      assert np.all(row["loss_mask_BxT"][~real] == 0) and np.all(row["weight_BxT"][~real] == 0)
      assert np.all(row["kind_BxT"][~real] == pipeline.PAD_KIND)
      for s in range(1, seg.max() + 1):
        at = seg == s
        np.testing.assert_array_equal(row["positions_BxT"][at], np.arange(at.sum()))
        weight, kind = row["weight_BxT"][at], row["kind_BxT"][at]
        assert np.all(weight == weight[0]) and np.all(kind == kind[0])
        out[(tuple(row["input_ids_BxT"][at].tolist()), tuple(int(m) for m in row["loss_mask_BxT"][at]),
             float(weight[0]), int(kind[0]))] += 1
  return out


def test_batch_dtypes_and_static_shapes(folder):
  ds = pipeline.make_dataset(folder, seq_len=SEQ_LEN, batch_size=4, expected_tokenizer=FP)
  spec = ds.element_spec
  assert set(spec) == set(pipeline.BATCH_KEYS)
  for key, dtype in [("input_ids_BxT", "int32"), ("loss_mask_BxT", "float32"), ("weight_BxT", "float32"),
                     ("segment_ids_BxT", "int32"), ("positions_BxT", "int32"), ("kind_BxT", "int32")]:
    assert spec[key].shape.as_list() == [4, SEQ_LEN] and spec[key].dtype.name == dtype


@pytest.mark.parametrize("pack", [True, False])
def test_one_epoch_holds_every_record_once(folder, pack):
  ds = pipeline.make_dataset(folder, seq_len=SEQ_LEN, batch_size=1, pack=pack, num_epochs=1, seed=3)
  batches = list(ds.as_numpy_iterator())
  assert _segments(batches) == _expected_segments(folder)
  rows = len(batches)
  if pack:
    assert rows < 40  # packing put several examples in a row
  else:
    assert rows == 40


def test_reading_leaves_no_generated_files_in_the_temp_dir(folder, tmp_path, monkeypatch):
  import tempfile

  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where AutoGraph would write its generated modules
  pipeline.scan(folder, SEQ_LEN, expected_tokenizer=FP)
  ds = pipeline.make_dataset(folder, seq_len=SEQ_LEN, batch_size=2, num_epochs=1, kinds=("cf", "sr"))
  assert next(ds.as_numpy_iterator())["input_ids_BxT"].shape == (2, SEQ_LEN)
  assert list(scratch.iterdir()) == []


def test_kinds_filter(folder):
  ds = pipeline.make_dataset(folder, seq_len=SEQ_LEN, batch_size=1, num_epochs=1, kinds=("cf", "sr"))
  assert _segments(ds.as_numpy_iterator()) == _expected_segments(folder, kinds=("cf", "sr"))


def test_pack_examples_first_fit_and_left_truncation():
  lengths = np.array([5, 6, 3, 12, 2])
  ids = np.arange(1, lengths.sum() + 1)
  mask = np.ones_like(ids)
  out = dict(zip(pipeline.BATCH_KEYS, pipeline.pack_examples(
      ids, mask, lengths, np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([0, 1, 2, 3, 4]), seq_len=10)))
  # first fit: [5 | 3 | 2] in row 0, [6] in row 1, [12 -> last 10] in row 2
  np.testing.assert_array_equal(out["segment_ids_BxT"], [[1] * 5 + [2] * 3 + [3] * 2, [1] * 6 + [0] * 4, [1] * 10])
  np.testing.assert_array_equal(out["input_ids_BxT"][0], [1, 2, 3, 4, 5, 12, 13, 14, 27, 28])
  np.testing.assert_array_equal(out["input_ids_BxT"][2], np.arange(15, 27)[-10:])
  np.testing.assert_array_equal(out["positions_BxT"][0], [0, 1, 2, 3, 4, 0, 1, 2, 0, 1])
  np.testing.assert_array_equal(out["loss_mask_BxT"][0], [0, 1, 1, 1, 1, 0, 1, 1, 0, 1])
  np.testing.assert_array_equal(out["weight_BxT"][1], [2.0] * 6 + [0.0] * 4)
  np.testing.assert_array_equal(out["kind_BxT"][1], [1] * 6 + [-1] * 4)


def test_scan_counts_truncation(folder):
  host = pipeline.scan(folder, SEQ_LEN)
  long = [n for n in _lengths(40) if n > SEQ_LEN]
  assert host.num_records == 40 and host.num_truncated == len(long) > 0
  kept = sum(sum(r.loss_mask[-SEQ_LEN:][1:]) for r in records.iter_records(folder))
  total = sum(r.num_targets for r in records.iter_records(folder))
  assert host.num_targets == kept and host.num_targets_lost == total - kept


def _host_shares(folder, count):
  return [_segments(pipeline.make_dataset(folder, seq_len=SEQ_LEN, batch_size=1, pack=False, num_epochs=1,
                                          process_index=index, process_count=count).as_numpy_iterator())
          for index in range(count)]


def test_hosts_read_disjoint_shards_covering_everything(folder):
  per_host = _host_shares(folder, 2)
  for index in range(2):  # 40 records in shards of 10: host 0 reads shards 0 and 1, host 1 shards 2 and 3
    assert pipeline.scan(folder, SEQ_LEN, index, 2).files == tuple(
        os.path.join(folder, f"host0-{i:05d}.tfrecord") for i in (2 * index, 2 * index + 1))
  assert not set(per_host[0]) & set(per_host[1])
  assert per_host[0] + per_host[1] == _expected_segments(folder)


@pytest.mark.parametrize("count", [3, 5, 7])
def test_uneven_shards_split_into_host_shares_one_record_apart(tmp_path, count):
  # 25 records in shards of 10, 10 and 5 (a writer's last shard is partial): whole shards per host would give
  # 15 and 10 on 2 hosts and nothing to a fourth; record ranges give every host floor or ceil of 25 / count.
  path = str(tmp_path / "records")
  with records.RecordWriter(path, FP, shard_size=10, writer_id="host0") as w:
    for i in range(25):
      w.write(_record(i, 4 + i % 5))
  per_host = _host_shares(path, count)
  assert sorted(sum(share.values()) for share in per_host) == sorted([25 // count + 1] * (25 % count)
                                                                     + [25 // count] * (count - 25 % count))
  assert sum(per_host, collections.Counter()) == _expected_segments(path)
  hosts = [pipeline.scan(path, SEQ_LEN, index, count) for index in range(count)]
  assert [h.num_records for h in hosts] == [sum(share.values()) for share in per_host]
  # A host reads only the shards its share lies in.
  assert all(len(h.files) <= 2 for h in hosts)


def _cf_then_reh_folder(path, num_cf, num_reh):
  # As distillation writes them: every cf record first, then the reh ones, in shards of 10.
  with records.RecordWriter(path, FP, shard_size=10, writer_id="host0") as w:
    for i in range(num_cf + num_reh):
      w.write(_record(i, 4 + i % 5, "cf" if i < num_cf else "reh"))
  return path


@pytest.mark.parametrize("kinds", [("cf",), ("reh",), ("cf", "reh")])
def test_host_split_counts_only_the_records_of_the_trained_kinds(tmp_path, kinds):
  # 14 cf then 26 reh: a split of the 40 stored records would give host 1 of 2 no cf record at all, and the
  # cf+reh shares would hold 14 cf + 6 reh and 20 reh. Split over the selected records, each host holds half
  # of them (one apart), together exactly the records of those kinds.
  path = _cf_then_reh_folder(str(tmp_path / "records"), 14, 26)
  selected = sum(1 for r in records.iter_records(path) if r.kind in kinds)
  for count in (2, 3):
    shares = [_segments(pipeline.make_dataset(path, seq_len=SEQ_LEN, batch_size=1, pack=False, num_epochs=1,
                                              process_index=i, process_count=count, kinds=kinds)
                        .as_numpy_iterator()) for i in range(count)]
    sizes = [sum(share.values()) for share in shares]
    assert sorted(sizes) == sorted([selected // count + 1] * (selected % count)
                                   + [selected // count] * (count - selected % count))
    assert sum(shares, collections.Counter()) == _expected_segments(path, kinds)
    hosts = [pipeline.scan(path, SEQ_LEN, i, count, kinds=kinds) for i in range(count)]
    assert [h.num_records for h in hosts] == sizes
    # verify=False reads no file and still knows each share's size from the manifest's per-kind counts.
    assert [pipeline.scan(path, SEQ_LEN, i, count, kinds=kinds, verify=False).num_records
            for i in range(count)] == sizes


def test_single_process_fingerprint_of_whole_shards_is_unchanged_by_the_kind_aware_split(tmp_path):
  # A single-process run reads whole shards, described as (file, count, bytes) as before the split counted
  # kinds, so a saved position of a run over all kinds still restores. A part of a shard names the kinds its
  # skip and take count in, so a multi-process state saved before does not.
  import hashlib
  import json

  path = _cf_then_reh_folder(str(tmp_path / "records"), 14, 26)
  shards = sorted(records.read_manifest(path)["shards"], key=lambda s: s["file"])
  before = hashlib.sha256(json.dumps([(s["file"], s["count"], s["num_bytes"]) for s in shards]).encode())
  assert pipeline.scan(path, SEQ_LEN).data_fingerprint == before.hexdigest()[:16]
  assert pipeline.scan(path, SEQ_LEN, kinds=("cf", "reh")).data_fingerprint == before.hexdigest()[:16]
  assert pipeline.scan(path, SEQ_LEN, 0, 3).data_fingerprint != pipeline.scan(path, SEQ_LEN, 0, 3, kinds=(
      "cf", "reh")).data_fingerprint  # records [0, 13): one shard and a part of the next


def test_more_processes_than_records_of_the_kinds_is_an_error(tmp_path):
  path = _cf_then_reh_folder(str(tmp_path / "records"), 3, 20)
  with pytest.raises(ValueError, match=r"holds 3 records of kinds \['cf'\], fewer than process_count=4"):
    pipeline.scan(path, SEQ_LEN, 0, 4, kinds=("cf",))
  with pytest.raises(records.EmptyRecordsError, match=r"no records of kinds \['sft'\]"):
    pipeline.scan(path, SEQ_LEN, kinds=("sft",))


def test_more_processes_than_records_is_an_error(folder):
  with pytest.raises(ValueError, match="holds 40 records, fewer than process_count=41"):
    pipeline.make_dataset(folder, seq_len=SEQ_LEN, batch_size=1, process_index=0, process_count=41)


def test_same_seed_same_stream_and_exact_resume(folder):
  kwargs = dict(seq_len=SEQ_LEN, batch_size=3, seed=7, num_epochs=None, pack_window=16)
  reference = list(itertools.islice(pipeline.DataIterator(folder, **kwargs), 12))
  it = pipeline.DataIterator(folder, **kwargs)
  first = [next(it) for _ in range(5)]
  state = it.state()
  assert state["batches"] == 5
  resumed = pipeline.DataIterator(folder, **kwargs)
  resumed.restore(state)
  following = [next(resumed) for _ in range(7)]
  for got, want in zip(first + following, reference, strict=True):
    for key in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(got[key], want[key])
  # A different seed gives a different stream, and its state does not restore here.
  other = pipeline.DataIterator(folder, **{**kwargs, "seed": 8})
  assert any(not np.array_equal(a["input_ids_BxT"], b["input_ids_BxT"])
             for a, b in zip(itertools.islice(other, 4), reference))
  with pytest.raises(ValueError, match="seed"):
    other.restore(state)
  with pytest.raises(ValueError, match="batch_size: saved 3, now 2"):
    pipeline.DataIterator(folder, **{**kwargs, "batch_size": 2}).restore(state)


def _copy_folder(src, dst):
  import shutil

  shutil.copytree(src, dst)
  return str(dst)


def test_corrupt_shard_names_file_and_record(folder, tmp_path):
  path = _copy_folder(folder, tmp_path / "c")
  shard = pathlib.Path(path, "host0-00001.tfrecord")
  data = bytearray(shard.read_bytes())
  data[len(data) // 2] ^= 0xFF
  data[len(data) // 2 + 1] ^= 0xFF
  shard.write_bytes(bytes(data))
  with pytest.raises(records.CorruptShardError, match=r"host0-00001\.tfrecord: record #\d+") as err:
    pipeline.make_dataset(path, seq_len=SEQ_LEN, batch_size=2)
  assert 0 < err.value.index < 10
  # The index is the first unreadable record: everything before it reads back.
  assert len(list(itertools.islice(records.iter_serialized(str(shard)), err.value.index))) == err.value.index


def test_truncated_shard_names_file_and_record(folder, tmp_path):
  path = _copy_folder(folder, tmp_path / "t")
  shard = pathlib.Path(path, "host0-00002.tfrecord")
  data = shard.read_bytes()
  shard.write_bytes(data[: len(data) * 2 // 3])
  with pytest.raises(records.CorruptShardError, match=r"host0-00002\.tfrecord: record #[1-9]") as err:
    pipeline.make_dataset(path, seq_len=SEQ_LEN, batch_size=2)
  assert "truncated" in str(err.value).lower()


def test_shard_cut_at_a_record_boundary_is_caught_by_the_manifest_count(folder, tmp_path):
  path = _copy_folder(folder, tmp_path / "b")
  shard = os.path.join(path, "host0-00000.tfrecord")
  kept = list(itertools.islice(records.iter_serialized(shard), 6))
  import tensorflow as tf

  with tf.io.TFRecordWriter(shard) as w:
    for raw in kept:
      w.write(raw)
  with pytest.raises(records.CorruptShardError, match=r"host0-00000\.tfrecord: record #6 .*lists 10"):
    pipeline.make_dataset(path, seq_len=SEQ_LEN, batch_size=2)


def test_other_tokenizer_is_refused_with_both_fingerprints(folder):
  with pytest.raises(records.TokenizerMismatchError, match="tok-test-a.*tok-trainer"):
    pipeline.make_dataset(folder, seq_len=SEQ_LEN, batch_size=2, expected_tokenizer="tok-trainer")


def test_record_of_another_tokenizer_inside_a_shard_is_refused(tmp_path):
  path = str(tmp_path / "mixed")
  with records.RecordWriter(path, FP, writer_id="h") as w:
    w.write(_record(0, 5))
  import tensorflow as tf

  shard = os.path.join(path, "h-00000.tfrecord")
  foreign = records.to_example(records.CorrectionRecord(**{**_record(1, 5).__dict__, "tokenizer": "tok-x"}))
  with tf.io.TFRecordWriter(shard) as f:  # a shard rewritten behind the manifest's back
    f.write(foreign.SerializeToString())
  with pytest.raises(records.TokenizerMismatchError, match=r"h-00000\.tfrecord record #0.*tok-x.*tok-test-a"):
    pipeline.make_dataset(path, seq_len=SEQ_LEN, batch_size=1)


@pytest.mark.parametrize("field", ["weight", "kind"])
def test_a_record_the_reader_cannot_parse_fails_the_scan_naming_file_and_record(tmp_path, field):
  # A record from a writer other than RecordWriter, without a field the reader parses: refused up front, named.
  import re

  import tensorflow as tf

  folder = str(tmp_path / "records")
  with records.RecordWriter(folder, FP, shard_size=4, writer_id="host0") as writer:
    for i in range(8):
      writer.write(_record(i, 5))
  path = os.path.join(folder, "host0-00001.tfrecord")
  raws = list(records.iter_serialized(path))
  example = tf.train.Example.FromString(raws[2])
  del example.features.feature[field]
  raws[2] = example.SerializeToString()
  with tf.io.TFRecordWriter(path) as f:
    for raw in raws:
      f.write(raw)
  with pytest.raises(records.RecordError, match=rf"{re.escape(path)} record #2\b.*{field}"):
    pipeline.scan(folder, seq_len=SEQ_LEN)


def test_empty_folders_are_clear_errors(tmp_path):
  missing = str(tmp_path / "missing")
  with pytest.raises(records.EmptyRecordsError, match="missing"):
    pipeline.make_dataset(missing, seq_len=SEQ_LEN, batch_size=1)
  with pytest.raises(records.EmptyRecordsError, match="no manifest"):
    pipeline.make_dataset(str(tmp_path), seq_len=SEQ_LEN, batch_size=1)
  with records.RecordWriter(str(tmp_path / "none"), FP):
    pass
  with pytest.raises(records.EmptyRecordsError, match="none.*no finished shards"):
    pipeline.make_dataset(str(tmp_path / "none"), seq_len=SEQ_LEN, batch_size=1)


def test_a_kinds_filtered_position_saved_before_the_filter_moved_is_refused(folder):
  # Kinds are filtered before the shuffle now, so a state saved when they were filtered after it (its config has
  # no "kind_filter") names another stream for the same seed.
  it = pipeline.DataIterator(folder, seq_len=SEQ_LEN, batch_size=2, kinds=("cf", "reh"))
  next(it)
  state = it.state()
  del state["config"]["kind_filter"]
  with pytest.raises(ValueError, match="kind_filter: saved None, now 'before_shuffle'"):
    pipeline.DataIterator(folder, seq_len=SEQ_LEN, batch_size=2, kinds=("cf", "reh")).restore(state)
