"""Every config file under configs/ plans (main.plan validates every field and variant), and the paper configs say
what the paper says: the cf cap, the rehearsal fraction, the SFT settings, one budget for the Table 3 samplers."""

import glob
import importlib.util
import os
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from leafe_jax import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the paper configs import configs.paper.common, as they do when run from the repo root
  sys.path.insert(0, REPO)

CONFIG_FILES = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if os.path.basename(p) not in ("common.py", "__init__.py")
)
PAPER = [p for p in CONFIG_FILES if p.startswith(os.path.join("configs", "paper"))]


def _module(path: str):
  name = "config_" + path.replace(os.sep, "_").removesuffix(".py")
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _cases(paths):
  """(file, argument) for every file, and every backbone argument of the paper configs."""
  return [(p, arg) for p in paths for arg in getattr(_module(p), "MODELS", (None,))]


def _planned(path: str, arg: str | None) -> dict[str, ml_collections.ConfigDict]:
  module = _module(path)
  config = module.get_config(arg) if arg is not None else module.get_config()
  return {stage_id: stage_config for stage_id, _, stage_config in main.plan(config)}


def test_config_files_are_found():
  assert os.path.join("configs", "demo.py") in CONFIG_FILES
  assert {os.path.basename(p) for p in PAPER} >= {"sokoban.py", "alfworld.py", "scienceworld.py", "webshop.py",
                                                  "codecontests.py", "codecontests_samplers.py"}


@pytest.mark.parametrize(("path", "arg"), _cases(CONFIG_FILES))
def test_every_config_plans(path, arg):
  assert _planned(path, arg)


def test_flag_loader_passes_the_backbone_argument_and_overrides():
  path = os.path.join(REPO, "configs", "paper", "sokoban.py")
  argv = ["prog", f"--config={path}:llama3.1-8b", "--config.train.lr=2e-6", "--config.explore.shard=1/4"]
  config = _flag_config(argv)
  assert config.eval.model_label == "Llama3.1-8B"
  assert (config.train.lr, config.explore.shard) == (2e-6, "1/4")
  main.plan(config)


def _flag_config(argv):
  values = flags.FlagValues()
  # As leafe_jax.main defines it; the override flags are found in the argv given here.
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize("path", PAPER)
def test_paper_configs_take_the_launch_scripts_distributed_overrides(path):
  # launch/tpu_pod.sh and launch/slurm.sbatch add the first, launch/local_multiprocess.sh the others.
  overrides = ["--config.train.distributed.mode=explicit", "--config.train.distributed.coordinator_address=h:1234",
               "--config.train.distributed.num_processes=2", "--config.train.distributed.process_id=1"]
  for script in ("launch/tpu_pod.sh", "launch/slurm.sbatch", "launch/local_multiprocess.sh"):
    with open(os.path.join(REPO, script)) as f:
      assert "--config.train.distributed.mode=" in f.read(), script
  config = _flag_config(["prog", f"--config={os.path.join(REPO, path)}:{_module(path).MODELS[0]}", *overrides])
  section = config.train.distributed
  assert (section.mode, section.coordinator_address, section.num_processes, section.process_id) == (
      "explicit", "h:1234", 2, 1)


@pytest.mark.parametrize("path", PAPER)
def test_paper_config_without_a_known_backbone_names_the_choices(path):
  module = _module(path)
  with pytest.raises(ValueError, match=module.MODELS[0]):
    module.get_config()
  with pytest.raises(ValueError, match="needs a backbone argument"):
    module.get_config("gpt-2")


DISTILLING = [(p, a) for p, a in _cases(PAPER) if not p.endswith("codecontests_samplers.py")]


@pytest.mark.parametrize(("path", "arg"), DISTILLING)
def test_paper_pipelines_follow_the_paper_settings(path, arg):
  planned = _planned(path, arg)
  grpo = planned["explore"].explore.policy
  distill = planned["distill"].distill
  assert (distill.max_cf_per_task, distill.reh_fraction) == (3, 0.2)  # notes §2.3
  assert distill.tokenizer == grpo
  train = planned["train_leafe"].train
  assert (train.init, train.init_path) == ("hf", grpo)  # LEAFE fine-tunes the checkpoint it explored with
  assert (train.batch_size, train.lr) == (128, 1e-6) and train.num_epochs in (2, 3)
  assert (train.dtype, train.param_dtype, tuple(train.mesh)) == ("bfloat16", "float32", (1, -1, 1))
  assert tuple(train.kinds) == ("cf", "reh")
  evals = {s: c.eval for s, c in planned.items() if s.startswith("eval_")}
  assert {e.method for e in evals.values()} >= {"Base", "GRPO-RLVR", "LEAFE"}
  for e in evals.values():
    assert e.num_samples == 128 and max(e.ks) == 128
  policies = {e.method: e.policy for e in evals.values()}
  assert policies["GRPO-RLVR"] == grpo and policies["LEAFE"] == "train_leafe/hf"


_MULTIWORD_STAGES = ("expert_data", "early_experience")


def _inputs(stage_id: str, c: ml_collections.ConfigDict) -> list[str]:
  name = next((s for s in _MULTIWORD_STAGES if stage_id.startswith(s)), stage_id.split("_")[0])
  section = c[name]
  return {
      "explore": lambda: [section.policy],
      "distill": lambda: [section.trees, section.tokenizer],
      "train": lambda: [*section.records, section.init_path, section.tokenizer],
      "eval": lambda: [section.policy, section.playbook],
      "early_experience": lambda: [section.tokenizer] + ([section.policy] if "sr" in section.methods else []),
      "ace": lambda: [section.policy],
  }.get(name, lambda: [])()


@pytest.mark.parametrize(("path", "arg"), _cases([os.path.join("configs", "demo.py"), *PAPER]))
def test_every_stage_input_is_a_given_model_or_an_earlier_stage_output(path, arg):
  done = []
  for stage_id, c in _planned(path, arg).items():
    for p in _inputs(stage_id, c):
      if p and not p.startswith("openai:"):
        assert p.startswith("models/") or p.split("/")[0] in done, (stage_id, p, done)
    done.append(stage_id)


def test_table3_samplers_share_one_budget():
  planned = _planned(os.path.join("configs", "paper", "codecontests_samplers.py"), "qwen2.5-72b")
  assert sorted(planned) == ["explore_ir", "explore_is", "explore_leafe", "report"]
  assert tuple(planned["report"].report.sampler_dirs) == ("explore_is", "explore_ir", "explore_leafe")
  explore = {s: c.explore for s, c in planned.items() if s.startswith("explore")}
  assert {e.method for e in explore.values()} == {"is", "ir", "leafe"}
  for field in ("env_step_budget", "max_attempts", "stop_on_success", "policy", "split", "num_tasks", "max_steps",
                "temperature", "max_new_tokens", "history_length"):
    assert len({str(e[field]) for e in explore.values()}) == 1, field
  budget = explore["explore_leafe"].env_step_budget
  assert budget > 0 and budget == 165 * explore["explore_leafe"].max_attempts * explore["explore_leafe"].max_steps
  assert explore["explore_leafe"].max_depth == explore["explore_leafe"].max_attempts - 1


@pytest.mark.parametrize("env", ["alfworld", "scienceworld", "sokoban", "webshop"])
def test_the_earlyexp_row_is_iwm_then_imitation_from_the_instruct_model(env):
  planned = _planned(os.path.join("configs", "paper", f"{env}.py"), "qwen2.5-7b")
  data = planned["early_experience"].early_experience
  assert tuple(data.methods) == ("iwm",) and data.split == planned["explore"].explore.split
  assert data.iwm_alternatives == {"alfworld": 8, "scienceworld": 3, "sokoban": 3, "webshop": 3}[env]  # notes §8
  world, imitation = planned["train_ee_world"].train, planned["train_iwm"].train
  assert (world.init_path, tuple(world.kinds), world.num_epochs) == ("models/base", ("iwm",), 1)
  assert (imitation.init_path, tuple(imitation.kinds)) == ("train_ee_world/hf", ("sft",))
  assert world.lr == imitation.lr and world.batch_size == imitation.batch_size
  assert (planned["eval_iwm"].eval.method, planned["eval_iwm"].eval.policy) == ("EarlyExp", "train_iwm/hf")


def test_table6_leafe_with_ee_adds_the_world_model_records_to_leafe():
  planned = _planned(os.path.join("configs", "paper", "alfworld.py"), "llama3.1-8b")
  leafe, with_ee = planned["train_leafe"].train.to_dict(), planned["train_leafe_ee"].train.to_dict()
  assert tuple(with_ee.pop("records")) == (*leafe.pop("records"), "early_experience/records")
  assert (tuple(leafe.pop("kinds")), tuple(with_ee.pop("kinds"))) == (("cf", "reh"), ("cf", "reh", "iwm"))
  assert leafe == with_ee
  stages = list(planned)
  assert stages.index("early_experience") < stages.index("train_leafe_ee") < stages.index("eval_leafe_ee")
  assert planned["eval_leafe_ee"].eval.method == "LEAFE + EE"


@pytest.mark.parametrize("env", ["alfworld", "scienceworld", "sokoban"])
def test_the_ace_row_is_the_grpo_model_with_the_learned_playbook(env):
  planned = _planned(os.path.join("configs", "paper", f"{env}.py"), "qwen2.5-7b")
  learn, row = planned["ace"].ace, planned["eval_ace"].eval
  assert learn.policy == row.policy == planned["explore"].explore.policy  # the GRPO checkpoint (notes §5)
  assert (row.method, row.playbook, learn.max_bullets) == ("ACE", "ace/playbook.json", 100)
  assert planned["eval_grpo"].eval.playbook == ""  # no other row sees it
  assert learn.split == planned["explore"].explore.split != row.split


def test_table4_reh_only_differs_from_leafe_only_in_the_loss():
  planned = _planned(os.path.join("configs", "paper", "scienceworld.py"), "qwen2.5-7b")
  leafe, reh = planned["train_leafe"].train.to_dict(), planned["train_reh_only"].train.to_dict()
  assert (tuple(leafe.pop("kinds")), tuple(reh.pop("kinds"))) == (("cf", "reh"), ("reh",))
  assert leafe == reh
  assert planned["eval_reh_only"].eval.policy == "train_reh_only/hf"


def test_table5_evaluates_the_codecontests_policies_on_mbpp():
  planned = _planned(os.path.join("configs", "paper", "codecontests.py"), "llama3-70b")
  for row in ("base", "grpo", "leafe"):
    cc, mbpp = planned[f"eval_cc_{row}"].eval, planned[f"eval_mbpp_{row}"].eval
    assert cc.policy == mbpp.policy and cc.method == mbpp.method
    assert (cc.env_config.format, mbpp.env_config.format) == ("codecontests", "mbpp")
    assert list(mbpp.env_config.problems) == ["test"]
  assert planned["report_cc"].report.eval_glob == "eval_cc_*"
  assert planned["report_mbpp"].report.eval_glob == "eval_mbpp_*"
  assert list(planned).index("report_cc") < list(planned).index("eval_mbpp_base")
