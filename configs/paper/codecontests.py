"""Tables 2 and 5, CodeContests: LEAFE vs Base and GRPO on the CodeContests test set (Table 2), and the same three
policies on MBPP, out of distribution (Table 5). One pipeline: the LEAFE policy is trained once.

  python -m leafe_jax.main --config=configs/paper/codecontests.py:qwen2.5-72b --workdir=runs/cc_qwen2.5-72b

Backbones (the argument after ':'): qwen2.5-72b, llama3-70b (Tables 2 and 5), qwen2.5-32b (Table 5). Put the
instruct model in <workdir>/models/base and the GRPO-RLVR checkpoint in <workdir>/models/grpo (HF dirs; see
configs/paper/common.py for the tags). Problem files, relative to the directory the command runs in:
  data/code_contests/data/{train,test}-*.parquet  the HF deepmind/code_contests shards, as downloaded;
  data/mbpp/mbpp_test.jsonl                        the MBPP problems to evaluate (format "mbpp").
Stage order: explore, distill, train@leafe, the three CodeContests evals, report@cc (Table 2), then the three
MBPP evals and report@mbpp (Table 5); each report reads only its own evals.
"""

import ml_collections

from configs.paper import common

MODELS = ("qwen2.5-72b", "llama3-70b", "qwen2.5-32b")  # Table 2 and Table 5 backbones (notes §4)

CC_TRAIN = "data/code_contests/data/train-*.parquet"  # deepmind/code_contests training shards (a glob)
CC_TEST = "data/code_contests/data/test-*.parquet"  # deepmind/code_contests test shard
MBPP_TEST = "data/mbpp/mbpp_test.jsonl"  # the MBPP problems evaluated out of distribution (Table 5)
HORIZON = 4  # [S] CodeContests max horizon 4: submissions per episode (notes §2.2, App. B.3)

# Coding env knobs shared by every run here: judge limits from the problems themselves, 4 tests judged in
# parallel [D], the strongest sandbox isolation available [D].
JUDGE = {"horizon": HORIZON, "time_limit_s": None, "memory_mb": None, "num_workers": 4, "isolation": "auto"}

SETUP = common.EnvSetup(
    env="coding",  # programming problems judged in the sandbox (leafe_jax/envs/coding)
    env_config={"format": "codecontests", "problems": {"train": CC_TRAIN}, **JUDGE},  # explored: training set
    eval_env_config={"format": "codecontests", "problems": {"test": CC_TEST}, **JUDGE},  # Table 2: test set
    explore_split="train",  # the training problems
    explore_tasks=4096,  # [ours] sized toward the ~10-12k distillation samples per dataset (notes §2.3)
    eval_split="test",  # CodeContests test split
    eval_tasks=165,  # [I] 165 problems: the Table 2 cells are multiples of 1/165 (notes §3)
    eval_tasks_per_chunk=4,  # [ours] 4 x 128 episodes per chunk, each judged in the sandbox
    max_steps=HORIZON,  # the episode ends after 4 submissions
    history_length=HORIZON - 1,  # [ours] every earlier submission of the episode, with its feedback
    max_new_tokens=2048,  # [ours] reasoning plus a complete program; not given in the paper
    seq_len=8192,  # [ours] statement, 3 earlier programs with feedback, and a 2048-token response
    explore_cache_len=8192,  # [ours] a reflection prompt lists the 4 submissions with their feedback
    num_epochs=2,  # [S] 2-3 epochs (notes §2.3)
    env_workers=8,  # [ours] env worker processes: judging runs in each worker's sandbox
)

# MBPP (Table 5): the same judge and horizon, another problem file. [I] The paper's 378 problems match the size
# of EvalPlus MBPP+ (notes §3); MBPP_TEST holds whichever MBPP problems are to be evaluated.
MBPP_ENV = {"format": "mbpp", "problems": {"test": MBPP_TEST}}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model = common.backbone(arg, MODELS, "configs/paper/codecontests.py")
  title = f"LEAFE on CodeContests ({model.label}): paper Table 2"
  config = common.pipeline(f"codecontests_{arg}", SETUP, model, title)
  rows = ("base", "grpo", "leafe")
  config.stages = ("explore", "distill", "train@leafe", *(f"eval@cc_{r}" for r in rows), "report@cc",
                   *(f"eval@mbpp_{r}" for r in rows), "report@mbpp")
  variants = {"leafe": {}}  # train@leafe: the train section as it is
  for r in rows:
    method, policy = common.EVAL_ROWS[r]
    variants[f"cc_{r}"] = {"eval": {"method": method, "policy": policy}}
    variants[f"mbpp_{r}"] = {"eval": {"method": method, "policy": policy, "env_config": MBPP_ENV,
                                      "num_tasks": common.ALL_TASKS}}  # every problem of MBPP_TEST
  variants["cc"] = {"report": {"eval_glob": "eval_cc_*"}}  # Table 2: the CodeContests evals only
  variants["mbpp"] = {"report": {"eval_glob": "eval_mbpp_*", "explore_dir": "",  # no tree: nothing explored on MBPP
                                 "title": f"CodeContests-trained policies on MBPP ({model.label}): paper Table 5"}}
  config.variants = ml_collections.ConfigDict(variants)
  return config
