"""Table 1, Sokoban: LEAFE from a GRPO checkpoint vs Base and GRPO, Pass@1 / Pass@128 on held-out rooms.

  python -m leafe_jax.main --config=configs/paper/sokoban.py:qwen2.5-7b --workdir=runs/sokoban_qwen2.5-7b

Backbones (the argument after ':'): qwen2.5-7b, llama3.1-8b. Put the instruct model in <workdir>/models/base and
the GRPO-RLVR checkpoint in <workdir>/models/grpo (HF dirs; see configs/paper/common.py for the tags).
"""

import ml_collections

from configs.paper import common

MODELS = ("qwen2.5-7b", "llama3.1-8b")  # Table 1 backbones (notes §4)

SETUP = common.EnvSetup(
    env="sokoban",  # procedural rooms, text grid (leafe_jax/envs/sokoban)
    # [F] verl-agent's room, 6x6 with 1 box (the sokoban env's defaults), 15 steps (notes §3); LEAFE's room size
    # is not given (notes §9.8).
    env_config={"dim": (6, 6), "num_boxes": 1, "max_steps": 15},
    eval_env_config={"dim": (6, 6), "num_boxes": 1, "max_steps": 15},  # the same rooms
    explore_split="train",  # seeds [0, 2^16) (verl-agent ranges, notes §3 [F])
    explore_tasks=4096,  # [ours] sized toward the ~10-12k distillation samples per dataset (notes §2.3)
    eval_split="test",  # seeds [2^16, 2^32) (notes §3 [F])
    eval_tasks=500,  # [I] 500 puzzles, inferred from the Pass@128 granularity (notes §3)
    eval_tasks_per_chunk=16,  # [D] 16 x 128 episodes per chunk (a Sokoban env is a small Python object)
    max_steps=15,  # [F] verl-agent max_steps (notes §3)
    history_length=2,  # [D] recent (observation, action) pairs shown
    max_new_tokens=512,  # [F] verl-agent max_response_length (notes §3)
    seq_len=2048,  # [ours] verl-agent max_prompt_length 1024 + response 512 [F] fit
    explore_cache_len=8192,  # [ours] a reflection prompt lists all 15 steps with their grids
    num_epochs=2,  # [S] 2-3 epochs (notes §2.3)
    ace=True,  # [T] the ACE row of Table 1
    early_experience=common.EarlyExperienceSetup(
        iwm_alternatives=3,  # [ours] every non-expert move (Sokoban has 4 actions); EE has no Sokoban recipe
        il_epochs=2,  # [ours] EE's ALFWorld recipe (notes §8): 2 epochs, lr 1e-5, batch 16
        lr=1e-5,  # [ours] likewise
        batch_size=16,  # [ours] likewise
    ),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  model = common.backbone(arg, MODELS, "configs/paper/sokoban.py")
  return common.pipeline(f"sokoban_{arg}", SETUP, model, f"LEAFE on Sokoban ({model.label}): paper Table 1")
