"""Correction records: the explorer -> trainer schema, a resumable TFRecord writer, and its manifest.

One record is one training example (`tf.train.Example`): `input_ids` int64[], `loss_mask` int64[] (1 on target
tokens of `input_ids`), `weight` float, `kind` bytes (one of `KINDS`), `env`, `task_id`, `tree_id`, `node_id`
bytes, `step` int64, `experience` bytes (metadata only; for `cf` it is never part of `input_ids`),
`messages_json` bytes (for audit and re-tokenization) and `tokenizer` bytes (fingerprint).

Folder layout (several writers, e.g. one per explorer host, may share one folder):

  <writer_id>-<NNNNN>.tfrecord       finished shards (written as `<...>.tfrecord.tmp`, renamed when complete)
  manifest-<writer_id>.json          each writer's own manifest part: the record of truth for its shards
  manifest.json                      merged view of all parts, rewritten after each part update
  dataset_info.json, features.json   tfds metadata, written by `finalize_for_tfds` (each writer's `close()`)
  leafe_records-train.tfrecord-XXXXX-of-YYYYY   tfds-named hard links to the shards (`finalize_for_tfds`)

A writer only ever touches its own shards and its own manifest part, so concurrent hosts never clobber each
other; `read_manifest` merges the parts. Every manifest file is replaced atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf
from absl import logging

KINDS = ("cf", "reh", "iwm", "sr", "sft")
FORMAT = "leafe_jax.correction_records"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_PART_PREFIX = "manifest-"
_SHARD_SUFFIX = ".tfrecord"
_TMP_SUFFIX = ".tmp"
_SHARD_INDEX_DIGITS = 5
_WRITER_ID_RE = re.compile(r"^[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*$")
# input_ids become int32 on the accelerator side.
_MAX_TOKEN_ID = 2**31 - 1

# tfds naming (see tfds.core.naming.DEFAULT_FILENAME_TEMPLATE).
TFDS_NAME = "leafe_records"
TFDS_SPLIT = "train"
_TFDS_SHARD_RE = re.compile(rf"^{TFDS_NAME}-{TFDS_SPLIT}\.tfrecord-\d{{5}}-of-\d{{5}}$")


class RecordError(ValueError):
  """A correction record that violates the schema; the message names the field."""


class TokenizerMismatchError(ValueError):
  """Records written with one tokenizer meet a reader or writer using another."""


class EmptyRecordsError(FileNotFoundError):
  """A records folder with no manifest, no finished shards or zero records."""


class CorruptShardError(IOError):
  """A shard that cannot be read back; names the file and the index of the first bad record."""

  def __init__(self, path: str, index: int, detail: str):
    super().__init__(f"corrupt or truncated record shard {path}: record #{index} cannot be read ({detail})")
    self.path = path
    self.index = index


@dataclasses.dataclass(frozen=True)
class CorrectionRecord:
  """One training example; `loss_mask[t] == 1` marks `input_ids[t]` as a target token."""

  input_ids: Sequence[int]
  loss_mask: Sequence[int]
  kind: str
  weight: float = 1.0
  env: str = ""
  task_id: str = ""
  tree_id: str = ""
  node_id: str = ""
  step: int = 0
  experience: str = ""
  messages_json: str = ""
  tokenizer: str = ""

  def validate(self) -> None:
    """Raises RecordError naming the offending field."""
    where = f"record (task_id={self.task_id!r}, node_id={self.node_id!r})"
    if self.kind not in KINDS:
      raise RecordError(f"{where}: field 'kind' is {self.kind!r}; expected one of {KINDS}")
    n_ids, n_mask = len(self.input_ids), len(self.loss_mask)
    if n_ids == 0:
      raise RecordError(f"{where}: field 'input_ids' is empty")
    if n_ids != n_mask:
      raise RecordError(f"{where}: field 'loss_mask' has {n_mask} entries but 'input_ids' has {n_ids}")
    # Whole-list checks by builtins (C loops: a record has hundreds of tokens); the per-token loops only run to
    # name the offending entry, or for ids that are not Python ints (numpy ints, say).
    ids = self.input_ids
    if not (set(map(type, ids)) == {int} and 0 <= min(ids) and max(ids) <= _MAX_TOKEN_ID):
      for t, tok in enumerate(ids):
        if isinstance(tok, bool) or not isinstance(tok, int) and not hasattr(tok, "__index__"):
          raise RecordError(f"{where}: field 'input_ids'[{t}] is {tok!r}, not an integer")
        if not 0 <= int(tok) <= _MAX_TOKEN_ID:
          raise RecordError(f"{where}: field 'input_ids'[{t}] = {int(tok)} is outside [0, {_MAX_TOKEN_ID}]")
    # Compared by value, not by int(): int() truncated 0.6 to 0 (a target silently dropped) and 1.9 to 1.
    mask_values = set(self.loss_mask)
    if not mask_values <= {0, 1}:
      bad = next(t for t, m in enumerate(self.loss_mask) if m not in (0, 1))
      raise RecordError(f"{where}: field 'loss_mask'[{bad}] = {self.loss_mask[bad]!r}; must be 0 or 1")
    if 1 not in mask_values:
      raise RecordError(f"{where}: field 'loss_mask' marks no target token")
    weight = float(self.weight)
    if not math.isfinite(weight) or weight < 0:
      raise RecordError(f"{where}: field 'weight' is {self.weight!r}; must be finite and >= 0")
    if isinstance(self.step, bool) or int(self.step) != self.step:
      raise RecordError(f"{where}: field 'step' is {self.step!r}, not an integer")
    for name in ("env", "task_id", "tree_id", "node_id", "experience", "messages_json", "tokenizer"):
      if not isinstance(getattr(self, name), str):
        raise RecordError(f"{where}: field {name!r} is {type(getattr(self, name)).__name__}, not str")

  @property
  def num_targets(self) -> int:
    return sum(map(int, self.loss_mask))


_BYTES_FIELDS = ("kind", "env", "task_id", "tree_id", "node_id", "experience", "messages_json", "tokenizer")


def to_example(rec: CorrectionRecord) -> tf.train.Example:
  """Serializes a record (validated first)."""
  rec.validate()
  example = tf.train.Example()
  # Filled in place: a message passed to a proto constructor is copied, which cost more than the rest here.
  feature = example.features.feature
  feature["input_ids"].int64_list.value.extend(list(map(int, rec.input_ids)))
  feature["loss_mask"].int64_list.value.extend(list(map(int, rec.loss_mask)))
  feature["weight"].float_list.value.append(float(rec.weight))
  feature["step"].int64_list.value.append(int(rec.step))
  for name in _BYTES_FIELDS:
    feature[name].bytes_list.value.append(getattr(rec, name).encode("utf-8"))
  return example


def from_example(example: tf.train.Example | bytes) -> CorrectionRecord:
  """Parses a serialized or proto `tf.train.Example` back into a record."""
  if isinstance(example, bytes | bytearray):
    example = tf.train.Example.FromString(bytes(example))
  feature = example.features.feature
  missing = [k for k in ("input_ids", "loss_mask", "weight", "kind", "tokenizer") if k not in feature]
  if missing:
    raise RecordError(f"tf.train.Example lacks field(s) {missing}")

  def text(name: str) -> str:
    values = feature[name].bytes_list.value if name in feature else []
    return values[0].decode("utf-8") if values else ""

  step = feature["step"].int64_list.value if "step" in feature else []
  return CorrectionRecord(
      input_ids=list(feature["input_ids"].int64_list.value),
      loss_mask=list(feature["loss_mask"].int64_list.value),
      weight=float(feature["weight"].float_list.value[0]),
      step=int(step[0]) if step else 0,
      **{name: text(name) for name in _BYTES_FIELDS},
  )


def tokenizer_fingerprint(tokenizer: Any) -> str:
  """A stable hash of what token ids mean: class name, vocabulary, special tokens and, for fast (Rust-backed)
  tokenizers, the model/normalizer/pre-tokenizer definition minus runtime truncation/padding settings."""
  if not hasattr(tokenizer, "get_vocab"):
    raise TypeError(f"tokenizer_fingerprint needs a tokenizer with get_vocab(); got {type(tokenizer).__name__}")
  special = getattr(tokenizer, "special_tokens_map", None) or {}
  desc: dict[str, Any] = {
      "class": type(tokenizer).__name__,
      "vocab": sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0])),
      "special_tokens": sorted((str(k), str(v)) for k, v in special.items()),
  }
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is not None and hasattr(backend, "to_str"):
    spec = json.loads(backend.to_str())
    # Mutated by calls such as tokenizer(..., truncation=True); they do not change what ids mean.
    spec.pop("truncation", None)
    spec.pop("padding", None)
    desc["backend"] = spec
  blob = json.dumps(desc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
  return "tok-" + hashlib.sha256(blob).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------------------
# Files and manifests.


def _join(folder: str, name: str) -> str:
  return os.path.join(folder, name)


def _is_local(path: str) -> bool:
  return "://" not in path


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}{_TMP_SUFFIX}.{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(obj, indent=1, sort_keys=True))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str) -> dict:
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"manifest {path} is not valid JSON: {e}") from e


def _part_name(writer_id: str) -> str:
  return f"{_PART_PREFIX}{writer_id}.json"


def _shard_name(writer_id: str, index: int) -> str:
  return f"{writer_id}-{index:0{_SHARD_INDEX_DIGITS}d}{_SHARD_SUFFIX}"


def _shard_index(writer_id: str, name: str) -> int | None:
  m = re.fullmatch(re.escape(writer_id) + rf"-(\d{{{_SHARD_INDEX_DIGITS}}}){re.escape(_SHARD_SUFFIX)}", name)
  return int(m.group(1)) if m else None


def _list(folder: str) -> list[str]:
  return sorted(tf.io.gfile.listdir(folder)) if tf.io.gfile.isdir(folder) else []


def finished_shards(folder: str, writer_id: str) -> list[str]:
  """Paths of `writer_id`'s finished shard files in `folder`, whether its manifest part lists them yet or not (a
  kill between a shard's rename and the manifest update leaves one unlisted; the writer adopts it on reopen)."""
  return [_join(folder, name) for name in _list(folder) if _shard_index(writer_id, name) is not None]


def read_manifest_parts(folder: str) -> dict[str, dict]:
  """writer_id -> that writer's manifest part."""
  parts = {}
  for name in _list(folder):
    if name.startswith(_PART_PREFIX) and name.endswith(".json"):
      part = _read_json(_join(folder, name))
      parts[part["writer_id"]] = part
  return parts


def _merge(folder: str, parts: dict[str, dict]) -> dict:
  fingerprints = {wid: p["tokenizer"] for wid, p in parts.items()}
  if len(set(fingerprints.values())) > 1:
    raise TokenizerMismatchError(f"records folder {folder} mixes tokenizers across writers: {fingerprints}")
  shards, counts = [], dict.fromkeys(KINDS, 0)
  for wid in sorted(parts):
    for shard in parts[wid]["shards"]:
      shards.append({**shard, "writer_id": wid})
      for kind, n in shard["counts"].items():
        counts[kind] += n
  shards.sort(key=lambda s: s["file"])
  return {
      "format": FORMAT,
      "version": FORMAT_VERSION,
      "tokenizer": next(iter(fingerprints.values()), ""),
      "configs": {wid: p["config_json"] for wid, p in parts.items()},
      "writers": sorted(parts),
      "shards": shards,
      "counts": counts,
      "total": sum(s["count"] for s in shards),
      "num_tokens": sum(s["num_tokens"] for s in shards),
      "num_target_tokens": sum(s["num_target_tokens"] for s in shards),
  }


def read_manifest(folder: str) -> dict:
  """The merged manifest of all writers in `folder` (built from the parts, so it is never stale).

  Keys: tokenizer, configs {writer_id: config_json}, writers, shards [{file, writer_id, count, counts,
  num_tokens, num_target_tokens, num_bytes}], counts {kind: n}, total, num_tokens, num_target_tokens.
  """
  parts = read_manifest_parts(folder)
  if not parts:
    raise EmptyRecordsError(f"records folder {folder} has no manifest ({_PART_PREFIX}<writer_id>.json): "
                            "nothing was written there yet, or it is not a records folder")
  return _merge(folder, parts)


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
  """Serializes rewrites of the merged manifest.json between processes on a POSIX filesystem."""
  if not _is_local(folder):
    yield
    return
  import fcntl  # POSIX only; object stores have no locks and rely on the per-writer parts.

  with open(_join(folder, ".manifest.lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _write_merged_manifest(folder: str) -> None:
  with _folder_lock(folder):
    _write_json_atomic(_join(folder, MANIFEST), _merge(folder, read_manifest_parts(folder)))


def iter_serialized(path: str) -> Iterator[bytes]:
  """Serialized records of one shard; a corrupt or truncated file raises CorruptShardError with the index."""
  index = 0
  try:
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
      yield raw
      index += 1
  except tf.errors.DataLossError as e:
    raise CorruptShardError(path, index, e.message.strip()) from e


def _shard_stats(records: Sequence[CorrectionRecord]) -> dict:
  counts = dict.fromkeys(KINDS, 0)
  for rec in records:
    counts[rec.kind] += 1
  return {
      "count": len(records),
      "counts": counts,
      "num_tokens": sum(len(r.input_ids) for r in records),
      "num_target_tokens": sum(r.num_targets for r in records),
  }


def iter_records(folder: str, kinds: Sequence[str] | None = None) -> Iterator[CorrectionRecord]:
  """All records of the finished shards in `folder`, in shard-name order (for audits, tests, re-tokenization)."""
  for shard in read_manifest(folder)["shards"]:
    for raw in iter_serialized(_join(folder, shard["file"])):
      rec = from_example(raw)
      if kinds is None or rec.kind in kinds:
        yield rec


class RecordWriter:
  """Writes correction records into `folder` as shards of `shard_size` records; resumable.

  Durability unit is the shard: a shard is written to `<name>.tmp` and renamed when it holds `shard_size`
  records, on `finish_shard()` and on `close()`; then this writer's manifest part is replaced atomically. After
  a kill, reopening with the same `writer_id` keeps every finished shard, deletes this writer's stray `.tmp`
  files, adopts finished shards the manifest had not recorded yet, and continues the numbering;
  `num_written()` tells the caller how many records are durable. Leaving the `with` block by an exception
  drops the unfinished shard, exactly like a kill, so a resumed explorer regenerates it once.
  """

  def __init__(self, folder: str, tokenizer_fingerprint: str, config_json: str = "{}", shard_size: int = 1024,
               writer_id: str = "host0"):
    if not tokenizer_fingerprint:
      raise ValueError("RecordWriter needs a non-empty tokenizer_fingerprint")
    if shard_size < 1:
      raise ValueError(f"RecordWriter shard_size must be >= 1, got {shard_size}")
    if not _WRITER_ID_RE.match(writer_id):
      raise ValueError(f"RecordWriter writer_id {writer_id!r} must match {_WRITER_ID_RE.pattern}")
    self.folder = str(folder)
    self.tokenizer = tokenizer_fingerprint
    self.config_json = config_json
    self.shard_size = shard_size
    self.writer_id = writer_id
    tf.io.gfile.makedirs(self.folder)
    self._lock = self._acquire_writer_lock()

    parts = read_manifest_parts(self.folder)
    for wid, part in parts.items():
      if part["tokenizer"] != tokenizer_fingerprint:
        raise TokenizerMismatchError(
            f"records folder {self.folder} holds records of tokenizer {part['tokenizer']} (writer {wid!r}); "
            f"this writer has tokenizer {tokenizer_fingerprint}")
    own = parts.get(writer_id)
    if own is not None and own["config_json"] != config_json:
      logging.warning("RecordWriter %s in %s resumes with a different config_json; keeping the original one.",
                      writer_id, self.folder)
      self.config_json = own["config_json"]
    self._shards: list[dict] = list(own["shards"]) if own else []
    self._recover()
    known = [_shard_index(writer_id, s["file"]) for s in self._shards]
    self._next_index = max(known, default=-1) + 1
    self._tf_writer: tf.io.TFRecordWriter | None = None
    self._pending: list[CorrectionRecord] = []
    self._closed = False
    self._save_manifest()

  def _acquire_writer_lock(self):
    """Refuses a second live writer with the same writer_id (POSIX filesystems; the OS drops it on a kill)."""
    if not _is_local(self.folder):
      return None
    import fcntl

    lock = open(_join(self.folder, f".writer-{self.writer_id}.lock"), "a")  # noqa: SIM115 (held until close)
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock.close()
      raise RuntimeError(f"another RecordWriter with writer_id {self.writer_id!r} is open on {self.folder}; "
                         "give every host its own writer_id") from None
    return lock

  def _release_writer_lock(self) -> None:
    if self._lock is not None:
      self._lock.close()  # closing the descriptor releases the flock
      self._lock = None

  def _recover(self) -> None:
    """Deletes this writer's stray temp shards and adopts finished shards missing from its manifest part."""
    recorded = {s["file"] for s in self._shards}
    for name in _list(self.folder):
      if name.endswith(_SHARD_SUFFIX + _TMP_SUFFIX) and _shard_index(self.writer_id, name[: -len(_TMP_SUFFIX)]) \
          is not None:
        logging.info("RecordWriter %s: deleting unfinished shard %s", self.writer_id, name)
        tf.io.gfile.remove(_join(self.folder, name))
      elif _shard_index(self.writer_id, name) is not None and name not in recorded:
        # Killed between the rename and the manifest update: the shard is complete, keep it.
        path = _join(self.folder, name)
        records = [from_example(raw) for raw in iter_serialized(path)]
        for i, rec in enumerate(records):
          if rec.tokenizer != self.tokenizer:
            raise TokenizerMismatchError(f"shard {path} record #{i} has tokenizer {rec.tokenizer}; "
                                         f"this writer has tokenizer {self.tokenizer}")
        logging.info("RecordWriter %s: adopting finished shard %s (%d records)", self.writer_id, name, len(records))
        self._shards.append({"file": name, "num_bytes": tf.io.gfile.stat(path).length, **_shard_stats(records)})
    for shard in self._shards:
      if not tf.io.gfile.exists(_join(self.folder, shard["file"])):
        raise FileNotFoundError(f"records folder {self.folder}: manifest part {_part_name(self.writer_id)} lists "
                                f"shard {shard['file']}, which is missing")
    self._shards.sort(key=lambda s: s["file"])

  def _save_manifest(self) -> None:
    counts = dict.fromkeys(KINDS, 0)
    for shard in self._shards:
      for kind, n in shard["counts"].items():
        counts[kind] += n
    part = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "writer_id": self.writer_id,
        "tokenizer": self.tokenizer,
        "config_json": self.config_json,
        "shards": self._shards,
        "counts": counts,
        "total": sum(counts.values()),
    }
    _write_json_atomic(_join(self.folder, _part_name(self.writer_id)), part)
    _write_merged_manifest(self.folder)

  def write(self, rec: CorrectionRecord) -> None:
    """Validates and appends one record; a record without a fingerprint gets the writer's."""
    if self._closed:
      raise ValueError(f"RecordWriter {self.writer_id} in {self.folder} is closed")
    if not rec.tokenizer:
      rec = dataclasses.replace(rec, tokenizer=self.tokenizer)
    elif rec.tokenizer != self.tokenizer:
      raise TokenizerMismatchError(f"record (task_id={rec.task_id!r}) has tokenizer {rec.tokenizer}; the writer "
                                   f"for {self.folder} has tokenizer {self.tokenizer}")
    serialized = to_example(rec).SerializeToString()
    if self._tf_writer is None:
      self._tf_writer = tf.io.TFRecordWriter(self._tmp_path())
    self._tf_writer.write(serialized)
    self._pending.append(rec)
    if len(self._pending) >= self.shard_size:
      self.finish_shard()

  def _tmp_path(self) -> str:
    return _join(self.folder, _shard_name(self.writer_id, self._next_index) + _TMP_SUFFIX)

  def finish_shard(self) -> None:
    """Makes the records written so far durable (renames the open shard, updates the manifest)."""
    if self._tf_writer is None:
      return
    self._tf_writer.close()
    self._tf_writer = None
    name = _shard_name(self.writer_id, self._next_index)
    final = _join(self.folder, name)
    tf.io.gfile.rename(self._tmp_path(), final, overwrite=False)
    self._shards.append({"file": name, "num_bytes": tf.io.gfile.stat(final).length, **_shard_stats(self._pending)})
    self._pending = []
    self._next_index += 1
    self._save_manifest()

  def abort_shard(self) -> None:
    """Drops the unfinished shard (what a kill would do)."""
    if self._tf_writer is not None:
      self._tf_writer.close()
      self._tf_writer = None
      tf.io.gfile.remove(self._tmp_path())
      if self._pending:
        logging.warning("RecordWriter %s: dropped %d unfinished records", self.writer_id, len(self._pending))
      self._pending = []

  def num_written(self) -> int:
    """Records in this writer's finished (durable) shards."""
    return sum(s["count"] for s in self._shards)

  def num_pending(self) -> int:
    """Records in the open shard, durable after `finish_shard()` / `close()`."""
    return len(self._pending)

  def counts(self) -> dict[str, int]:
    """Durable records of this writer per kind."""
    counts = dict.fromkeys(KINDS, 0)
    for shard in self._shards:
      for kind, n in shard["counts"].items():
        counts[kind] += n
    return counts

  def close(self) -> None:
    """Finishes the open shard and refreshes the folder's tfds metadata (`finalize_for_tfds`)."""
    if not self._closed:
      self.finish_shard()
      self._closed = True
      try:
        if read_manifest(self.folder)["total"]:
          finalize_for_tfds(self.folder)
      finally:
        self._release_writer_lock()

  def __enter__(self) -> RecordWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.abort_shard()
      self._closed = True
      self._release_writer_lock()
    else:
      self.close()


# ---------------------------------------------------------------------------------------------------------------
# tfds metadata.


def tfds_features():
  """The tfds FeaturesDict matching `to_example`."""
  import tensorflow_datasets as tfds

  feats = {
      "input_ids": tfds.features.Tensor(shape=(None,), dtype=tf.int64),
      "loss_mask": tfds.features.Tensor(shape=(None,), dtype=tf.int64),
      "weight": tfds.features.Tensor(shape=(), dtype=tf.float32),
      "step": tfds.features.Tensor(shape=(), dtype=tf.int64),
  }
  for name in _BYTES_FIELDS:
    feats[name] = tfds.features.Text()
  return tfds.features.FeaturesDict(feats)


def finalize_for_tfds(folder: str) -> int:
  """Makes `folder` loadable by `tfds.builder_from_directory(folder)` (split "train"); returns the shard count.

  tfds wants shards named `<name>-<split>.tfrecord-XXXXX-of-YYYYY`, numbered globally, which independent
  resumable writers cannot know while writing. So the shards keep their writer names and this function
  hard-links them under tfds names (copies on filesystems without links) and writes
  `dataset_info.json`/`features.json` from the manifest's finished shards. Every `RecordWriter.close()` runs it,
  so the metadata covers all shards finished when the last writer closed. Idempotent: links that already point
  at the right shard are kept; stale tfds names are removed. Serialized between processes by the folder lock.
  """
  import tensorflow_datasets as tfds

  with _folder_lock(folder):
    manifest = read_manifest(folder)
    shards = [s for s in manifest["shards"] if s["count"] > 0]
    if not shards:
      raise EmptyRecordsError(f"records folder {folder} has no finished shards to describe for tfds")
    template = tfds.core.ShardedFileTemplate(data_dir=tfds.core.Path(folder), dataset_name=TFDS_NAME,
                                             split=TFDS_SPLIT, filetype_suffix="tfrecord")
    targets = [os.fspath(t) for t in template.sharded_filepaths(len(shards))]
    wanted = {os.path.basename(t) for t in targets}
    for name in _list(folder):
      if _TFDS_SHARD_RE.match(name) and name not in wanted:
        tf.io.gfile.remove(_join(folder, name))
    for shard, target in zip(shards, targets, strict=True):
      _link_shard(_join(folder, shard["file"]), target, shard["num_bytes"])
    split = tfds.core.SplitInfo(name=TFDS_SPLIT, shard_lengths=[s["count"] for s in shards],
                                num_bytes=sum(s["num_bytes"] for s in shards))
    tfds.folder_dataset.write_metadata(
        data_dir=folder, features=tfds_features(), split_infos=[split], filename_template=template,
        check_data=False,
        description=f"LEAFE correction records (tokenizer {manifest['tokenizer']}); see leafe_jax/data/records.py.")
  return len(shards)


def _link_shard(src: str, target: str, num_bytes: int) -> None:
  """Makes `target` a hard link to (or, without links, a copy of) `src`, unless it already is one."""
  if tf.io.gfile.exists(target):
    if _is_local(target) and os.path.samefile(src, target):
      return
    if not _is_local(target) and tf.io.gfile.stat(target).length == num_bytes:
      return  # an object-store copy made by an earlier call (same position and count, so the same shard)
    tf.io.gfile.remove(target)
  try:
    if not _is_local(target):
      raise OSError("object stores have no links")
    os.link(src, target)
  except OSError:
    tf.io.gfile.copy(src, target, overwrite=True)
