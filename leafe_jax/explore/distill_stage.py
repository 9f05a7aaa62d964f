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

from leafe_jax import stage_settings
from leafe_jax.explore.distill import build_examples
from leafe_jax.explore.ledger import ledger_name
from leafe_jax.explore.tree import TREE_FILE, load_trees
from leafe_jax.policy.factory import resolve_path

CONFIG_SECTION = "distill"
_FREE_FIELDS = ("shard_size",)  # how the records are split into files, not which records


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
  # Distill only trees whose explore shard finished (its ledger, written at the end, lists their tasks); True
  # distills unfinished shards' trees as they are (a later run, with more trees, then refuses these records).
  c.allow_unfinished_explore = False
  return c


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """Value checks of a distill section that need no files (`main.plan` runs them before any stage starts)."""
  if cfg.max_cf_per_task < 0:
    raise ValueError(f"config field 'distill.max_cf_per_task' must be >= 0, got {cfg.max_cf_per_task}")
  if not 0 <= cfg.reh_fraction <= 1:
    raise ValueError(f"config field 'distill.reh_fraction' must be in [0, 1], got {cfg.reh_fraction}")
  if cfg.reh_weight < 0:
    raise ValueError(f"config field 'distill.reh_weight' must be >= 0, got {cfg.reh_weight}")
  if cfg.shard_size < 1:
    raise ValueError(f"config field 'distill.shard_size' must be >= 1, got {cfg.shard_size}")


def load_finished_trees(tree_dir: str, files: list[str], allow_unfinished: bool = False) -> list:
  """The trees of `files`; unless `allow_unfinished`, only if each `shard-<i>-of-<n>.jsonl` shard has finished.

  The explore stage saves a shard's ledger (beside the trees folder) when the shard ends: a missing one, or one
  that does not list every task of the file (an earlier run's), means the shard is still running or was killed,
  and distilling now would leave its other tasks out of the records for good (a finished distill is not redone).
  Tree files named otherwise (written by other tools) are not checked.
  """
  advice = ("finish that shard's explore (rerun it: it resumes), or set distill.allow_unfinished_explore=True to "
            "distill its trees as they are")
  ledgers = {}
  for path in files:
    match = TREE_FILE.fullmatch(os.path.basename(path))
    if match is None or allow_unfinished:
      continue
    index, count = (int(n) for n in match.groups())
    name = ledger_name(index, count)
    ledgers[path] = (f"{index}/{count}", os.path.join(os.path.dirname(os.path.abspath(tree_dir)), name))
    if not os.path.exists(ledgers[path][1]):
      raise RuntimeError(f"distill: explore shard {index}/{count} has not finished: its trees {path} have no "
                         f"ledger {ledgers[path][1]} yet; {advice}")
  trees = []
  for path in files:
    loaded = list(load_trees(path))
    if path in ledgers:
      shard, ledger_path = ledgers[path]
      with open(ledger_path) as f:
        listed = set(json.load(f).get("per_task", {}))
      unlisted = sorted({tree.task_id for tree in loaded} - listed)
      if unlisted:
        raise RuntimeError(f"distill: explore shard {shard} has not finished: {path} holds trees of {len(unlisted)} "
                           f"tasks (e.g. {unlisted[0]!r}) that its ledger {ledger_path} does not list (a later "
                           f"explore of the shard is running or was killed); {advice}")
    trees.extend(loaded)
  return trees


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  from transformers import AutoTokenizer

  from leafe_jax.data import records
  from leafe_jax.policy.chat import encode_turns

  cfg = config.distill
  final = os.path.join(stage_dir, "records")
  complete = os.path.exists(os.path.join(final, "manifest.json"))
  tree_dir = resolve_path(cfg.trees, workdir)
  files = sorted(glob.glob(os.path.join(tree_dir, "*.jsonl")))
  if complete and not files:
    logging.warning("distill: no tree files in %s any more; keeping the records made from them", tree_dir)
    return
  if not files:
    raise FileNotFoundError(f"distill: no tree files in {tree_dir}: run the explore stage first")
  tokenizer = AutoTokenizer.from_pretrained(resolve_path(cfg.tokenizer, workdir))
  fingerprint = records.tokenizer_fingerprint(tokenizer)
  # Trees explored since (more tasks, a finished shard) or other settings would make other records.
  settings = stage_settings.of_section(cfg, _FREE_FIELDS, trees_files=stage_settings.files_fingerprint(files, tree_dir),
                                       tokenizer_fingerprint=fingerprint)
  stage_settings.check("distill", stage_dir, settings, has_outputs=complete, what="records")
  if complete:
    logging.info("distill: %s is complete, skipping", final)
    return
  trees = load_finished_trees(tree_dir, files, cfg.allow_unfinished_explore)
  examples = build_examples(trees, max_cf_per_task=cfg.max_cf_per_task, reh_fraction=cfg.reh_fraction,
                            reh_weight=cfg.reh_weight, seed=cfg.seed)
  if not examples:
    raise ValueError(f"distill: {len(trees)} trees hold no successful rollout, so there is nothing to distill")
  partial = os.path.join(stage_dir, "records.partial")
  shutil.rmtree(partial, ignore_errors=True)
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
