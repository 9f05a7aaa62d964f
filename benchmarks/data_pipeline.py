"""Correction-record reader: our packed tf.data pipeline vs the tfds reader with per-example padding.

Both read the same records folder (written by RecordWriter, made tfds-loadable by finalize_for_tfds) and emit
[batch, seq_len] rows. Reported: real (non-pad) tokens per second and the fraction of row slots that hold real
tokens (what the accelerator computes on). Ratio = ours / reference real-token throughput.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from leafe_jax.data import pipeline, records


def write_folder(folder, num_records, mean_len, seed):
  rng = np.random.default_rng(seed)
  lengths = np.clip(rng.lognormal(np.log(mean_len), 0.6, size=num_records).astype(int), 16, 8 * mean_len)
  with records.RecordWriter(folder, "tok-bench", shard_size=256, writer_id="host0") as w:
    for i, n in enumerate(lengths):
      ids = rng.integers(1, 32000, size=n).tolist()
      mask = [0] * (n // 2) + [1] * (n - n // 2)
      w.write(records.CorrectionRecord(input_ids=ids, loss_mask=mask, kind=records.KINDS[i % 2], task_id=str(i)))
  records.finalize_for_tfds(folder)
  return int(lengths.sum())


def measure(batches):
  start, real, slots, rows = time.perf_counter(), 0, 0, 0
  for _ids, seg in batches:
    real += int((seg > 0).sum())
    slots += seg.size
    rows += seg.shape[0]
  return real / (time.perf_counter() - start), real / slots, rows


def ours(folder, seq_len, batch):
  ds = pipeline.make_dataset(folder, seq_len=seq_len, batch_size=batch, num_epochs=1, verify=False)
  return ((b["input_ids_BxT"], b["segment_ids_BxT"]) for b in ds.as_numpy_iterator())


def reference(folder, seq_len, batch):
  ds = tfds.builder_from_directory(folder).as_dataset(split="train", shuffle_files=False)
  ds = ds.shuffle(10_000, seed=0).map(lambda ex: tf.cast(ex["input_ids"][-seq_len:], tf.int32),
                                      num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.padded_batch(batch, padded_shapes=[seq_len], drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ((ids, (ids > 0).astype(np.int32)) for ids in ds.as_numpy_iterator())


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--records", type=int, default=4000)
  parser.add_argument("--mean_len", type=int, default=400)
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=8)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as folder:
    total = write_folder(folder, args.records, args.mean_len, seed=0)
    for fn in (ours, reference):  # warm-up (tracing, file cache)
      measure(fn(folder, args.seq_len, args.batch))
    start = time.perf_counter()
    host = pipeline.scan(folder, args.seq_len)
    scan_s = time.perf_counter() - start
    rows = {}
    for name, fn in (("ours (first-fit packing)", ours), ("reference (tfds + padded_batch)", reference)):
      rows[name] = measure(fn(folder, args.seq_len, args.batch))
  print(f"{args.records} records, {total} tokens, seq_len {args.seq_len}, batch {args.batch}\n")
  print(f"up-front shard scan (CRC, counts, fingerprints, truncation): {host.num_records / scan_s:,.0f} records/s\n")
  print("| pipeline | real tokens/s | real-token fraction of row slots | rows per epoch |")
  print("|---|---|---|---|")
  for name, (tps, frac, n_rows) in rows.items():
    print(f"| {name} | {tps:,.0f} | {frac:.3f} | {n_rows} |")
  o, r = rows["ours (first-fit packing)"][0], rows["reference (tfds + padded_batch)"][0]
  print(json.dumps({"name": "data_pipeline", "ours": round(o), "reference": round(r), "unit": "real tokens/s",
                    "ratio": round(o / r, 3)}))


if __name__ == "__main__":
  main()
