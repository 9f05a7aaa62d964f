"""The `train` stage: sharded SFT on correction records (L = L_cf + β·L_reh; β is each record's weight).

Resumes from `<stage_dir>/checkpoints` without flags (params, optimizer, step, RNG, data position) and exports
the final model as a complete HF directory `<stage_dir>/hf` (config, safetensors, tokenizer files).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from leafe_jax import stage_settings
from leafe_jax.parallel import distributed
from leafe_jax.policy.factory import resolve_path

CONFIG_SECTION = "train"
# Fields a resumed run may change: placement, speed and bookkeeping, none of the optimisation its checkpoints
# continue, and the run's length (with a cosine schedule the schedule's length is recorded instead).
_FREE_FIELDS = ("mesh", "micro_batches", "remat_policy", "logits_fractions", "attention_impl", "checkpoint_every",
                "keep", "async_checkpoint", "log_every", "export_hf", "distributed", "num_epochs", "num_steps")

# Batch keys the pipeline yields and the step reads.
BATCH_KEYS = ("input_ids_BxT", "loss_mask_BxT", "weight_BxT", "segment_ids_BxT", "positions_BxT", "kind_BxT")


def spans_processes(cfg: ml_collections.ConfigDict) -> bool:
  """One SPMD program over every process of a multi-process launch (main.py)."""
  del cfg
  return True


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {
          # Where the initial params come from: "random" (from `model`), "hf" (HF dir `init_path`), or "orbax"
          # (latest checkpoint of a train stage's `checkpoints` dir `init_path`; architecture from `model`).
          "init": "random",
          "init_path": "",  # HF dir or orbax checkpoints dir, relative to workdir (unused for init "random")
          "tokenizer": "",  # HF tokenizer dir, relative to workdir; empty = init_path (init "hf")
          "records": ("records",),  # correction-record folder(s), relative to workdir, mixed by record count
          "kinds": (),  # record kinds to train on (records.KINDS: cf, reh, iwm, sr, sft); empty = all
          # ModelConfig fields for init "random"/"orbax" (free-form: vocab_size, d_model, num_layers, ...).
          "model": ml_collections.ConfigDict(),
          "mesh": (-1, 1, 1),  # (data, fsdp, tensor) device counts; one -1 = all remaining devices
          "batch_size": 128,  # global batch, in rows of seq_len tokens (paper: 128, paper_notes §2.3)
          "micro_batches": 1,  # gradient accumulation: the step scans batch_size/micro_batches rows at a time
          "seq_len": 2048,  # tokens per row; longer records keep their last seq_len tokens (counted and logged)
          "pack": True,  # pack several records per row (segment ids keep attention and the loss per record)
          "lr": 1e-6,  # peak learning rate (paper: 1e-6, paper_notes §2.3)
          "warmup_steps": 0,  # linear warmup from 0 (paper: not given; Early Experience YAMLs use none)
          "schedule": "constant",  # after warmup: "constant" or "cosine" (to 0 at the last step)
          "num_epochs": 2,  # passes over the records (paper: 2-3 epochs); ignored when num_steps > 0
          "num_steps": 0,  # > 0: train exactly this many optimizer steps instead of num_epochs
          "weight_decay": 0.0,  # AdamW decoupled weight decay on matrices (paper: not given)
          "clip_norm": 1.0,  # global-norm gradient clipping; 0 = off (HF / verl default 1.0)
          "adam_b1": 0.9,  # AdamW beta1
          "adam_b2": 0.999,  # AdamW beta2 (HF default)
          "adam_eps": 1e-8,  # AdamW epsilon
          # "example": every record counts once whatever its action length, so a record's weight (β for
          # rehearsal, 1 for counterfactual) is exactly its share of L = L_cf + β·L_reh, as the paper writes the
          # objective per example. "token" (Σ w·nll / Σ w·mask, the HF/verl default) lets long actions dominate.
          "loss_normalization": "example",
          "dtype": "bfloat16",  # compute dtype of the model (activations, matmuls)
          "param_dtype": "float32",  # master weights and optimizer state
          "remat_policy": "",  # "none" | "full" | "dots"; empty = the model config's own
          # LM head only at the positions that predict a target (train/targets.py): N = the smallest of these
          # fractions of seq_len that holds every row's targets (one compiled program each); more targets than
          # the largest -> every position. () = always every position.
          "logits_fractions": (0.125, 0.5),
          # "auto" | "dense" | "rowwise" causal attention (models/attention.py); empty = the model config's own
          # ("auto": rowwise on CPU, dense on accelerators)
          "attention_impl": "",
          "checkpoint_every": 500,  # save an orbax checkpoint every N steps (and always at the end)
          "keep": 3,  # checkpoints kept
          "async_checkpoint": True,  # write checkpoints in the background while training continues
          "log_every": 10,  # host sync + console line + TensorBoard every N steps
          "export_hf": True,  # write <stage_dir>/hf (config, safetensors, tokenizer files) at the end
          "seed": 0,  # init and data shuffling
          "distributed": distributed.default_config(),  # multi-host initialisation (jax.distributed)
      }
  )


def resolve_mesh_shape(shape: tuple[int, ...], num_devices: int) -> tuple[int, int, int]:
  """`train.mesh` with its -1 resolved against `num_devices`."""
  from leafe_jax import parallel

  return parallel.resolve_mesh_shape(shape, num_devices, field="train.mesh")


def check_model_fields(config: ml_collections.ConfigDict, fail: Callable[[str, str], None]) -> None:
  """Checks of the model and init fields a training stage shares with this one (`model_and_params` reads them);
  `fail(field, why)` raises with the stage's section named."""
  from leafe_jax.models import config as model_config

  if config.init not in ("random", "hf", "orbax"):
    fail("init", "must be 'random', 'hf' or 'orbax'")
  if config.init != "random" and not config.init_path:
    fail("init_path", f"must name a directory for init {config.init!r}")
  if not config.tokenizer and config.init != "hf":
    fail("tokenizer", "must name an HF tokenizer directory")
  for field in ("dtype", "param_dtype"):
    if config[field] not in ("float32", "bfloat16", "float16"):
      fail(field, "must be float32, bfloat16 or float16")
  if any(not 0 < f <= 1 for f in config.logits_fractions):
    fail("logits_fractions", "must hold fractions in (0, 1]")
  if config.remat_policy and config.remat_policy not in model_config.REMAT_POLICIES:
    fail("remat_policy", f"must be empty or one of {model_config.REMAT_POLICIES}")
  if config.attention_impl and config.attention_impl not in model_config.ATTENTION_IMPLS:
    fail("attention_impl", f"must be empty or one of {model_config.ATTENTION_IMPLS}")


def check_optimizer_fields(config: ml_collections.ConfigDict, fail: Callable[[str, str], None]) -> None:
  """Value checks of the AdamW and schedule fields a train and a grpo section share (a negative lr would ascend,
  a negative clip_norm silently turn clipping off)."""
  if config.lr < 0:  # 0 is allowed: a run that only re-exports its init
    fail("lr", "must be >= 0")
  for field in ("warmup_steps", "weight_decay", "clip_norm"):
    if config[field] < 0:
      fail(field, "must be >= 0")
  for field in ("adam_b1", "adam_b2"):
    if not 0 <= config[field] < 1:
      fail(field, "must be in [0, 1)")
  if not config.adam_eps > 0:
    fail("adam_eps", "must be > 0")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Value checks (types are checked by config_schema before any work): fail before loading anything."""
  from leafe_jax.data import records
  from leafe_jax.train import loss as loss_lib
  from leafe_jax.train import optimizer

  def fail(field: str, why: str) -> None:
    raise ValueError(f"config field 'train.{field}' {why} (value {config[field]!r})")

  check_model_fields(config, fail)
  check_optimizer_fields(config, fail)
  if not config.records:
    fail("records", "must name at least one records folder")
  unknown = [k for k in config.kinds if k not in records.KINDS]
  if unknown:
    fail("kinds", f"has unknown kinds {unknown}; known: {records.KINDS}")
  if config.loss_normalization not in loss_lib.NORMALIZATIONS:
    fail("loss_normalization", f"must be one of {loss_lib.NORMALIZATIONS}")
  if config.schedule not in optimizer.SCHEDULES:
    fail("schedule", f"must be one of {optimizer.SCHEDULES}")
  for field in ("batch_size", "micro_batches", "checkpoint_every", "keep", "log_every"):
    if config[field] < 1:
      fail(field, "must be >= 1")
  if config.seq_len < 2:
    fail("seq_len", "must be >= 2 (a row predicts its tokens from the ones before)")
  if config.num_steps < 0:
    fail("num_steps", "must be >= 0 (0 = train num_epochs passes)")
  if config.batch_size % config.micro_batches:
    fail("micro_batches", f"must divide batch_size={config.batch_size}")
  if config.num_steps <= 0 and config.num_epochs <= 0:
    fail("num_epochs", "must be > 0 when num_steps is 0")


def model_and_params(config, workdir, mesh, rng, *, abstract: bool = False):
  """(model, params sharded on mesh, params sharding) for the configured init (init, init_path, model, dtype,
  param_dtype, remat_policy, attention_impl of a train or grpo section).

  abstract: params as sharded ShapeDtypeStructs, nothing loaded or initialised (a resumed run restores them from
  its own checkpoint; loading a 70B HF checkpoint only to discard it would cost minutes).
  """
  import jax
  import jax.numpy as jnp

  from leafe_jax import models, parallel
  from leafe_jax.train import checkpoint

  def with_train_dtypes(model_config):
    overrides = {"dtype": config.dtype, "param_dtype": config.param_dtype}
    if config.remat_policy:
      overrides["remat_policy"] = config.remat_policy
    if config.attention_impl:
      overrides["attention_impl"] = config.attention_impl
    return dataclasses.replace(model_config, **overrides)

  if config.init == "hf" and not abstract:
    hf_model, params = models.from_hf(
        resolve_path(config.init_path, workdir), dtype=jnp.dtype(config.param_dtype), mesh=mesh
    )
    model = models.Decoder(with_train_dtypes(hf_model.config))
    return model, params, parallel.param_shardings(model, mesh)
  model_config = with_train_dtypes(models.config_from_hf(resolve_path(config.init_path, workdir))
                                   if config.init == "hf" else models.ModelConfig(**config.model.to_dict()))
  model = models.Decoder(model_config)
  params_sharding = parallel.param_shardings(model, mesh)
  init_fn = jax.jit(lambda key: models.init_params(model_config, key), out_shardings=params_sharding)
  shapes = checkpoint.abstract_like(jax.eval_shape(init_fn, rng), params_sharding)
  if abstract:
    return model, shapes, params_sharding
  if config.init == "random":
    return model, init_fn(rng), params_sharding
  return model, checkpoint.restore_params(resolve_path(config.init_path, workdir), shapes), params_sharding


def resume_settings(cfg: ml_collections.ConfigDict, workdir: str, free_fields, total_steps: int) -> dict:
  """What a resumed train or grpo run must share with its checkpoints (stage_settings): the section but its
  free fields, the init weights' fingerprint (init "hf"), and a cosine schedule's length."""
  init_weights = stage_settings.hf_dir_fingerprint(resolve_path(cfg.init_path, workdir)) if cfg.init == "hf" else None
  return stage_settings.of_section(cfg, free_fields, init_weights=init_weights,
                                   schedule_steps=total_steps if cfg.schedule == "cosine" else None)


def run(config: ml_collections.ConfigDict, workdir: str, stage_dir: str) -> None:
  """Trains per `config.train`, resuming from `<stage_dir>/checkpoints`, and exports `<stage_dir>/hf`."""
  cfg = config[CONFIG_SECTION]
  check_config(cfg)
  distributed.initialize(cfg.distributed)

  import jax
  import transformers
  from tqdm import tqdm

  from leafe_jax import parallel
  from leafe_jax.data import records
  from leafe_jax.train import checkpoint, feed, metrics, optimizer
  from leafe_jax.train import loss as loss_lib
  from leafe_jax.train import state as state_lib
  from leafe_jax.train import step as step_lib

  tokenizer_dir = resolve_path(cfg.tokenizer or cfg.init_path, workdir)
  fingerprint = records.tokenizer_fingerprint(transformers.AutoTokenizer.from_pretrained(tokenizer_dir))
  process_count, process_index = jax.process_count(), jax.process_index()
  if cfg.batch_size % process_count:
    raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the {process_count} processes")
  local_batch = cfg.batch_size // process_count
  data = feed.TrainFeed(
      [resolve_path(f, workdir) for f in cfg.records],
      seq_len=cfg.seq_len,
      batch_size=local_batch,
      pack=cfg.pack,
      seed=cfg.seed,
      kinds=tuple(cfg.kinds) or None,
      process_index=process_index,
      process_count=process_count,
      expected_tokenizer=fingerprint,
  )
  total_steps = cfg.num_steps if cfg.num_steps > 0 else _steps_for_epochs(data, cfg.num_epochs)

  mesh = parallel.make_mesh(resolve_mesh_shape(tuple(cfg.mesh), jax.device_count()))
  distributed.check_batch_layout(mesh, cfg.batch_size)
  rng = jax.random.PRNGKey(cfg.seed)
  init_rng, state_rng = jax.random.split(rng)
  tx = optimizer.make_optimizer(cfg, total_steps)
  schedule = optimizer.make_schedule(cfg.lr, cfg.warmup_steps, total_steps, cfg.schedule)
  ckpt = checkpoint.Checkpointer(
      os.path.join(stage_dir, "checkpoints"), keep=cfg.keep, async_save=cfg.async_checkpoint
  )
  latest = ckpt.latest_step()
  # A resumed run continues its checkpoints' optimisation: another lr, batch, loss or init is refused, not mixed.
  stage_settings.check(CONFIG_SECTION, stage_dir, resume_settings(cfg, workdir, _FREE_FIELDS, total_steps),
                       has_outputs=latest is not None, write=process_index == 0, what="checkpoints")
  model, params, params_sharding = model_and_params(cfg, workdir, mesh, init_rng, abstract=latest is not None)
  state_sharding = state_lib.shardings(tx, params, params_sharding, mesh)
  if latest is None:
    state = jax.jit(lambda p, r: state_lib.create(p, tx, r), out_shardings=state_sharding)(params, state_rng)
  else:
    abstract = checkpoint.abstract_like(
        jax.eval_shape(lambda p, r: state_lib.create(p, tx, r), params, state_rng), state_sharding
    )
    del params
    state, saved = ckpt.restore(abstract, latest)
    data_states = saved.get("processes", [saved])  # one process's position: a checkpoint of an earlier version
    if len(data_states) != process_count:
      raise ValueError(f"checkpoint {ckpt.directory}/{latest} holds the data positions of {len(data_states)} "
                       f"process(es); this run has {process_count}: resume with the same number of processes")
    data.restore(data_states[process_index])

  batch_sharding = parallel.batch_sharding(mesh)
  train_step = step_lib.make_train_step(
      lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0],
      tx,
      normalization=cfg.loss_normalization,
      num_kinds=len(records.KINDS),
      micro_batches=cfg.micro_batches,
      batch_spec=batch_sharding.spec,
      mesh=mesh,
      schedule=schedule,
  )
  feed_keys = (*BATCH_KEYS, loss_lib.TARGET_INDEX)
  jitted = step_lib.jit_train_step(train_step, state_sharding, dict.fromkeys(feed_keys, batch_sharding), mesh)

  writer = metrics.MetricsWriter(os.path.join(stage_dir, "tb"), enabled=process_index == 0)
  peak = metrics.peak_flops(jax.devices()[0].device_kind)
  num_params = metrics.count_params(state.params)
  step = int(jax.device_get(state.step))
  logging.info("train: step %d of %d, global batch %d x %d, mesh %s", step, total_steps, cfg.batch_size,
               cfg.seq_len, dict(mesh.shape))
  widest = distributed.HostMax("train/targets_per_row")
  pending, fractions, window_start = [], [], time.perf_counter()  # fractions: of positions with logits, per step
  # The run's first step compiles the program (and a resumed run has just skipped its data position): it is left
  # out of the first window's tokens/s and MFU, which are timed from its end.
  untimed = 1
  trained = step < total_steps
  bar = tqdm(total=total_steps, initial=step, desc=f"train {os.path.basename(stage_dir)}", unit="step",
             disable=process_index != 0)
  while step < total_steps:
    local = {k: v for k, v in data.next().items() if k in BATCH_KEYS}
    local[loss_lib.TARGET_INDEX] = _target_index(local, cfg, widest)
    state, step_metrics = jitted(state, distributed.global_batch(local, mesh))
    pending.append(step_metrics)
    fractions.append(local[loss_lib.TARGET_INDEX].shape[1] / cfg.seq_len)
    step += 1
    bar.update(1)
    if untimed and len(pending) == 1:
      jax.block_until_ready(step_metrics)
      window_start = time.perf_counter()
    if step % cfg.log_every == 0 or step == total_steps:
      pending = jax.device_get(pending)
      scalars = _reduce(pending, records.KINDS)
      timed = list(zip(pending, fractions))[untimed:]
      if timed:
        elapsed = time.perf_counter() - window_start
        scalars["tokens_per_s"] = sum(int(m["real_tokens"]) for m, _ in timed) / elapsed
        if peak is not None:
          flops = sum(int(m["real_tokens"]) * metrics.train_flops_per_token(num_params, model.config, cfg.seq_len,
                                                                             f) for m, f in timed)
          scalars["mfu"] = flops / elapsed / (peak * jax.device_count())
      untimed = 0
      writer.write(step, scalars)
      bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
      if process_index == 0:
        metrics.log_progress(step, total_steps, scalars)
      pending, fractions, window_start = [], [], time.perf_counter()
    if step % cfg.checkpoint_every == 0 or step == total_steps:
      ckpt.save(step, state, {"processes": distributed.allgather_json(data.state())})
  bar.close()
  ckpt.close()
  writer.close()
  if cfg.export_hf:
    hf_dir = os.path.join(stage_dir, "hf")
    # Re-export only if this invocation trained (a rerun of a finished stage keeps its export).
    if not os.path.exists(os.path.join(hf_dir, "config.json")) or trained:
      checkpoint.export_hf(model, state.params, tokenizer_dir, hf_dir)


def _target_index(local: dict[str, np.ndarray], cfg: ml_collections.ConfigDict,
                  widest: distributed.HostMax) -> np.ndarray:
  """This process's rows' target positions, at a width every process agrees on (the global batch is one array)."""
  from leafe_jax.train import targets

  most = widest(targets.max_targets_per_row(local))
  return targets.target_index(local, targets.index_width(most, cfg.seq_len, tuple(cfg.logits_fractions)))


def _steps_for_epochs(data: Any, num_epochs: int) -> int:
  """Optimizer steps that cover `num_epochs` passes over every process's records (the same on every process:
  the maximum over processes; one with fewer rows reads into its next pass, as every process does at the end)."""
  import jax
  from jax.experimental import multihost_utils

  steps = data.steps_for_epochs(num_epochs)
  if jax.process_count() > 1:
    steps = int(np.max(multihost_utils.process_allgather(np.asarray(steps))))
  return steps


def _reduce(pending: list[dict[str, np.ndarray]], kinds: tuple[str, ...]) -> dict[str, float]:
  """Host-side reduction of the per-step metric sums since the last log line."""
  from leafe_jax.train import loss as loss_lib
  from leafe_jax.train import metrics

  scalars = {
      "loss": float(np.mean([m["loss"] for m in pending])),
      "grad_norm": float(np.mean([m["grad_norm"] for m in pending])),
  }
  if "lr" in pending[-1]:
    scalars["lr"] = float(pending[-1]["lr"])
  sums = {key: np.sum([m[key] for m in pending], axis=0) for key in loss_lib.KIND_SUM_KEYS}
  scalars.update(metrics.reduce_kind_sums(sums, kinds))
  return scalars
