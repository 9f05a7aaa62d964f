"""Table 1, WebShop: LEAFE from a GRPO checkpoint vs Base, GRPO, EarlyExp and ACE, Pass@1 / Pass@128 on the 500
test goals.

  export WEBSHOP_ROOT=/opt/WebShop   # a WebShop checkout after its `./setup.sh -d all` (data/, search_engine/)
  export WEBSHOP_PYTHON=/opt/conda/envs/webshop/bin/python   # the interpreter setup.sh installed WebShop for
  python -m leafe_jax.main --config=configs/paper/webshop.py:qwen2.5-7b --workdir=runs/webshop_qwen2.5-7b

WebShop pins old packages, so it keeps its own Python environment: the env's server runs under WEBSHOP_PYTHON
and this project's Python only talks to it (or set `webshop_root` / `python` in each stage's env_config).
Backbones (the argument after ':'): qwen2.5-7b, llama3.1-8b. Put the instruct model in
<workdir>/models/base and the GRPO-RLVR checkpoint in <workdir>/models/grpo (HF dirs; see configs/paper/common.py).
EarlyExp's expert here is the env's scripted expert, not EE's human demonstrations (see SETUP).
"""

import ml_collections

from configs.paper import common

MODELS = ("qwen2.5-7b", "llama3.1-8b")  # Table 1 backbones (notes §4)

ENV_CONFIG = {
    "webshop_root": "",  # "" = $WEBSHOP_ROOT
    "python": "",  # "" = $WEBSHOP_PYTHON, else this interpreter
    "max_steps": 15,  # [F] verl-agent WebShop max_steps 15 (notes §3)
    "file_path": "data/items_shuffle.json",  # [S] ">1M products": the full catalogue (relative to WEBSHOP_ROOT)
    "human_goals": True,  # [I] the standard benchmark's human-written instructions (its 500-goal test set)
}

SETUP = common.EnvSetup(
    env="webshop",  # the princeton-nlp package behind a server process (leafe_jax/envs/webshop/)
    env_config=ENV_CONFIG,  # exploration and training tasks
    eval_env_config=ENV_CONFIG,  # the same at test time
    explore_split="train",  # WebShop's training goals (1500 onwards)
    explore_tasks=common.ALL_TASKS,  # [ours] every training goal
    eval_split="test",  # WebShop's test goals 0-499
    eval_tasks=500,  # [I] Pass@128 cells are multiples of 0.2%: the 500-goal test set (notes §3)
    eval_tasks_per_chunk=10,  # [ours] goals per resumable chunk (1280 episodes, sessions on one server)
    max_steps=15,  # [F] verl-agent max_steps (notes §3)
    history_length=2,  # [D] recent (page, action) pairs shown
    max_new_tokens=512,  # [F] verl-agent max_response_length (notes §3)
    seq_len=5120,  # [ours] verl-agent max_prompt_length 4096 [F] + a 512-token response fit
    explore_cache_len=16384,  # [ours] a reflection prompt lists up to 15 steps with their pages
    num_epochs=2,  # [S] 2-3 epochs (notes §2.3)
    env_workers=0,  # [ours] in-process envs: they share ONE server (one copy of the catalogue and index)
    ace=True,  # [T] the ACE row of Table 1
    # The EarlyExp row. EE's WebShop expert is human demonstrations; ours is the env's scripted expert
    # (WebShopEnv.gold_actions: search the instruction, open the goal's product, pick its options, buy), and a
    # task whose expert does not score 1 is left out (the early_experience stage's stats count them).
    early_experience=common.EarlyExperienceSetup(
        iwm_alternatives=3,  # [ours] EE WebShop samples "state-appropriate" alternatives, K not given; SR K = 3
        il_epochs=2,  # [ours] as ALFWorld's recipe (notes §8); EE gives no WebShop recipe here
        lr=1e-5,  # [ours] likewise
        batch_size=16,  # [ours] likewise
    ),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model = common.backbone(arg, MODELS, "configs/paper/webshop.py")
  return common.pipeline(f"webshop_{arg}", SETUP, model, f"LEAFE on WebShop ({model.label}): paper Table 1")
