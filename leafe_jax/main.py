r"""Entry point: runs the stages a config lists, each writing under --workdir and resuming from it.

  python -m leafe_jax.main --config=configs/demo.py --workdir=/tmp/demo [--config.train.lr=1e-5 ...]
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from leafe_jax import config_schema

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory every stage writes to and resumes from.")

# Stage name -> module exposing CONFIG_SECTION (== the stage name: the config section it reads),
# default_config() and run(config, workdir, stage_dir). A new stage is one module plus one line here.
#
# An entry of config.stages is "name" or "name@variant". For "name@variant" the overrides in
# config.variants.<variant> (a ConfigDict with the same sections as the config) are merged into a copy of the
# config for that stage only, and the stage writes under <workdir>/<name>_<variant> instead of
# <workdir>/<name>. Input paths inside stage configs are relative to --workdir (absolute paths stay).
STAGES: dict[str, str] = {
    "expert_data": "leafe_jax.baselines.expert_stage",
    "early_experience": "leafe_jax.baselines.early_experience_stage",
    "ace": "leafe_jax.baselines.ace_stage",
    "train": "leafe_jax.train.stage",
    "grpo": "leafe_jax.train.grpo_stage",
    "explore": "leafe_jax.explore.stage",
    "distill": "leafe_jax.explore.distill_stage",
    "eval": "leafe_jax.eval.stage",
    "report": "leafe_jax.eval.report_stage",
}

# A stage module's `spans_processes(section) -> bool` says whether, with that config section, it runs as one SPMD
# program over every process of a multi-process launch (SLURM, a TPU pod, an explicit coordinator): train and
# grpo always, explore and eval with an in-process policy. Every other stage is one host's work: launched on each
# process it would run the same tasks once per process and write the same files.
_SPANNING_STAGES = "train, grpo, and explore/eval with an in-process (HF directory) policy"


def _spans_processes(module: ModuleType, stage_config: ml_collections.ConfigDict) -> bool:
  spans = getattr(module, "spans_processes", None)
  return bool(spans and spans(stage_config[module.CONFIG_SECTION]))

# Top-level fields that belong to no single stage. `compilation_cache_dir`: JAX's persistent compilation cache,
# relative to --workdir unless absolute or a URL (gs://...); "" turns it off. A rerun after a preemption or a
# SIGKILL, and a later stage compiling the same programs, load them instead of compiling again (JAX caches
# programs that took at least jax_persistent_cache_min_compile_time_secs, 1 s by default, to compile).
# `compilation_cache_max_gb`: 0 = unbounded (a workdir's own cache holds only its run's programs); > 0 for a cache
# dir that many runs share: JAX then drops the least recently used programs past the bound and locks the dir
# around each read and write. Local or mounted filesystems only (the lock is a file lock).
_GLOBAL_FIELDS = {"stages": (), "seed": 0, "name": "", "variants": {}, "compilation_cache_dir": "compilation_cache",
                  "compilation_cache_max_gb": 0.0}

# Sections whose free-form `model` field the stage turns into models.ModelConfig(**model) (train/stage.py
# model_and_params), unless `init` is "hf": then the checkpoint's config.json describes the model.
_MODEL_SECTIONS = ("train", "grpo")


def _load_stage(name: str) -> ModuleType:
  if name not in STAGES:
    raise config_schema.ConfigError(f"unknown stage {name!r} in config.stages; known: {sorted(STAGES)}")
  module = importlib.import_module(STAGES[name])
  if module.CONFIG_SECTION != name:
    raise RuntimeError(f"{STAGES[name]}.CONFIG_SECTION is {module.CONFIG_SECTION!r}, expected {name!r}")
  return module


def _schema(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The schema of every section the config (or one of its variants) uses, plus the global fields.

  Only the stages that run or have a section are imported: an explorer host never imports the trainer.
  """
  schema = ml_collections.ConfigDict(_GLOBAL_FIELDS)
  sections = set(config.keys())
  for overrides in (config.get("variants", {}) or {}).values():
    sections.update(overrides.keys())
  sections.update(entry.partition("@")[0] for entry in config.get("stages", ()))
  for name in sorted(sections - set(_GLOBAL_FIELDS)):
    if name in STAGES:
      schema[name] = _load_stage(name).default_config()
  return schema


def _merge(base: ml_collections.ConfigDict, overrides: ml_collections.ConfigDict, path: str) -> None:
  for key, value in overrides.items():
    if isinstance(value, ml_collections.ConfigDict) and isinstance(base.get(key), ml_collections.ConfigDict):
      _merge(base[key], value, f"{path}.{key}")
    else:
      base[key] = value


def _check_model(section: ml_collections.ConfigDict, path: str, complete: bool) -> None:
  """Checks `<path>.model` against ModelConfig; `complete`: also that the stage can build the model from it."""
  from leafe_jax.models.config import ModelConfig  # imports jax, as the train and grpo stage modules do

  init = section.get("init", "random")
  model = section.get("model") or ml_collections.ConfigDict()
  config_schema.validate_dataclass_section(
      model, ModelConfig, f"{path}.model",
      complete=complete and init != "hf", why=f"with {path}.init={init!r} the model is built from this section")
  if complete and init != "hf":
    from leafe_jax.models import CheckpointError
    from leafe_jax.models.checkpoint import check_expressible

    try:  # the stage ends by exporting it (to_hf): refuse before training what the export cannot write
      check_expressible(ModelConfig(**model.to_dict()))
    except CheckpointError as e:
      raise config_schema.ConfigError(f"{path}.model: {e}") from None


def _check_complete(stage_id: str, module: ModuleType, stage_config: ml_collections.ConfigDict) -> None:
  """The stage's section exists and holds every field of its default_config() (the stages read them all)."""
  name = module.CONFIG_SECTION
  if name not in stage_config:
    raise config_schema.ConfigError(
        f"stage {stage_id!r}: the config has no {name!r} section; start it from "
        f"{module.__name__}.default_config()")
  path = f"config.{name}" if stage_id == name else f"config.{name} (stage {stage_id!r})"
  missing = [key for key in module.default_config() if key not in stage_config[name]]
  if missing:
    raise config_schema.ConfigError(
        f"{path} lacks field(s) {', '.join(missing)}: start the section from {module.__name__}.default_config()")


def _check_values(stage_id: str, module: ModuleType, stage_config: ml_collections.ConfigDict) -> None:
  """The stage's own value checks (`check_config(section)`, pure by contract) and its model section's."""
  _check_complete(stage_id, module, stage_config)
  name = module.CONFIG_SECTION
  path = f"config.{name}" if stage_id == name else f"config.{name} (stage {stage_id!r})"
  if name in _MODEL_SECTIONS:
    _check_model(stage_config[name], path, complete=True)
  check = getattr(module, "check_config", None)
  if check is None:
    return
  try:
    check(stage_config[name])
  except config_schema.ConfigError:
    raise
  except ValueError as e:
    raise config_schema.ConfigError(f"stage {stage_id!r}: {e}") from e


def _multi_process(config: ml_collections.ConfigDict) -> str:
  """Why this invocation is one process of several ("" if it is not): the launch environment or the train
  section's distributed settings, or an already initialised jax.distributed with more than one process."""
  jax = sys.modules.get("jax")  # not imported yet: jax.distributed cannot be running
  if jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1:
    return f"jax.distributed runs {jax.process_count()} processes"
  from leafe_jax.parallel import distributed

  section = config.get("train", {}).get("distributed") or distributed.default_config()
  try:
    mode = distributed.resolve_mode(section)
  except ValueError:  # reported by the train stage's own checks
    return ""
  return f"train.distributed resolves to mode {mode!r} here" if mode in ("cluster", "explicit") else ""


def _refuse_single_host_stages(stage_ids: Sequence[str], why: str) -> None:
  raise config_schema.ConfigError(
      f"stages {list(stage_ids)} run on one host, but this is a multi-process launch ({why}): every process "
      "would run them on the same tasks and write the same files. Run only stages that span the processes "
      f"({_SPANNING_STAGES}) on the processes of a multi-process launch (e.g. "
      "--config.stages='(\"train@leafe\",)') and the others on one host (README, 'At scale')")


def plan(config: ml_collections.ConfigDict) -> list[tuple[str, ModuleType, ml_collections.ConfigDict]]:
  """Validates the config and every variant, and returns (stage_id, module, stage_config) per stage.

  Everything is checked before any stage runs: unknown stages, unknown variants, unknown or ill-typed fields
  (in the config and in each variant's overrides, `train.model`/`grpo.model` against ModelConfig). Sections of
  stages this invocation does not run are validated too: one config file usually serves several invocations
  (explore on CPU hosts, train on a pod). Each planned stage's values are then checked, as that stage (or
  variant) will see them: its module's `check_config` (stages without one check their values when they start)
  and, for train/grpo with init "random"/"orbax", that ModelConfig can be built from the model section.
  """
  entries = list(config.get("stages", ()))
  if not entries:
    raise config_schema.ConfigError("config.stages is empty: name at least one of " + ", ".join(STAGES))
  schema = _schema(config)
  config_schema.validate(config, schema)
  _check_compilation_cache(config)
  variants = config.get("variants", {}) or {}
  for variant, overrides in variants.items():
    config_schema.validate(overrides, schema, f"config.variants.{variant}")
  for where, fields in [("config", config), *((f"config.variants.{v}", o) for v, o in variants.items())]:
    for name in _MODEL_SECTIONS:
      if name in fields:
        _check_model(fields[name], f"{where}.{name}", complete=False)
  planned = []
  for entry in entries:
    name, _, variant = entry.partition("@")
    module = _load_stage(name)
    stage_config = config
    if variant:
      if variant not in variants:
        raise config_schema.ConfigError(
            f"stage {entry!r} names variant {variant!r}, but config.variants has only {sorted(variants)}"
        )
      stage_config = copy.deepcopy(config)
      with stage_config.unlocked():
        _merge(stage_config, variants[variant], "config")
    planned.append((f"{name}_{variant}" if variant else name, module, stage_config))
  for stage_id, module, stage_config in planned:
    _check_values(stage_id, module, stage_config)
  single_host = [stage_id for stage_id, module, stage_config in planned
                 if not _spans_processes(module, stage_config)]
  why = _multi_process(config) if single_host else ""
  if why:
    _refuse_single_host_stages(single_host, why)
  return planned


@contextlib.contextmanager
def compilation_cache(path: str, max_bytes: int = 0):
  """JAX's persistent compilation cache in `path` while the block runs ("" leaves JAX's setting alone).

  `max_bytes` > 0 bounds it (least recently used programs are dropped first); 0 leaves it unbounded. The previous
  settings are restored afterwards, so a caller running stages in-process (a test, a notebook) keeps its own.
  Importing jax here starts no backend: jax.distributed can still be initialised by a stage.
  """
  if not path:
    yield
    return
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cache

  settings = {"jax_compilation_cache_dir": path, "jax_compilation_cache_max_size": max_bytes or -1}  # -1: no bound
  previous = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  cache.reset_cache()  # a cache JAX already opened elsewhere would otherwise stay in use
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)
    cache.reset_cache()


def _cache_fields(config: ml_collections.ConfigDict) -> tuple[str, float]:
  return tuple(config.get(name, _GLOBAL_FIELDS[name]) for name in ("compilation_cache_dir", "compilation_cache_max_gb"))


def _check_compilation_cache(config: ml_collections.ConfigDict) -> None:
  cache_dir, max_gb = _cache_fields(config)
  if max_gb < 0:
    raise config_schema.ConfigError(f"config.compilation_cache_max_gb={max_gb}: must be >= 0 (0: no bound)")
  if max_gb and "://" in cache_dir:
    raise config_schema.ConfigError(
        f"config.compilation_cache_max_gb={max_gb} with config.compilation_cache_dir={cache_dir!r}: JAX bounds a "
        "cache with a file lock, which a URL cannot hold; bound a bucket with its lifecycle rules and set 0 here")


def _compilation_cache_settings(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, int]:
  """(directory, byte bound) of the run's compilation cache, from the config's top-level fields."""
  cache_dir, max_gb = _cache_fields(config)
  if cache_dir and "://" not in cache_dir:
    cache_dir = os.path.join(workdir, cache_dir)  # an absolute path stays as it is
  return cache_dir, int(max_gb * 2**30)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs every stage of `config` in order; each resumes from what it left in `workdir`."""
  if "://" in workdir:  # os.makedirs("gs://b/w") would make a local directory "gs:" and write there
    raise config_schema.ConfigError(
        f"--workdir={workdir!r}: the stages write the workdir with plain file calls, so it must be a filesystem "
        "path (on a pod: a shared mount such as Filestore or a bucket mounted with gcsfuse), not a URL")
  planned = plan(config)
  cache_dir, cache_max_bytes = _compilation_cache_settings(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  with compilation_cache(cache_dir, cache_max_bytes):
    for stage_id, module, stage_config in planned:
      # A train stage may have started jax.distributed (a TPU VM slice found by JAX itself, which no variable
      # announces): the stages after it are then refused before they start.
      if not _spans_processes(module, stage_config) and (why := _multi_process(config)):
        _refuse_single_host_stages([stage_id], why)
      logging.info("=== stage %s", stage_id)
      module.run(stage_config, workdir, os.path.join(workdir, stage_id))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
