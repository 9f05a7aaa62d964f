"""Tables 1 and 6, ALFWorld: LEAFE from a GRPO checkpoint vs Base, GRPO and EarlyExp, and LEAFE + EE (Table 6),
Pass@1 / Pass@128 on the seen validation games.

  export ALFWORLD_DATA=/data/alfworld   # holds json_2.1.1/{train,valid_seen,valid_unseen} (alfworld-download)
  python -m leafe_jax.main --config=configs/paper/alfworld.py:qwen2.5-7b --workdir=runs/alfworld_qwen2.5-7b

Backbones (the argument after ':'): qwen2.5-7b, llama3.1-8b. Put the instruct model in <workdir>/models/base and
the GRPO-RLVR checkpoint in <workdir>/models/grpo (HF dirs; see configs/paper/common.py for the tags).
"""

import ml_collections

from configs.paper import common

MODELS = ("qwen2.5-7b", "llama3.1-8b")  # Table 1 backbones (notes §4)

SETUP = common.EnvSetup(
    env="alfworld",  # TextWorld PDDL games of ALFWorld (leafe_jax/envs/alfworld.py); data from $ALFWORLD_DATA
    env_config={"max_steps": 50},  # [F] verl-agent ALFWorld max_steps 50 (notes §3)
    eval_env_config={"max_steps": 50},  # the same limit at test time
    explore_split="train",  # the training games
    explore_tasks=common.ALL_TASKS,  # [ours] every training game
    eval_split="valid_seen",  # [I] 140 games: the ALFWorld cells are multiples of 1/140 (notes §3)
    eval_tasks=140,  # the whole valid_seen split
    eval_tasks_per_chunk=1,  # [ours] one game per chunk: 128 TextWorld envs alive at once, each loads its game
    max_steps=50,  # [F] verl-agent max_steps (notes §3)
    history_length=2,  # [D] recent (observation, action) pairs shown
    max_new_tokens=512,  # [F] verl-agent max_response_length (notes §3)
    seq_len=4096,  # [ours] verl-agent max_prompt_length 2048 + response 512 [F] fit
    explore_cache_len=32768,  # [ours] a reflection prompt lists up to 50 steps with their observations
    num_epochs=2,  # [S] 2-3 epochs (notes §2.3)
    env_workers=8,  # [ours] env worker processes: TextWorld resets cost ~1 s of CPU each
    ace=True,  # [T] the ACE row of Table 1
    early_experience=common.EarlyExperienceSetup(
        iwm_alternatives=8,  # [S] EE ALFWorld: 8 non-expert admissible actions per state (notes §8, EE §B.1)
        il_epochs=2,  # [I] EE's TextCraft recipe "follows ALFWorld": 2 epochs (notes §8)
        lr=1e-5,  # [I] likewise 1e-5
        batch_size=16,  # [I] likewise 16
    ),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model = common.backbone(arg, MODELS, "configs/paper/alfworld.py")
  return common.pipeline(f"alfworld_{arg}", SETUP, model, f"LEAFE on ALFWorld ({model.label}): paper Tables 1, 6",
                         leafe_with_ee=True)
