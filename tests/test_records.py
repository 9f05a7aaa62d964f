"""Correction records: schema validation, writer round trip, shard rotation, resume after a kill, tfds loading of
what a writer leaves."""

import json
import os
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from leafe_jax.data import records

FP = "tok-test-a"


def _record(i: int, kind: str = "cf", length: int = 6) -> records.CorrectionRecord:
  ids = [(i * 7 + j) % 50 + 1 for j in range(length - 1)] + [1000 + i]
  mask = [0] * (length // 2) + [1] * (length - length // 2)
  return records.CorrectionRecord(
      input_ids=ids, loss_mask=mask, weight=0.5 + i, kind=kind, env="sokoban", task_id=f"task-{i}",
      tree_id=f"tree-{i // 3}", node_id=f"node-{i}", step=i % 4, experience=f"e{i}: push left first",
      messages_json=json.dumps([{"role": "user", "content": f"obs {i}"}]), tokenizer=FP)


def _write(folder, recs, shard_size=3, writer_id="host0", fp=FP):
  with records.RecordWriter(str(folder), fp, config_json='{"k": 1}', shard_size=shard_size,
                            writer_id=writer_id) as w:
    for rec in recs:
      w.write(rec)
  return w


def test_round_trip_exact_values(tmp_path):
  recs = [_record(i, records.KINDS[i % len(records.KINDS)], length=3 + i) for i in range(7)]
  _write(tmp_path, recs)
  back = list(records.iter_records(str(tmp_path)))
  assert back == recs
  assert back[3].weight == 3.5 and back[3].experience == "e3: push left first"


def test_writer_fills_missing_fingerprint_and_refuses_another(tmp_path):
  with records.RecordWriter(str(tmp_path), FP, writer_id="w") as w:
    w.write(records.CorrectionRecord(input_ids=[1, 2], loss_mask=[0, 1], kind="sft"))
    with pytest.raises(records.TokenizerMismatchError, match="tok-other.*tok-test-a"):
      w.write(records.CorrectionRecord(input_ids=[1, 2], loss_mask=[0, 1], kind="sft", tokenizer="tok-other"))
  assert [r.tokenizer for r in records.iter_records(str(tmp_path))] == [FP]


@pytest.mark.parametrize("change, field", [
    ({"loss_mask": [0, 1]}, "loss_mask"),
    ({"loss_mask": [0, 2, 1]}, "loss_mask"),
    ({"loss_mask": [0, 0, 0]}, "loss_mask"),
    ({"loss_mask": [0, 0.6, 1]}, "loss_mask"),  # int() truncated it to 0: a target silently dropped
    ({"loss_mask": [0, 1.9, 1]}, "loss_mask"),
    ({"input_ids": [], "loss_mask": []}, "input_ids"),
    ({"input_ids": [1, -3, 2]}, "input_ids"),
    ({"kind": "grpo"}, "kind"),
    ({"weight": float("nan")}, "weight"),
    ({"weight": -1.0}, "weight"),
    ({"weight": float("inf")}, "weight"),
])
def test_validation_names_the_field(tmp_path, change, field):
  rec = records.CorrectionRecord(**{"input_ids": [1, 2, 3], "loss_mask": [0, 1, 1], "kind": "cf", **change})
  with pytest.raises(records.RecordError, match=f"'{field}'"):
    rec.validate()
  with records.RecordWriter(str(tmp_path), FP) as w, pytest.raises(records.RecordError, match=f"'{field}'"):
    w.write(rec)
  assert w.num_written() == 0


def test_shard_rotation_and_manifest_counts(tmp_path):
  kinds = ["cf", "cf", "reh", "iwm", "sr", "sft", "reh", "cf", "cf", "sr"]
  w = _write(tmp_path, [_record(i, k) for i, k in enumerate(kinds)], shard_size=3)
  manifest = records.read_manifest(str(tmp_path))
  assert [s["file"] for s in manifest["shards"]] == [f"host0-0000{i}.tfrecord" for i in range(4)]
  assert [s["count"] for s in manifest["shards"]] == [3, 3, 3, 1]
  assert manifest["counts"] == {"cf": 4, "reh": 2, "iwm": 1, "sr": 2, "sft": 1}
  assert manifest["shards"][0]["counts"] == {"cf": 2, "reh": 1, "iwm": 0, "sr": 0, "sft": 0}
  assert manifest["total"] == 10 == w.num_written()
  assert manifest["num_tokens"] == 60 and manifest["num_target_tokens"] == 30
  assert manifest["tokenizer"] == FP and manifest["configs"] == {"host0": '{"k": 1}'}
  with open(tmp_path / "manifest.json") as f:
    assert json.load(f) == manifest
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_resume_after_kill_drops_temp_shard_without_duplicates(tmp_path):
  folder = str(tmp_path)
  w = records.RecordWriter(folder, FP, shard_size=3, writer_id="host0")
  for i in range(7):  # two finished shards, one record in the open .tmp shard
    w.write(_record(i))
  w._tf_writer.flush()  # the bytes of the unfinished shard reach the disk; then the process "dies",
  w._lock.close()  # and the OS drops its writer lock
  assert os.path.exists(tmp_path / "host0-00002.tfrecord.tmp")
  # Another writer's temp shard must survive this writer's recovery.
  (tmp_path / "host1-00000.tfrecord.tmp").write_bytes(b"in progress")

  w2 = records.RecordWriter(folder, FP, shard_size=3, writer_id="host0")
  assert w2.num_written() == 6
  assert not os.path.exists(tmp_path / "host0-00002.tfrecord.tmp")
  assert os.path.exists(tmp_path / "host1-00000.tfrecord.tmp")
  for i in range(6, 10):
    w2.write(_record(i))
  w2.close()
  ids = [r.task_id for r in records.iter_records(folder)]
  assert ids == [f"task-{i}" for i in range(10)]
  assert records.read_manifest(folder)["total"] == 10
  assert [s["file"] for s in records.read_manifest(folder)["shards"]][-1] == "host0-00003.tfrecord"


def test_resume_adopts_shard_renamed_before_manifest_update(tmp_path):
  folder = str(tmp_path)
  w = records.RecordWriter(folder, FP, shard_size=2, writer_id="h")
  for i in range(4):
    w.write(_record(i))
  part = tmp_path / "manifest-h.json"
  state = json.loads(part.read_text())
  state["shards"] = state["shards"][:1]
  part.write_text(json.dumps(state))  # as if killed between the rename of shard 1 and the manifest update
  w._lock.close()

  w2 = records.RecordWriter(folder, FP, shard_size=2, writer_id="h")
  assert w2.num_written() == 4
  w2.write(_record(4))
  w2.close()
  assert [r.task_id for r in records.iter_records(folder)] == [f"task-{i}" for i in range(5)]


def test_writers_share_a_folder_without_clobbering(tmp_path):
  folder = str(tmp_path)
  a = records.RecordWriter(folder, FP, shard_size=2, writer_id="host0")
  b = records.RecordWriter(folder, FP, shard_size=2, writer_id="host1")
  for i in range(5):  # interleaved manifest updates
    a.write(_record(i))
    b.write(_record(100 + i, "reh"))
  a.close()
  b.close()
  manifest = records.read_manifest(folder)
  assert manifest["writers"] == ["host0", "host1"]
  assert manifest["total"] == 10 and manifest["counts"]["cf"] == 5 and manifest["counts"]["reh"] == 5
  with open(tmp_path / "manifest.json") as f:
    assert json.load(f)["total"] == 10


def test_second_live_writer_with_the_same_id_is_refused(tmp_path):
  with records.RecordWriter(str(tmp_path), FP, writer_id="host3"), pytest.raises(RuntimeError, match="'host3' is open"):
    records.RecordWriter(str(tmp_path), FP, writer_id="host3")
  records.RecordWriter(str(tmp_path), FP, writer_id="host3").close()  # free again after close


_HOST_SCRIPT = """
import sys
from leafe_jax.data import records
folder, writer_id = sys.argv[1], sys.argv[2]
with records.RecordWriter(folder, "tok-test-a", shard_size=3, writer_id=writer_id) as w:
  for i in range(40):
    w.write(records.CorrectionRecord(input_ids=[1, i + 2], loss_mask=[0, 1], kind="reh", task_id=f"{writer_id}-{i}"))
"""


def test_concurrent_host_processes_share_a_folder(tmp_path):
  procs = [subprocess.Popen([sys.executable, "-c", _HOST_SCRIPT, str(tmp_path), f"host{i}"]) for i in range(2)]
  assert [p.wait(timeout=120) for p in procs] == [0, 0]
  manifest = records.read_manifest(str(tmp_path))
  assert manifest["total"] == 80 and len(manifest["shards"]) == 28
  with open(tmp_path / "manifest.json") as f:
    assert json.load(f) == manifest
  ids = [r.task_id for r in records.iter_records(str(tmp_path))]
  assert sorted(ids) == sorted(f"host{h}-{i}" for h in range(2) for i in range(40))
  assert sorted(_tfds_task_ids(tmp_path)) == sorted(ids)  # the last writer to close described every shard


def test_writer_refuses_folder_of_another_tokenizer(tmp_path):
  _write(tmp_path, [_record(0)])
  with pytest.raises(records.TokenizerMismatchError, match="tok-test-a.*tok-test-b"):
    records.RecordWriter(str(tmp_path), "tok-test-b", writer_id="host7")


def test_read_manifest_of_empty_folder_names_it(tmp_path):
  with pytest.raises(records.EmptyRecordsError, match=str(tmp_path)):
    records.read_manifest(str(tmp_path))


def test_tfds_builder_from_directory_loads_records(tmp_path):
  import tensorflow_datasets as tfds

  recs = [_record(i, records.KINDS[i % 5], length=4 + i) for i in range(5)]
  _write(tmp_path / "a", recs[:3], shard_size=2, writer_id="host0")
  _write(tmp_path / "a", recs[3:], shard_size=2, writer_id="host1")
  assert records.finalize_for_tfds(str(tmp_path / "a")) == 3
  builder = tfds.builder_from_directory(str(tmp_path / "a"))
  assert builder.info.splits["train"].num_examples == 5
  got = sorted(builder.as_dataset(split="train").as_numpy_iterator(), key=lambda ex: ex["task_id"])
  for ex, rec in zip(got, recs, strict=True):
    assert ex["input_ids"].tolist() == rec.input_ids and ex["loss_mask"].tolist() == rec.loss_mask
    assert ex["weight"] == pytest.approx(rec.weight) and ex["step"] == rec.step
    assert ex["kind"].decode() == rec.kind and ex["task_id"].decode() == rec.task_id
    assert ex["experience"].decode() == rec.experience and ex["tokenizer"].decode() == FP


def _tfds_task_ids(folder) -> list[str]:
  import tensorflow_datasets as tfds

  builder = tfds.builder_from_directory(str(folder))
  got = [ex["task_id"].decode() for ex in builder.as_dataset(split="train").as_numpy_iterator()]
  assert builder.info.splits["train"].num_examples == len(got)
  return got


def test_closed_writer_leaves_a_folder_that_tfds_loads(tmp_path):
  import tensorflow_datasets as tfds

  recs = [_record(i) for i in range(4)]
  _write(tmp_path, recs, shard_size=3)
  builder = tfds.builder_from_directory(str(tmp_path))
  got = sorted(builder.as_dataset(split="train").as_numpy_iterator(), key=lambda ex: ex["task_id"])
  assert [(ex["task_id"].decode(), ex["input_ids"].tolist()) for ex in got] == [
      (r.task_id, r.input_ids) for r in recs]


def test_resumed_writer_refreshes_the_tfds_metadata(tmp_path):
  _write(tmp_path, [_record(i) for i in range(4)], shard_size=3)
  with pytest.raises(KeyboardInterrupt), records.RecordWriter(str(tmp_path), FP, shard_size=3) as w:
    for i in range(4, 8):
      w.write(_record(i))  # one shard finished, one dropped by the interrupt
    raise KeyboardInterrupt
  assert sorted(_tfds_task_ids(tmp_path)) == [f"task-{i}" for i in range(4)]  # the last close's view, still valid
  _write(tmp_path, [_record(i) for i in range(7, 9)], shard_size=3)  # the resumed run
  assert sorted(_tfds_task_ids(tmp_path)) == [f"task-{i}" for i in range(9)]
  assert len([n for n in os.listdir(tmp_path) if n.startswith(records.TFDS_NAME)]) == 4


def test_a_stage_records_folder_loads_with_tfds(tmp_path):
  import ml_collections

  from leafe_jax.baselines import expert_stage

  cfg = expert_stage.default_config()
  cfg.update(num_tasks=2, trajectories_per_task=1, tokenizer_vocab_size=300, env_config=ml_collections.ConfigDict(
      {"dim": (6, 6), "num_boxes": 1, "max_steps": 8, "compact_prompt": True}))
  expert_stage.run(ml_collections.ConfigDict({"expert_data": cfg}), str(tmp_path), str(tmp_path / "expert_data"))
  folder = tmp_path / "expert_data" / "records"
  assert sorted(_tfds_task_ids(folder)) == sorted(r.task_id for r in records.iter_records(str(folder)))


def test_finalize_for_tfds_is_idempotent(tmp_path):
  _write(tmp_path, [_record(i) for i in range(5)], shard_size=2)
  links = sorted(n for n in os.listdir(tmp_path) if n.startswith(records.TFDS_NAME))
  inodes = [os.stat(tmp_path / n).st_ino for n in links]
  info = (tmp_path / "dataset_info.json").read_text()
  assert records.finalize_for_tfds(str(tmp_path)) == 3
  assert sorted(n for n in os.listdir(tmp_path) if n.startswith(records.TFDS_NAME)) == links
  assert [os.stat(tmp_path / n).st_ino for n in links] == inodes
  assert (tmp_path / "dataset_info.json").read_text() == info
  assert sorted(_tfds_task_ids(tmp_path)) == [f"task-{i}" for i in range(5)]


def test_tfds_metadata_survives_renaming_the_folder(tmp_path):
  _write(tmp_path / "records.partial", [_record(i) for i in range(3)])  # as the distill stage writes
  os.replace(tmp_path / "records.partial", tmp_path / "records")
  assert sorted(_tfds_task_ids(tmp_path / "records")) == [f"task-{i}" for i in range(3)]


def test_writer_that_wrote_nothing_closes_without_tfds_metadata(tmp_path):
  records.RecordWriter(str(tmp_path), FP).close()
  assert not (tmp_path / "dataset_info.json").exists()


def _tokenizer(vocab):
  model = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  model.pre_tokenizer = pre_tokenizers.Whitespace()
  return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="<eos>")


def test_tokenizer_fingerprint_is_stable_and_discriminating(tmp_path):
  from transformers import AutoTokenizer

  vocab = {"<pad>": 0, "<eos>": 1, "[UNK]": 2, "push": 3, "left": 4}
  a, b = _tokenizer(dict(vocab)), _tokenizer(dict(vocab))
  fp = records.tokenizer_fingerprint(a)
  assert fp == records.tokenizer_fingerprint(b)
  a.save_pretrained(str(tmp_path))  # explorer and trainer load the tokenizer from an HF directory
  assert records.tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tmp_path))) == fp
  a("push left", truncation=True, max_length=1)  # runtime settings do not change what ids mean
  assert records.tokenizer_fingerprint(a) == fp
  assert records.tokenizer_fingerprint(_tokenizer({**vocab, "right": 5})) != fp
  assert records.tokenizer_fingerprint(_tokenizer({**vocab, "push": 4, "left": 3})) != fp


def test_audit_decodes_records_with_targets_bracketed(tmp_path):
  from leafe_jax.data import audit

  tok = _tokenizer({"<pad>": 0, "<eos>": 1, "[UNK]": 2, "push": 3, "left": 4, "up": 5})
  ids = tok("push left up").input_ids
  rec = records.CorrectionRecord(input_ids=ids, loss_mask=[0, 1, 1], kind="cf", task_id="t0",
                                 experience="go up", tokenizer=records.tokenizer_fingerprint(tok))
  with records.RecordWriter(str(tmp_path), rec.tokenizer) as w:
    w.write(rec)
  text = audit.describe(str(tmp_path), seq_len=2, tokenizer=tok, show=1)
  assert "records 1: cf=1" in text and "1 records are left-truncated" in text
  assert "experience: go up" in text and "push[[left up]]" in text
