"""Trainer-side reader of correction records: tf.data from the finished shards to packed, fixed-shape batches.

Each batch is a dict of numpy-compatible tensors with static shapes [batch_size, seq_len]:

  input_ids_BxT    int32    token ids (PAD_ID on padding)
  loss_mask_BxT    float32  1.0 where input_ids[b, t] is a target token (see alignment below)
  weight_BxT       float32  the owning example's `weight` on each of its tokens (0 on padding)
  segment_ids_BxT  int32    1, 2, ... per example packed into the row; 0 on padding
  positions_BxT    int32    0, 1, ... restarting at every segment (0 on padding)
  kind_BxT         int32    index into records.KINDS of the owning example; PAD_KIND (-1) on padding

Next-token alignment: `loss_mask[b, t] == 1` marks `input_ids[b, t]` as a target, predicted from the logits at
position t-1 of the same segment. The trainer computes
  nll(logits[:, :-1], input_ids[:, 1:]) * loss_mask[:, 1:] * weight[:, 1:]
and needs no segment test: the pipeline clears `loss_mask` at the first position of every segment (a token
with no previous token in its segment is never a target), so no target pair crosses a segment boundary.

Packing: greedy first-fit, in arrival (shuffled) order, of whole examples into rows of seq_len, within windows of
`pack_window` examples of one epoch (a window never spans two). Examples longer than seq_len are truncated from
the LEFT (their last seq_len tokens are kept: the targets of `cf` records are the final action, and `reh` keeps
its latest turns); the number of truncated examples and of target tokens lost is counted per host by the up-front
scan and logged.

Multi-host: the records of the selected kinds (`kinds`; None: all) in the finished shards, in file-name order, form
one sequence of N records; host i of n takes records [i·N/n, (i+1)·N/n) of it, so hosts hold disjoint shares that
differ by at most one record (whole shards per host would not: shards differ in size, every writer's last one is
partial, and an epoch is as long as the smallest share). The split is over the selected records, not the stored
ones: distillation writes all `cf` records before the `reh` ones, so a split of the stored records would give a
cf-only run's later hosts nothing. A host reads only the shards its share lies in, from the first record of its
share to the last (at most the two boundary shards are shared with the neighbouring hosts).
Every created dataset is deterministic given its arguments; `DataIterator` resumes it exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from leafe_jax.data import records

PAD_ID = 0
PAD_KIND = -1
# Examples per packing window: larger packs tighter, costs host memory and latency per window.
DEFAULT_PACK_WINDOW = 1024
# Records per batch in the up-front shard scan.
_SCAN_BATCH = 1024
# 2: epochs are packed separately (version 1 packed windows across epochs: another stream for the same count).
_STATE_VERSION = 2
BATCH_KEYS = ("input_ids_BxT", "loss_mask_BxT", "weight_BxT", "segment_ids_BxT", "positions_BxT", "kind_BxT")


@dataclasses.dataclass(frozen=True)
class ShardRange:
  """Records [skip, skip + take) of the selected kinds' records of one finished shard (`shard`: its manifest
  entry; `selected`: how many of its records are of the selected kinds)."""

  shard: dict
  skip: int
  take: int
  selected: int

  @property
  def whole(self) -> bool:
    return self.skip == 0 and self.take == self.selected


@dataclasses.dataclass(frozen=True)
class HostRecords:
  """This host's share of a records folder, validated by `scan`."""

  folder: str
  tokenizer: str
  files: tuple[str, ...]
  ranges: tuple[tuple[str, int, int], ...]  # (file path, skip, take) per shard, in read order
  kinds: tuple[str, ...] | None  # the kinds of this share (None: all)
  num_records: int  # of the selected kinds: this host's share
  num_truncated: int  # records longer than seq_len (left-truncated)
  num_targets: int  # target tokens the trainer will see (after truncation and first-position clearing)
  num_targets_lost: int  # target tokens cut by truncation or sitting at a segment's first position
  data_fingerprint: str  # hash of the shard list and counts, for resume checks


def _selected_count(shard: dict, kinds: Sequence[str] | None) -> int:
  """Records of `kinds` (None: all) in one manifest shard entry."""
  if kinds is None:
    return shard["count"]
  return sum(shard["counts"].get(k, 0) for k in kinds)


def host_shards(folder: str, process_index: int = 0, process_count: int = 1,
                kinds: Sequence[str] | None = None) -> tuple[dict, list[ShardRange]]:
  """(merged manifest, this host's share): records [i·N/n, (i+1)·N/n) of the N records of `kinds` (None: all)
  in the non-empty shards, in file-name order, as one range per shard it touches."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside [0, process_count={process_count})")
  if not tf.io.gfile.isdir(folder):
    raise records.EmptyRecordsError(f"records folder {folder} does not exist")
  manifest = records.read_manifest(folder)
  shards = sorted((s for s in manifest["shards"] if s["count"] > 0), key=lambda s: s["file"])
  if not shards:
    raise records.EmptyRecordsError(f"records folder {folder} has no finished shards with records "
                                    f"(manifest total = {manifest['total']})")
  selected = [(s, _selected_count(s, kinds)) for s in shards]
  selected = [(s, n) for s, n in selected if n > 0]
  of_kinds = "" if kinds is None else f" of kinds {list(kinds)}"
  if not selected:
    raise records.EmptyRecordsError(f"records folder {folder} has no records{of_kinds} "
                                    f"(counts {manifest['counts']})")
  total = sum(n for _, n in selected)
  begin, end = process_index * total // process_count, (process_index + 1) * total // process_count
  if begin == end:
    raise ValueError(f"records folder {folder} holds {total} records{of_kinds}, fewer than "
                     f"process_count={process_count}: process {process_index} would read nothing. "
                     "Use fewer processes.")
  mine, offset = [], 0
  for shard, count in selected:
    first, last = max(begin, offset), min(end, offset + count)
    if first < last:
      mine.append(ShardRange(shard, first - offset, last - first, count))
    offset += count
  return manifest, mine


# The functions given to tf.data below branch on nothing but Python values, so they are traced as written:
# AutoGraph would rewrite each into a generated module, left behind in the temp dir as __autograph_generated_*.py
# files (one per traced function, every run), and would add its conversion time to every dataset built.
_traced_as_is = tf.autograph.experimental.do_not_convert


def _scan_features() -> dict:
  # Every feature the reader parses (`_parse_features`), so a record the reader would fail on fails the scan.
  return {
      "input_ids": tf.io.RaggedFeature(tf.int64),
      "loss_mask": tf.io.RaggedFeature(tf.int64),
      "weight": tf.io.FixedLenFeature([], tf.float32),
      "kind": tf.io.FixedLenFeature([], tf.string),
      "tokenizer": tf.io.FixedLenFeature([], tf.string),
  }


def _first_unparsable(path: str) -> tuple[int, str] | None:
  """(index, error) of the first record of `path` that does not parse with `_scan_features`; None if all do."""
  for index, raw in enumerate(records.iter_serialized(path)):
    try:
      tf.io.parse_single_example(raw, _scan_features())
    except tf.errors.InvalidArgumentError as e:
      return index, e.message.strip()
  return None


def _scan_file(path: str, expected_count: int, tokenizer: str, seq_len: int, kinds: Sequence[str] | None,
               skip: int = 0, take: int | None = None) -> tuple[int, int, int, int]:
  """Reads one shard fully (every record is checked); returns (records kept, truncated, targets seen, targets
  lost) of its records [skip, skip + take) of `kinds` (default: all of them)."""
  stop = expected_count if take is None else skip + take
  ds = tf.data.TFRecordDataset(path).batch(_SCAN_BATCH).map(_traced_as_is(
      lambda s: tf.io.parse_example(s, _scan_features())))
  index = kept = truncated = seen = lost = 0
  wanted_before = 0  # records of `kinds` before this batch: the ranks skip and take count in
  known = np.array([k.encode() for k in records.KINDS], dtype=object)
  wanted = np.array([k.encode() for k in kinds], dtype=object) if kinds is not None else known
  try:
    for batch in ds:
      fps, kind_b = batch["tokenizer"].numpy(), batch["kind"].numpy()
      foreign = np.flatnonzero(fps != tokenizer.encode())
      if foreign.size:
        i = int(foreign[0])
        raise records.TokenizerMismatchError(
            f"shard {path} record #{index + i} has tokenizer {fps[i].decode()}; expected tokenizer {tokenizer}")
      unknown = np.flatnonzero(~np.isin(kind_b, known))
      if unknown.size:
        i = int(unknown[0])
        raise records.RecordError(f"shard {path} record #{index + i}: field 'kind' is {kind_b[i]!r}")
      lengths = batch["input_ids"].row_lengths().numpy()
      if not np.array_equal(lengths, batch["loss_mask"].row_lengths().numpy()):
        i = int(np.flatnonzero(lengths != batch["loss_mask"].row_lengths().numpy())[0])
        raise records.RecordError(f"shard {path} record #{index + i}: 'loss_mask' and 'input_ids' differ in length")
      is_wanted = np.isin(kind_b, wanted)
      rank = wanted_before + np.cumsum(is_wanted) - 1
      wanted_before += int(is_wanted.sum())
      select = is_wanted & (rank >= skip) & (rank < stop)
      mask = batch["loss_mask"].flat_values.numpy()
      ends = np.cumsum(lengths)
      begins = ends - lengths
      cum = np.concatenate([[0], np.cumsum(mask)])
      first_kept = begins + np.maximum(lengths - seq_len, 0)
      total = cum[ends] - cum[begins]
      usable = cum[ends] - cum[first_kept + 1]  # the first kept position is a segment start: never a target
      kept += int(select.sum())
      truncated += int((select & (lengths > seq_len)).sum())
      seen += int(usable[select].sum())
      lost += int((total - usable)[select].sum())
      index += len(lengths)
  except tf.errors.DataLossError as e:
    # tf.data does not say which record: find it by reading the file record by record.
    for _ in records.iter_serialized(path):
      pass
    raise records.CorruptShardError(path, index, e.message.strip()) from e
  except tf.errors.InvalidArgumentError as e:
    # A readable record that is not a correction record (a field missing or of the wrong type): name it.
    bad = _first_unparsable(path)
    where, detail = bad if bad is not None else (index, e.message.strip())
    raise records.RecordError(f"shard {path} record #{where} does not parse as a correction record: {detail}") from e
  if index != expected_count:
    raise records.CorruptShardError(path, index, f"the file ends after {index} records but the manifest lists "
                                    f"{expected_count}; it was truncated or replaced")
  return kept, truncated, seen, lost


def scan(folder: str, seq_len: int, process_index: int = 0, process_count: int = 1,
         expected_tokenizer: str | None = None, kinds: Sequence[str] | None = None,
         verify: bool = True) -> HostRecords:
  """Validates this host's shards (readable, counts match the manifest, one tokenizer) and counts truncation.

  With verify=False only the manifest is consulted (no file is read; truncation counts are -1).
  """
  if kinds is not None:
    unknown = sorted(set(kinds) - set(records.KINDS))
    if unknown:
      raise ValueError(f"kinds {unknown} are unknown; known kinds: {records.KINDS}")
  manifest, ranges = host_shards(folder, process_index, process_count, kinds)
  tokenizer = manifest["tokenizer"]
  if expected_tokenizer is not None and tokenizer != expected_tokenizer:
    raise records.TokenizerMismatchError(f"records folder {folder} holds records of tokenizer {tokenizer}; "
                                         f"the trainer expects tokenizer {expected_tokenizer}")
  wanted = records.KINDS if kinds is None else tuple(kinds)
  files = tuple(os.path.join(folder, r.shard["file"]) for r in ranges)
  num_records = truncated = seen = lost = 0
  for r, path in zip(ranges, files):
    if verify:  # else the manifest's per-kind counts gave the range its size (host_shards)
      n, t, s, lo = _scan_file(path, r.shard["count"], tokenizer, seq_len, kinds, r.skip, r.take)
      if n != r.take:
        raise records.CorruptShardError(path, 0, f"it holds {n} records of kinds {list(wanted)} in the range this "
                                        f"process reads, the manifest {r.take} (counts {r.shard['counts']})")
      num_records, truncated, seen, lost = num_records + n, truncated + t, seen + s, lost + lo
    else:
      num_records += r.take
  if not verify:
    truncated = seen = lost = -1
  # Whole shards are described as before ranges existed, so a single-process run's saved position still fits.
  # A part of a shard counts its skip and take in records of `kinds`, so those name the range.
  desc = json.dumps([(r.shard["file"], r.shard["count"], r.shard["num_bytes"])
                     + (() if r.whole else (r.skip, r.take) + (() if kinds is None else (list(kinds),)))
                     for r in ranges]).encode()
  return HostRecords(folder=folder, tokenizer=tokenizer, files=files, kinds=None if kinds is None else tuple(kinds),
                     ranges=tuple((path, r.skip, r.take) for r, path in zip(ranges, files)),
                     num_records=num_records,
                     num_truncated=truncated, num_targets=seen, num_targets_lost=lost,
                     data_fingerprint=hashlib.sha256(desc).hexdigest()[:16])


def pack_examples(input_ids: np.ndarray, loss_mask: np.ndarray, lengths: np.ndarray, weights: np.ndarray,
                  kinds: np.ndarray, seq_len: int, pack: bool = True) -> tuple[np.ndarray, ...]:
  """Places a window of examples (concatenated flat, with `lengths`) into rows of `seq_len`.

  Returns (input_ids, loss_mask, weight, segment_ids, positions, kind), each [rows, seq_len], in BATCH_KEYS
  order. pack=True: greedy first-fit in the given order; pack=False: one example per row. Examples longer than
  seq_len keep their last seq_len tokens. `loss_mask` is cleared at the first position of every segment.
  """
  lengths = np.asarray(lengths, np.int64)
  n = len(lengths)
  starts = np.cumsum(lengths) - lengths
  keep = np.minimum(lengths, seq_len)
  row_of = np.zeros(n, np.int64)
  offset_of = np.zeros(n, np.int64)
  fill = np.zeros(n, np.int64)  # at most one row per example
  num_rows = 0
  for e in range(n):
    fits = np.flatnonzero(fill[:num_rows] + keep[e] <= seq_len) if pack else ()
    if len(fits):
      row = int(fits[0])
    else:
      row, num_rows = num_rows, num_rows + 1
    row_of[e], offset_of[e] = row, fill[row]
    fill[row] += keep[e]

  shape = (num_rows, seq_len)
  out_ids = np.full(shape, PAD_ID, np.int32)
  out_mask = np.zeros(shape, np.float32)
  out_weight = np.zeros(shape, np.float32)
  out_seg = np.zeros(shape, np.int32)
  out_pos = np.zeros(shape, np.int32)
  out_kind = np.full(shape, PAD_KIND, np.int32)
  segments = np.zeros(num_rows, np.int32)
  for e in range(n):
    r, o, size = row_of[e], offset_of[e], keep[e]
    src = starts[e] + lengths[e] - size
    span = slice(o, o + size)
    out_ids[r, span] = input_ids[src:src + size]
    out_mask[r, span] = loss_mask[src:src + size]
    out_mask[r, o] = 0.0
    out_weight[r, span] = weights[e]
    segments[r] += 1
    out_seg[r, span] = segments[r]
    out_pos[r, span] = np.arange(size, dtype=np.int32)
    out_kind[r, span] = kinds[e]
  return out_ids, out_mask, out_weight, out_seg, out_pos, out_kind


def _parse_features() -> dict:
  return {
      "input_ids": tf.io.RaggedFeature(tf.int64),
      "loss_mask": tf.io.RaggedFeature(tf.int64),
      "weight": tf.io.FixedLenFeature([], tf.float32),
      "kind": tf.io.FixedLenFeature([], tf.string),
  }


def build_dataset(host: HostRecords, seq_len: int, batch_size: int, pack: bool = True, seed: int = 0,
                  num_epochs: int | None = None, shuffle_buffer: int | None = None,
                  pack_window: int = DEFAULT_PACK_WINDOW) -> tf.data.Dataset:
  """The tf.data pipeline over an already scanned host share (see `make_dataset`); it keeps `host.kinds`."""
  if seq_len < 2 or batch_size < 1 or pack_window < 1:
    raise ValueError(f"need seq_len >= 2, batch_size >= 1, pack_window >= 1; got {seq_len}, {batch_size}, "
                     f"{pack_window}")
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(records.KINDS), tf.range(len(records.KINDS), dtype=tf.int32)),
      default_value=PAD_KIND)

  @_traced_as_is
  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, _parse_features())
    return {
        "input_ids": tf.cast(ex["input_ids"], tf.int32),
        "loss_mask": tf.cast(ex["loss_mask"], tf.float32),
        "weight": ex["weight"],
        "kind": table.lookup(ex["kind"]),
    }

  @_traced_as_is
  def pack_window_fn(window):
    ids, mask = window["input_ids"], window["loss_mask"]
    out = tf.numpy_function(
        lambda i, m, n, w, k: pack_examples(i, m, n, w, k, seq_len, pack),
        [ids.flat_values, mask.flat_values, ids.row_lengths(), window["weight"], window["kind"]],
        [tf.int32, tf.float32, tf.float32, tf.int32, tf.int32, tf.int32], stateful=False)
    for t in out:
      t.set_shape([None, seq_len])
    return dict(zip(BATCH_KEYS, out))

  kinds = host.kinds
  if kinds is not None:
    wanted = tf.constant(list(kinds))
    kind_only = {"kind": tf.io.FixedLenFeature([], tf.string)}
    is_wanted = _traced_as_is(lambda serialized: tf.reduce_any(
        tf.equal(tf.io.parse_single_example(serialized, kind_only)["kind"], wanted)))

  @_traced_as_is
  def read_range(path, skip, take):
    # skip and take count records of `kinds` (see host_shards), so the filter comes first.
    ds = tf.data.TFRecordDataset(path)
    if kinds is not None:
      ds = ds.filter(is_wanted)
    return ds.skip(skip).take(take)

  paths, skips, takes = (list(column) for column in zip(*host.ranges))
  ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(skips, tf.int64), tf.constant(takes, tf.int64)))
  ds = ds.flat_map(read_range)
  # Records are shuffled serialized, after the kinds filter: the full buffer covers every record of the share.
  buffer = host.num_records if shuffle_buffer is None else shuffle_buffer
  if buffer > 1:
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ragged_batch(pack_window)
  ds = ds.map(pack_window_fn)
  # Repeated after packing: a packing window never spans two epochs, so an epoch's rows hold each of its records
  # once (repeated before, a window of a small folder held several epochs and first-fit pulled later epochs'
  # short records into the first rows), and the first epoch of an endless stream is the num_epochs=1 stream.
  # Each repetition reshuffles (reshuffle_each_iteration); rows left at an epoch's end fill the next batch.
  ds = ds.repeat(num_epochs)
  ds = ds.unbatch().batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def make_dataset(folder: str, seq_len: int, batch_size: int, pack: bool = True, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, expected_tokenizer: str | None = None,
                 num_epochs: int | None = None, kinds: Sequence[str] | None = None, *,
                 shuffle_buffer: int | None = None, pack_window: int = DEFAULT_PACK_WINDOW,
                 verify: bool = True) -> tf.data.Dataset:
  """A deterministic tf.data.Dataset of per-process batches (dict of BATCH_KEYS, static [batch_size, seq_len]).

  Reads only finished shards listed by the manifest (host i of n gets records [i·N/n, (i+1)·N/n) of them, in
  file-name order), checks them up front (see `scan`), shuffles records with `seed` (a full shuffle of the
  host's records unless `shuffle_buffer` caps it; a new order every epoch), keeps `kinds` (None: all), packs
  (pack=True) or pads (pack=False) each epoch's records into rows, repeats that `num_epochs` times (None:
  forever) and batches the rows with drop_remainder=True.
  """
  host = scan(folder, seq_len, process_index, process_count, expected_tokenizer, kinds, verify)
  _log_host(host, process_index, process_count)
  return build_dataset(host, seq_len, batch_size, pack, seed, num_epochs, shuffle_buffer, pack_window)


def _log_host(host: HostRecords, process_index: int, process_count: int) -> None:
  logging.info("records %s, process %d/%d: %d shards, %d records, %d left-truncated, %d target tokens "
               "(%d lost to truncation / segment starts)", host.folder, process_index, process_count,
               len(host.files), host.num_records, host.num_truncated, host.num_targets, host.num_targets_lost)


class DataIterator:
  """Iterates `make_dataset` batches as numpy dicts, with a resumable position.

  The state is {version, batches, seed, config}: the number of batches consumed plus what defines the stream.
  `restore` rebuilds the (deterministic) dataset and skips that many batches, so the batches that follow are
  bit-identical to an uninterrupted run. Chosen over `tf.train.Checkpoint(iterator=...)` because the packing
  step is a numpy_function (not serializable into an iterator checkpoint), and because the state is a small
  JSON dict that goes into the trainer's checkpoint metadata; skipping re-reads the data, which at LEAFE scale
  (about 10k records per dataset) takes seconds.
  """

  def __init__(self, folder: str, seq_len: int, batch_size: int, **kwargs):
    self._args = dict(folder=folder, seq_len=seq_len, batch_size=batch_size, **kwargs)
    self._batches = 0
    self._iterator = None
    self._host: HostRecords | None = None

  @property
  def host(self) -> HostRecords:
    if self._host is None:
      a = self._args
      self._host = scan(a["folder"], a["seq_len"], a.get("process_index", 0), a.get("process_count", 1),
                        a.get("expected_tokenizer"), a.get("kinds"), a.get("verify", True))
      _log_host(self._host, a.get("process_index", 0), a.get("process_count", 1))
    return self._host

  def _config(self) -> dict:
    a = self._args
    kinds = a.get("kinds")
    return {
        "data": self.host.data_fingerprint,
        "seq_len": a["seq_len"],
        "batch_size": a["batch_size"],
        "pack": a.get("pack", True),
        "process_index": a.get("process_index", 0),
        "process_count": a.get("process_count", 1),
        "num_epochs": a.get("num_epochs"),
        "kinds": list(kinds) if kinds is not None else None,
        # Since the host split counts records of `kinds`, they are filtered before the shuffle: another order
        # than a state saved before then (which lacks this entry) for the same seed.
        **({} if kinds is None else {"kind_filter": "before_shuffle"}),
        "shuffle_buffer": a.get("shuffle_buffer"),
        "pack_window": a.get("pack_window", DEFAULT_PACK_WINDOW),
    }

  def _open(self) -> None:
    a = self._args
    ds = build_dataset(self.host, a["seq_len"], a["batch_size"], a.get("pack", True), a.get("seed", 0),
                       a.get("num_epochs"), a.get("shuffle_buffer"),
                       a.get("pack_window", DEFAULT_PACK_WINDOW))
    if self._batches:
      ds = ds.skip(self._batches)
    self._iterator = ds.as_numpy_iterator()

  def __iter__(self) -> DataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._open()
    batch = next(self._iterator)
    self._batches += 1
    return batch

  def state(self) -> dict:
    return {"version": _STATE_VERSION, "batches": self._batches, "seed": self._args.get("seed", 0),
            "config": self._config()}

  def restore(self, state: dict) -> None:
    """Positions the iterator after `state["batches"]` batches; refuses a state from a different stream."""
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"data iterator state version {state.get('version')!r}; expected {_STATE_VERSION}")
    if state["seed"] != self._args.get("seed", 0):
      raise ValueError(f"data iterator state has seed {state['seed']}; this iterator has "
                       f"seed {self._args.get('seed', 0)}")
    config = self._config()
    diff = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
    if diff:
      detail = ", ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in diff.items())
      raise ValueError(f"data iterator state for {self._args['folder']} does not match this stream ({detail}); "
                       "the records or the data options changed since it was saved")
    self._batches = int(state["batches"])
    self._iterator = None
