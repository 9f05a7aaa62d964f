r"""Audit a correction-records folder: manifest summary, shard check, and a few decoded records.

  python -m leafe_jax.data.audit --folder=workdir/demo/explore/records [--seq_len=4096] \
      [--tokenizer=workdir/demo/train/hf] [--show=3] [--kinds=cf,reh]

With --tokenizer, target tokens (loss_mask = 1) are shown between [[ and ]] in the decoded text.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from absl import app, flags

from leafe_jax.data import pipeline, records

TARGET_OPEN, TARGET_CLOSE = "[[", "]]"


def render_record(rec: records.CorrectionRecord, tokenizer: Any | None = None) -> str:
  """Metadata and token/target layout of one record; decoded text with targets bracketed given a tokenizer."""
  head = (f"kind={rec.kind} env={rec.env} task_id={rec.task_id} tree_id={rec.tree_id} node_id={rec.node_id} "
          f"step={rec.step} weight={rec.weight:g} tokens={len(rec.input_ids)} targets={rec.num_targets}")
  lines = [head]
  if rec.experience:
    lines.append(f"experience: {rec.experience}")
  if tokenizer is not None:
    pieces = []
    for is_target, group in itertools.groupby(zip(rec.input_ids, rec.loss_mask), key=lambda tm: tm[1]):
      text = tokenizer.decode([t for t, _ in group])
      pieces.append(f"{TARGET_OPEN}{text}{TARGET_CLOSE}" if is_target else text)
    lines.append("".join(pieces))
  return "\n".join(lines)


def describe(folder: str, seq_len: int | None = None, tokenizer: Any | None = None, show: int = 0,
             kinds: Sequence[str] | None = None) -> str:
  """A human-readable report on `folder`; with seq_len, every shard is read and checked (see pipeline.scan)."""
  manifest = records.read_manifest(folder)
  lines = [
      f"records folder {folder}",
      f"tokenizer {manifest['tokenizer']}; writers {', '.join(manifest['writers'])}; {len(manifest['shards'])} "
      f"finished shards",
      f"records {manifest['total']}: " + ", ".join(f"{k}={n}" for k, n in manifest["counts"].items()),
      f"tokens {manifest['num_tokens']}, target tokens {manifest['num_target_tokens']}",
  ]
  if seq_len:
    host = pipeline.scan(folder, seq_len, kinds=kinds)
    lines.append(f"checked: all shards readable; at seq_len {seq_len}, {host.num_truncated} records are "
                 f"left-truncated and {host.num_targets_lost} target tokens are lost")
  for rec in itertools.islice(records.iter_records(folder, kinds), show):
    lines += ["", render_record(rec, tokenizer)]
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  args = flags.FLAGS
  tokenizer = None
  if args.tokenizer:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    fingerprint = records.tokenizer_fingerprint(tokenizer)
    stored = records.read_manifest(args.folder)["tokenizer"]
    if fingerprint != stored:
      raise records.TokenizerMismatchError(f"records folder {args.folder} holds records of tokenizer {stored}; "
                                           f"--tokenizer {args.tokenizer} is tokenizer {fingerprint}")
  kinds = [k for k in args.kinds.split(",") if k] or None
  print(describe(args.folder, args.seq_len or None, tokenizer, args.show, kinds))


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module never touches global flags.
  flags.DEFINE_string("folder", None, "Records folder.", required=True)
  flags.DEFINE_integer("seq_len", 0, "If > 0: read every shard and count truncation at this length.")
  flags.DEFINE_string("tokenizer", "", "HF tokenizer dir to decode the shown records.")
  flags.DEFINE_integer("show", 2, "Records to print.")
  flags.DEFINE_string("kinds", "", "Comma-separated kinds to show and check (default: all).")
  app.run(main)
