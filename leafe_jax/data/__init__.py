"""Correction records: `records` (schema, resumable TFRecord writer, manifest, tfds metadata) and `pipeline`
(tf.data reader: host sharding, shuffling, packing, resumable iteration)."""
