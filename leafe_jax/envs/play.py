"""Play any registered env in the terminal, seeing exactly the prompt the model sees.

  python -m leafe_jax.envs.play --env=scienceworld --task=boil/0
  python -m leafe_jax.envs.play --env=alfworld --task=valid_seen/... --config data_dir=/data/alfworld
  python -m leafe_jax.envs.play --env=sokoban --task=... --script "up,left"   # non-interactive

Each turn prints the rendered prompt (build_action_prompt, the stages' default history length unless
--history_length says otherwise: pass a config's own, e.g. 0 for the demo's)
and reads one action; a line may also be a full model answer with <action> tags (parsed as the model's is).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from leafe_jax.envs.pool import make_env_from_spec
from leafe_jax.envs.prompts import DEFAULT_HISTORY_LENGTH, build_action_prompt, parse_action

QUIT = ("quit", "exit")


def parse_config(pairs: list[str]) -> dict[str, Any]:
  """k=v pairs; values that look like ints/floats/bools are converted."""
  config: dict[str, Any] = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise ValueError(f"--config expects key=value, got {pair!r}")
    if value.lower() in ("true", "false"):
      config[key] = value.lower() == "true"
      continue
    for cast in (int, float):
      try:
        config[key] = cast(value)
        break
      except ValueError:
        continue
    else:
      config[key] = value
  return config


def render(messages: list[dict[str, str]]) -> str:
  return "\n".join(f"=== {m['role']} ===\n{m['content']}" for m in messages)


def play(env, task_id: str, actions, out, history_length: int = DEFAULT_HISTORY_LENGTH) -> bool:
  """Runs one episode, actions drawn from the iterator `actions`; returns success."""
  observation = env.reset(task_id)
  history: list[tuple[str, str]] = []
  while True:
    admissible = env.admissible_actions()
    messages = build_action_prompt(env, instruction=env.instruction, history=history,
                                   current_observation=observation, admissible_actions=admissible,
                                   step_count=len(history), history_length=history_length)
    print(render(messages), file=out)
    print("> ", end="", file=out, flush=True)
    line = next(actions, None)
    if line is None or line.strip().lower() in QUIT:
      print("\n(stopped)", file=out)
      return False
    action = parse_action(line, admissible) or line.strip()
    print(action, file=out)
    step = env.step(action)
    history.append((observation, action))
    observation = step.observation
    if step.done:
      print(f"=== done: success={step.success} after {len(history)} step(s); info={step.info} ===\n"
            f"{observation}", file=out)
      return step.success


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--env", required=True, help='registry name or "module:Factory"')
  parser.add_argument("--task", required=True, help="task id")
  parser.add_argument("--config", action="append", default=[], help="env config key=value (repeatable)")
  parser.add_argument("--script", default=None, help="comma-separated actions instead of stdin")
  parser.add_argument("--history_length", type=int, default=DEFAULT_HISTORY_LENGTH)
  args = parser.parse_args(argv)
  env = make_env_from_spec(args.env, parse_config(args.config))
  actions = iter(args.script.split(",")) if args.script is not None else (line.rstrip("\n") for line in sys.stdin)
  success = play(env, args.task, actions, sys.stdout, args.history_length)
  if hasattr(env, "close"):
    env.close()
  return 0 if success else 1


if __name__ == "__main__":
  sys.exit(main())
