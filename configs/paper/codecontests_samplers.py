"""Table 3, CodeContests: the stage-1 samplers at one interaction budget: independent sampling (IS), iterative
refinement (IR) and LEAFE's reflect-and-branch tree, each with the same policy, problems and budgets.

  python -m leafe_jax.main --config=configs/paper/codecontests_samplers.py:qwen2.5-72b --workdir=runs/t3_qwen2.5-72b

Backbones (the argument after ':'): qwen2.5-32b, qwen2.5-72b, llama3-70b (notes §4). The sampling policy is
<workdir>/models/grpo, as in LEAFE's stage 1 (notes §2.2 [I]; --config.explore.policy=models/base samples the
instruct model instead). Writes explore_is/, explore_ir/, explore_leafe/, each with its trees and ledger.json; the
metric is stage-1 coverage, the share of problems with at least one successful rollout (notes §6 Table 3 [I]),
tabulated with each sampler's interaction cost by the report stage in report/report.md.
"""

import ml_collections

from configs.paper import codecontests, common
from leafe_jax.parallel import distributed

MODELS = ("qwen2.5-32b", "qwen2.5-72b", "llama3-70b")  # Table 3 backbones (notes §4)
NUM_TASKS = 165  # [ours] the CodeContests test problems; the paper's Table 3 set is not known (notes §3)
MAX_ATTEMPTS = 32  # [ours] rollouts per problem, every sampler: 32 episodes x 4 submissions = 128 steps
# [ours] one interaction budget (env steps + replayed steps, explore/ledger.py) for every sampler: 128 steps per
# problem on average, read off "Pass@128" (notes §6 Table 3); the paper's budget is not given (notes §2.2).
ENV_STEP_BUDGET = NUM_TASKS * MAX_ATTEMPTS * codecontests.HORIZON


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model = common.backbone(arg, MODELS, "configs/paper/codecontests_samplers.py")
  setup = codecontests.SETUP
  config = ml_collections.ConfigDict()
  config.name = f"codecontests_samplers_{arg}"  # run name
  config.seed = 0  # global seed
  config.stages = ("explore@is", "explore@ir", "explore@leafe", "report")  # one stage dir per sampler, then the table
  explore = common.explore_config(setup, model)
  explore.env_config = ml_collections.ConfigDict(setup.eval_env_config)  # the test problems (see NUM_TASKS)
  explore.split = "test"  # the split of NUM_TASKS
  explore.num_tasks = NUM_TASKS  # problems searched by every sampler
  explore.max_attempts = MAX_ATTEMPTS  # per-problem rollout cap, equal for every sampler
  explore.env_step_budget = ENV_STEP_BUDGET  # global interaction budget, equal for every sampler
  explore.stop_on_success = True  # coverage: a problem is done at its first success, for every sampler
  config.explore = explore
  report = common.report_config(f"Table 3: stage-1 samplers at one budget, CodeContests, {arg}")
  report.eval_glob = ""  # no eval stages here: the table is stage-1 coverage
  report.sampler_dirs = ("explore_is", "explore_ir", "explore_leafe")  # coverage and cost from their ledgers
  report.explore_dir = "explore_leafe"  # one LEAFE backtrack tree in the report
  config.report = report
  # No train stage, but the section holds every stage's jax.distributed settings: the launch scripts
  # (launch/*.sh) set train.distributed.*, and an in-process policy's explore runs over every process of a launch.
  config.train = ml_collections.ConfigDict({"distributed": distributed.default_config()})
  config.variants = ml_collections.ConfigDict({
      "is": {"explore": {"method": "is"}},  # fresh episodes from the start, no reflection
      "ir": {"explore": {"method": "ir"}},  # retry from the start with the previous attempt's outcome in the prompt
      # LEAFE reflects when an episode fails and branches once per failed rollout: depth MAX_ATTEMPTS - 1 lets its
      # chain of branches use the same number of rollouts as IS and IR.
      "leafe": {"explore": {"method": "leafe", "max_depth": MAX_ATTEMPTS - 1}},
  })
  return config
