"""The entry point's config validation as it applies to the train stage: bad fields are named before any work."""

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
