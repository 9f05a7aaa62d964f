"""The entry point's config validation: bad fields and values of every planned stage are named before any work."""

import copy
import os

import ml_collections
import pytest
from ml_collections import config_flags  # noqa: F401  (registers the config-file loader used by absl)

from leafe_jax import config_schema, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  import importlib.util

  spec = importlib.util.spec_from_file_location("sft_tiny", os.path.join(REPO, "configs", "sft_tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_sft_tiny_config_plans_one_train_stage():
  planned = main.plan(_config())
  assert [(stage_id, module.__name__) for stage_id, module, _ in planned] == [("train", "leafe_jax.train.stage")]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", 1e-3, "unknown config field 'config.train.learning_rate'"),
        ("batch_size", "128", "'config.train.batch_size' has type str"),
        ("pack", 1, "'config.train.pack' has type int"),
        ("distributed.port", 1, "unknown config field 'config.train.distributed.port'"),
    ],
)
def test_unknown_or_ill_typed_train_field_is_named_before_any_work(tmp_path, field, value, message):
  config = _config()
  # Rebuilt from a plain dict: ConfigDict assignment would refuse the wrong type itself (as a config file
  # written with a literal of another type does not).
  train = config.train.to_dict()
  section, _, name = field.rpartition(".")
  (train[section] if section else train)[name] = value
  with config.unlocked():
    config.train = ml_collections.ConfigDict(train)
  with pytest.raises(config_schema.ConfigError) as info:
    main.run(config, str(tmp_path / "work"))
  assert message in str(info.value)
  assert not (tmp_path / "work").exists()


def test_model_section_is_free_form():
  config = _config()
  with config.train.model.unlocked():
    config.train.model.rope_theta = 500000.0
  main.plan(config)


def _replace_section(config, name, edit):
  """`config` with section `name` rebuilt from a dict that `edit` changed (no ConfigDict type checks on the way)."""
  section = config[name].to_dict()
  edit(section)
  with config.unlocked():
    config[name] = ml_collections.ConfigDict(section)
  return config


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(d_modle=32), "config.train.model.d_modle: unknown ModelConfig field; known: vocab_size"),
        (lambda m: m.update(d_model="32"), "config.train.model.d_model: has type str, ModelConfig expects int"),
        (lambda m: m.update(qk_norm=1), "config.train.model.qk_norm: has type int"),
        (lambda m: m.pop("num_layers"), "config.train.model lacks ModelConfig field(s) num_layers"),
        (lambda m: m.update(num_heads=3), "config.train.model: ModelConfig: num_heads=3 is not a multiple"),
        # The run ends by exporting the model: a qwen3 checkpoint always has q/k norms (found by a review helper).
        (lambda m: m.update(family="qwen3", qk_norm=False), r"config.train.model: to_hf: a qwen3 checkpoint "
         r"cannot express this model: qk_norm=False"),
    ],
)
def test_model_section_is_checked_against_model_config_before_any_work(tmp_path, edit, message):
  config = _replace_section(_config(), "train", lambda t: edit(t["model"]))
  with pytest.raises(config_schema.ConfigError) as info:
    main.run(config, str(tmp_path / "work"))
  assert message in str(info.value)
  assert not (tmp_path / "work").exists()


def test_model_section_may_hold_a_rope_scaling_dict():
  scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}
  main.plan(_replace_section(_config(), "train", lambda t: t["model"].update(rope_scaling=scaling)))


def test_hf_init_needs_no_model_section_but_refuses_unknown_model_fields():
  def hf(model):
    return lambda t: t.update(init="hf", init_path="models/base", model=model)

  main.plan(_replace_section(_config(), "train", hf({})))
  with pytest.raises(config_schema.ConfigError, match="config.train.model.d_modle: unknown ModelConfig field"):
    main.plan(_replace_section(_config(), "train", hf({"d_modle": 32})))


def test_grpo_and_variant_model_sections_are_checked():
  from leafe_jax.train import grpo_stage

  config = _config()
  with config.unlocked():
    config.grpo = grpo_stage.default_config()
    config.grpo.init, config.grpo.init_path = "hf", "models/base"
  main.plan(config)
  with pytest.raises(config_schema.ConfigError, match="config.grpo.model.num_layer: unknown ModelConfig field"):
    main.plan(_replace_section(copy.deepcopy(config), "grpo", lambda g: g["model"].update(num_layer=2)))
  with config.unlocked():
    config.variants = ml_collections.ConfigDict({"wide": {"train": {"model": {"d_modle": 64}}}})
  with pytest.raises(config_schema.ConfigError, match="config.variants.wide.train.model.d_modle: unknown"):
    main.plan(config)


def _explore_then_train_config():
  from leafe_jax.explore import stage as explore_stage

  config = _config()
  with config.unlocked():
    config.stages = ("explore", "train")
    config.explore = explore_stage.default_config()
  return config


def test_bad_train_value_of_an_explore_then_train_config_fails_before_exploring(tmp_path, monkeypatch):
  from leafe_jax.explore import stage as explore_stage

  config = _replace_section(_explore_then_train_config(), "train", lambda t: t.update(schedule="cosine_decay"))
  monkeypatch.setattr(explore_stage, "run", lambda *a: pytest.fail("explore ran before the train config was checked"))
  with pytest.raises(config_schema.ConfigError, match="stage 'train': config field 'train.schedule' must be one of"):
    main.run(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()


def test_a_variant_is_value_checked_as_its_stage_sees_it():
  config = _config()
  with config.unlocked():
    config.stages = ("train", "train@odd")
    config.variants = ml_collections.ConfigDict({"odd": {"train": {"batch_size": 7}}})
  with pytest.raises(config_schema.ConfigError, match="stage 'train_odd': config field 'train.micro_batches'"):
    main.plan(config)


def test_baseline_stages_check_their_values_in_plan():
  from leafe_jax.baselines import early_experience_stage

  config = _config()
  with config.unlocked():
    config.stages = ("early_experience", "train")
    config.early_experience = early_experience_stage.default_config()
    config.early_experience.shard = "2/2"
  with pytest.raises(config_schema.ConfigError, match="'early_experience': config field 'early_experience.shard'"):
    main.plan(config)


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        ("explore", "shard", "3/2", "explore.shard"),
        ("explore", "env", "sokobann", "explore.env' 'sokobann' is not a registered environment"),
        ("explore", "method", "bfs", "explore.method 'bfs' not in"),
        ("eval", "ks", (1, 4096), "has k > eval.num_samples"),
        ("eval", "env_workers", -1, "eval.env_workers' must be >= 0"),
        ("distill", "max_cf_per_task", -1, "distill.max_cf_per_task' must be >= 0"),
        ("distill", "reh_fraction", 1.5, r"distill.reh_fraction' must be in \[0, 1\]"),
        ("train", "lr", -1e-6, "train.lr' must be >= 0"),
        ("train", "adam_b2", 1.5, r"train.adam_b2' must be in \[0, 1\)"),
        ("train", "clip_norm", -1.0, "train.clip_norm' must be >= 0"),
        ("train", "warmup_steps", -5, "train.warmup_steps' must be >= 0"),
        ("train", "seq_len", 1, "train.seq_len' must be >= 2"),
        ("train", "num_steps", -3, "train.num_steps' must be >= 0"),
    ],
)
def test_explore_and_eval_values_are_checked_in_plan(section, field, value, message):
  # A bad eval value used to surface only after explore and train had run (a bad distill value after explore;
  # a negative lr or clip_norm was accepted and trained).
  from leafe_jax.eval import stage as eval_stage
  from leafe_jax.explore import distill_stage
  from leafe_jax.explore import stage as explore_stage

  config = _config()
  with config.unlocked():
    config.stages = ("explore", "distill", "train", "eval")
    config.explore = explore_stage.default_config()
    config.distill = distill_stage.default_config()
    config.eval = eval_stage.default_config()
  main.plan(config)
  config[section][field] = value
  with pytest.raises(config_schema.ConfigError, match=message):
    main.plan(config)


def test_a_multi_process_launch_refuses_single_host_stages_before_any_work(tmp_path, monkeypatch):
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "2")
  remote = _explore_then_train_config()
  remote.explore.policy = "openai:http://localhost:8000/v1#base"  # a server: one host's requests, not SPMD
  with pytest.raises(config_schema.ConfigError, match=r"stages \['explore'\] run on one host, but this is a "
                     r"multi-process launch \(train.distributed resolves to mode 'cluster' here\)"):
    main.run(remote, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()
  # With an in-process policy explore spans the processes (every process samples on the global mesh).
  assert [stage_id for stage_id, _, _ in main.plan(_explore_then_train_config())] == ["explore", "train"]
  assert [stage_id for stage_id, _, _ in main.plan(_config())] == ["train"]  # train alone is fine
  from leafe_jax.train import grpo_stage

  config = _config()
  with config.unlocked():
    config.stages, config.grpo = ("grpo", "train"), grpo_stage.default_config()
    config.grpo.update(init="random", model=config.train.model, tokenizer=config.train.tokenizer)
  assert [stage_id for stage_id, _, _ in main.plan(config)] == ["grpo", "train"]  # so is grpo (SPMD rollouts)
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert [stage_id for stage_id, _, _ in main.plan(_explore_then_train_config())] == ["explore", "train"]


def test_stages_after_a_train_that_started_several_processes_are_refused(tmp_path, monkeypatch):
  # A train stage on a TPU VM slice starts jax.distributed itself (no variable announces the slice); stand in
  # for that after the plan, as the real thing needs several hosts.
  import jax

  from leafe_jax.eval import report_stage
  from leafe_jax.train import stage as train_stage

  config = _config()
  with config.unlocked():
    config.stages = ("train", "report")
    config.report = report_stage.default_config()

  def fake_train(*args):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", lambda: 4)

  monkeypatch.setattr(train_stage, "run", fake_train)
  with pytest.raises(config_schema.ConfigError, match=r"stages \['report'\] run on one host.*jax.distributed runs 4"):
    main.run(config, str(tmp_path / "work"))


def test_a_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(config_schema.ConfigError, match="must be a filesystem path"):
    main.run(_config(), "gs://bucket/run")
  assert not os.path.exists("gs:")


@pytest.mark.parametrize("cache_dir", ["compilation_cache", ""])
def test_the_compilation_cache_lives_in_the_workdir_while_the_stages_run(tmp_path, monkeypatch, cache_dir):
  import jax
  import jax.numpy as jnp

  from leafe_jax.train import stage as train_stage

  seen = {}

  def compiling_train(*args):
    seen["dir"] = jax.config.jax_compilation_cache_dir
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()

  monkeypatch.setattr(train_stage, "run", compiling_train)
  before = jax.config.jax_compilation_cache_dir
  min_compile_s = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache even this tiny program
  try:
    config = _config()
    with config.unlocked():
      config.compilation_cache_dir = cache_dir
    main.run(config, str(tmp_path / "work"))
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
  assert jax.config.jax_compilation_cache_dir == before  # restored for whoever called run in-process
  cache = tmp_path / "work" / "compilation_cache"
  if cache_dir:
    assert seen["dir"] == str(cache) and any(cache.iterdir())  # the compiled program was written there
  else:
    assert seen["dir"] == before and not cache.exists()


def _run_compiling(monkeypatch, workdir, programs, **fields):
  """main.run with a train stage that only compiles `programs` (jitted functions of a host array), in order."""
  import jax
  import numpy as np

  from leafe_jax.train import stage as train_stage

  x = np.arange(8, dtype=np.float32)  # a host array: no program of its own
  jax.clear_caches()  # compile again, as a new process would, rather than reuse an earlier call's program
  monkeypatch.setattr(train_stage, "run", lambda *args: [jax.jit(p)(x).block_until_ready() for p in programs])
  config = _config()
  with config.unlocked():
    config.update(fields)
  min_compile_s = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # cache even these tiny programs
  try:
    main.run(config, str(workdir))
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
  return {p.name: p.stat().st_size for p in (workdir / "compilation_cache").glob("*-cache")}


def test_a_bounded_compilation_cache_drops_the_least_recently_used_program(tmp_path, monkeypatch):
  import jax
  import jax.numpy as jnp

  def scaled_sine(x):
    return jnp.sin(x) * 3.0

  def cosine_cumsum(x):
    return jnp.cumsum(jnp.cos(x) + 1.0)

  unbounded = _run_compiling(monkeypatch, tmp_path / "unbounded", [scaled_sine, cosine_cumsum])
  assert sorted(name.partition("-")[0] for name in unbounded) == ["jit_cosine_cumsum", "jit_scaled_sine"]
  bound = int(1.5 * max(unbounded.values()))
  assert bound < sum(unbounded.values())  # room for either program, not both
  before = jax.config.jax_compilation_cache_max_size
  bounded = _run_compiling(monkeypatch, tmp_path / "bounded", [scaled_sine, cosine_cumsum],
                           compilation_cache_max_gb=bound / 2**30)
  assert jax.config.jax_compilation_cache_max_size == before  # restored after the run
  # The program compiled first was dropped to make room for the second; the folder keeps to its bound.
  assert [name.partition("-")[0] for name in bounded] == ["jit_cosine_cumsum"], bounded
  assert sum(bounded.values()) <= bound


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"compilation_cache_max_gb": -1.0}, "compilation_cache_max_gb=-1.0: must be >= 0"),
        ({"compilation_cache_max_gb": 4.0, "compilation_cache_dir": "gs://bucket/cache"},
         "a URL cannot hold"),
    ],
)
def test_a_bad_compilation_cache_bound_is_refused_before_any_work(tmp_path, fields, message):
  config = _config()
  with config.unlocked():
    config.update(fields)
  with pytest.raises(config_schema.ConfigError, match=message):
    main.run(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()


def test_a_stage_without_its_section_is_named_by_plan():
  # config.stages names eval, the config has no eval section: plan raised a bare KeyError 'eval'.
  config = _config()
  with config.unlocked():
    config.stages = ("train", "eval")
  with pytest.raises(config_schema.ConfigError, match=r"stage 'eval'.*no 'eval' section"):
    main.plan(config)


def test_a_partial_section_from_a_variant_is_named_by_plan():
  # The eval section comes only from a variant's overrides: the stage saw a section of one field and plan
  # raised a bare KeyError 'tasks_per_chunk' from the eval stage's check_config.
  config = _config()
  with config.unlocked():
    config.stages = ("train", "eval@x")
    config.variants = ml_collections.ConfigDict({"x": {"eval": {"policy": "train/hf"}}})
  with pytest.raises(config_schema.ConfigError, match=r"config.eval \(stage 'eval_x'\) lacks field\(s\).*"
                     r"tasks_per_chunk"):
    main.plan(config)
