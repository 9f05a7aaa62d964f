"""Stage `distill`: correction records (kinds cf, reh) from the explorer's trees, tokenized like the policy.

Writes into `<stage_dir>/records.partial` and renames it to `<stage_dir>/records` when complete, so a killed
run is redone from scratch (it is deterministic given the trees and the seed) and never leaves half a dataset.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import ml_collections
from absl import logging

from leafe_jax.explore.distill import build_examples
from leafe_jax.explore.tree import load_trees
from leafe_jax.policy.factory import resolve_path

CONFIG_SECTION = "distill"


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trees = "explore/trees"  # folder of the explorer's tree shards, relative to workdir
  c.tokenizer = "train/hf"  # HF tokenizer dir (the explored policy's), relative to workdir
  c.max_cf_per_task = 3  # paper: 3 counterfactual (branch) instances per task (paper_notes §2.3)
  c.reh_fraction = 0.2  # paper: a random 20% of successful rollouts into D_reh (paper_notes §2.3)
  # beta of L = L_cf + beta * L_reh; the paper gives no value. 1.0 weighs a rehearsed turn like a correction,
  # with per-example loss normalisation (train.loss_normalization) it is exactly the paper's sum.
  c.reh_weight = 1.0
  c.shard_size = 4096  # records per TFRecord shard
  c.seed = 0  # which successful rollouts are rehearsed
  return c


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  from transformers import AutoTokenizer

  from leafe_jax.data import records
  from leafe_jax.policy.chat import encode_turns

  cfg = config.distill
  final = os.path.join(stage_dir, "records")
  if os.path.exists(os.path.join(final, "manifest.json")):
    logging.info("distill: %s is complete, skipping", final)
    return
  tree_dir = resolve_path(cfg.trees, workdir)
  files = sorted(glob.glob(os.path.join(tree_dir, "*.jsonl")))
  if not files:
    raise FileNotFoundError(f"distill: no tree files in {tree_dir}: run the explore stage first")
  trees = [tree for path in files for tree in load_trees(path)]
  examples = build_examples(trees, max_cf_per_task=cfg.max_cf_per_task, reh_fraction=cfg.reh_fraction,
                            reh_weight=cfg.reh_weight, seed=cfg.seed)
  if not examples:
    raise ValueError(f"distill: {len(trees)} trees hold no successful rollout, so there is nothing to distill")
  tokenizer = AutoTokenizer.from_pretrained(resolve_path(cfg.tokenizer, workdir))
  fingerprint = records.tokenizer_fingerprint(tokenizer)
  partial = os.path.join(stage_dir, "records.partial")
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(stage_dir, exist_ok=True)
  with records.RecordWriter(partial, tokenizer_fingerprint=fingerprint, config_json=json.dumps(cfg.to_dict()),
                            shard_size=cfg.shard_size, writer_id="distill") as writer:
    encoded = encode_turns(tokenizer, [(ex.messages, ex.response) for ex in examples])
    for ex, (input_ids, loss_mask) in zip(examples, encoded, strict=True):
      writer.write(records.CorrectionRecord(
          input_ids=input_ids, loss_mask=loss_mask, kind=ex.kind, weight=ex.weight, env=trees[0].env,
          task_id=ex.task_id, tree_id=ex.task_id, node_id=str(ex.node_id), step=ex.step, experience=ex.experience,
          messages_json=json.dumps(ex.messages), tokenizer=fingerprint))
  os.replace(partial, final)
  counts = {kind: sum(e.kind == kind for e in examples) for kind in ("cf", "reh")}
  logging.info("distill: %s records from %d trees -> %s", counts, len(trees), final)
