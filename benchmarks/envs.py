"""Environment throughput: Sokoban vs gym-sokoban, plus the sandbox and text-engine sections of other modules.

Sokoban (measured here, same room size and box count on both sides, one run):
  * reset, new seed: ours = room generation + `solve` proof of solvability within max_steps + text render;
    gym-sokoban = its `reset()` (generation + RGB render; it has no text observation).
  * generation only: our `generate_level` (still including the solver proof) vs gym-sokoban's `generate_room`.
  * reset, same task: ours with the per-process room cache (the explorer resets one task many times for
    rollback); gym-sokoban has no seeded reset to compare with.
  * step: ours (text observation) vs gym-sokoban `step` with its cheapest observation ('tiny_rgb_array').
Other sections are imported when their modules exist (`leafe_jax.envs.coding.bench.measure_sandbox`,
`leafe_jax.envs.bench_text_engines.measure_text_engines`) and listed as skipped otherwise.
The last line is one JSON object for the Sokoban reset ratio (new seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import random
import time
import warnings

import numpy as np

from leafe_jax.envs.sokoban import SokobanEnv
from leafe_jax.envs.sokoban import env as sokoban_env

ACTIONS = ("up", "down", "left", "right")


def _args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dim", type=int, nargs=2, default=(6, 6), help="room rows cols (verl-agent: 6 6)")
  parser.add_argument("--boxes", type=int, default=1, help="boxes per room (verl-agent: 1)")
  parser.add_argument("--max-steps", type=int, default=15, help="episode step limit (verl-agent: 15)")
  parser.add_argument("--resets", type=int, default=300, help="new-seed resets per side")
  parser.add_argument("--steps", type=int, default=5000, help="steps per side")
  parser.add_argument("--pool-workers", type=int, default=2, help="EnvPool worker processes")
  parser.add_argument("--pool-episodes", type=int, default=32, help="episodes per EnvPool call")
  parser.add_argument("--pool-calls", type=int, default=200, help="EnvPool step calls")
  parser.add_argument("--sandbox-n", type=int, default=40, help="programs per side in the sandbox section")
  parser.add_argument("--skip-sandbox", action="store_true")
  parser.add_argument("--skip-text-engines", action="store_true")
  return parser.parse_args()


def _rate(n: int, seconds: float) -> float:
  return n / seconds if seconds > 0 else float("inf")


def _row(section: str, what: str, ours, reference, unit: str, notes: str = "") -> dict:
  ratio = ours / reference if isinstance(ours, float | int) and isinstance(reference, float | int) else None
  return {"section": section, "what": what, "ours": ours, "reference": reference, "unit": unit, "ratio": ratio,
          "notes": notes}


def _walk_actions(rng: random.Random, n: int) -> list[str]:
  return [rng.choice(ACTIONS) for _ in range(n)]


def measure_ours(args) -> dict:
  env = SokobanEnv(dim=tuple(args.dim), num_boxes=args.boxes, max_steps=args.max_steps)
  tasks = env.tasks("test", n=args.resets)
  sokoban_env.generate_level.cache_clear()
  start = time.perf_counter()
  for task_id in tasks:
    env.reset(task_id)
  reset_new = _rate(len(tasks), time.perf_counter() - start)

  sokoban_env.generate_level.cache_clear()
  start = time.perf_counter()
  for task_id in tasks:
    sokoban_env.generate_level(int(task_id.split(":")[1]), env.params)
  generate = _rate(len(tasks), time.perf_counter() - start)

  start = time.perf_counter()
  for task_id in tasks:  # all cached now
    env.reset(task_id)
  reset_cached = _rate(len(tasks), time.perf_counter() - start)

  displacement = []
  for task_id in tasks:
    lv = env.level_of(task_id)
    w = lv.width
    # Box identities are not kept after generation: use the cheapest box-to-target assignment (exact for 1 box).
    displacement.append(min(sum(abs(b // w - t // w) + abs(b % w - t % w) for b, t in zip(sorted(lv.boxes), perm))
                            for perm in itertools.permutations(sorted(lv.targets))))

  actions = _walk_actions(random.Random(0), args.steps)
  env.reset(tasks[0])
  elapsed, i, episode = 0.0, 0, 0
  while i < len(actions):
    start = time.perf_counter()
    step = env.step(actions[i])
    elapsed += time.perf_counter() - start
    i += 1
    if step.done:  # resets are not part of the step rate
      episode += 1
      env.reset(tasks[episode % len(tasks)])
  return {"reset_new": reset_new, "generate": generate, "reset_cached": reset_cached,
          "step": _rate(len(actions), elapsed), "displacement": float(np.mean(displacement))}


def measure_gym_sokoban(args) -> dict | str:
  """gym-sokoban's rates, or the reason it cannot run."""
  try:
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
      warnings.simplefilter("ignore")
      from gym_sokoban.envs.room_utils import generate_room
      from gym_sokoban.envs.sokoban_env import SokobanEnv as GymSokobanEnv
  except Exception as e:  # any import failure means "cannot run", reported in the table
    return f"gym-sokoban not importable: {type(e).__name__}: {e}"
  sink = io.StringIO()  # gym-sokoban prints a line for every discarded room
  env = GymSokobanEnv(dim_room=tuple(args.dim), num_boxes=args.boxes, max_steps=args.max_steps, reset=False)
  with contextlib.redirect_stdout(sink):
    start = time.perf_counter()
    for seed in range(args.resets):
      random.seed(seed)
      np.random.seed(seed)
      env.reset()
    reset_new = _rate(args.resets, time.perf_counter() - start)
    displacement = []
    start = time.perf_counter()
    done = 0
    for seed in range(args.resets):
      random.seed(seed)
      np.random.seed(seed)
      try:
        _, _, box_mapping = generate_room(dim=tuple(args.dim), num_steps=env.num_gen_steps, num_boxes=args.boxes)
      except (RuntimeError, RuntimeWarning):
        continue  # counted as time spent; its env.reset would retry
      done += 1
      displacement.append(sum(abs(t[0] - b[0]) + abs(t[1] - b[1]) for t, b in box_mapping.items()))
    generate = _rate(done, time.perf_counter() - start)
    rng = random.Random(0)
    codes = {"up": 1, "down": 2, "left": 3, "right": 4}  # gym-sokoban's push(-or-move) actions
    actions = [codes[a] for a in _walk_actions(rng, args.steps)]
    random.seed(0)
    np.random.seed(0)
    env.reset()
    elapsed = 0.0
    for a in actions:
      start = time.perf_counter()
      _, _, is_done, _ = env.step(a, observation_mode="tiny_rgb_array")
      elapsed += time.perf_counter() - start
      if is_done:
        env.reset()
  return {"reset_new": reset_new, "generate": generate, "step": _rate(len(actions), elapsed),
          "displacement": float(np.mean(displacement)) if displacement else float("nan")}


def sokoban_rows(args) -> tuple[list[dict], dict]:
  ours = measure_ours(args)
  ref = measure_gym_sokoban(args)
  section = f"sokoban {args.dim[0]}x{args.dim[1]}, {args.boxes} box(es)"
  if isinstance(ref, str):
    rows = [_row(section, "reset, new seed", ours["reset_new"], "n/a", "resets/s", ref),
            _row(section, "step", ours["step"], "n/a", "steps/s", ref)]
    return rows, {"ours": ours["reset_new"], "reference": None, "ratio": None}
  rows = [
      _row(section, "reset, new seed (ours: + solver proof)", ours["reset_new"], ref["reset_new"], "resets/s",
           "gym-sokoban renders RGB on reset"),
      _row(section, "room generation only", ours["generate"], ref["generate"], "rooms/s",
           "ours includes the solve() proof"),
      _row(section, "reset, same task (cached room)", ours["reset_cached"], "n/a", "resets/s",
           "gym-sokoban has no seeded reset"),
      _row(section, "step", ours["step"], ref["step"], "steps/s", "gym-sokoban: tiny_rgb_array observation"),
      _row(section, "mean box displacement of start states", ours["displacement"], ref["displacement"], "cells",
           "same generator statistics expected"),
  ]
  return rows, {"ours": ours["reset_new"], "reference": ref["reset_new"],
                "ratio": ours["reset_new"] / ref["reset_new"]}


def pool_rows(args) -> list[dict]:
  """EnvPool batched steps (all episodes per call) vs the same envs stepped in this process."""
  from leafe_jax.envs.pool import EnvPool

  num_episodes, calls = args.pool_episodes, args.pool_calls
  config = {"dim": tuple(args.dim), "num_boxes": args.boxes, "max_steps": calls + 1}
  tasks = SokobanEnv(**config).tasks("test", n=num_episodes)
  ids = [f"e{i}" for i in range(num_episodes)]
  rng = random.Random(1)
  batches = [[rng.choice(ACTIONS) for _ in ids] for _ in range(calls)]
  local = [SokobanEnv(**config) for _ in ids]
  for env, task_id in zip(local, tasks):
    env.reset(task_id)
  start = time.perf_counter()
  for batch in batches:
    for env, action, task_id in zip(local, batch, tasks):
      if env.step(action).done:  # solved by the random walk: start again, on both sides
        env.reset(task_id)
  in_process = _rate(calls * num_episodes, time.perf_counter() - start)
  with EnvPool("sokoban", config, num_workers=args.pool_workers) as pool:
    pool.reset(ids, tasks)
    start = time.perf_counter()
    for batch in batches:
      done = [i for i, step in enumerate(pool.step(ids, batch)) if step.done]
      if done:
        pool.reset([ids[i] for i in done], [tasks[i] for i in done])
    pooled = _rate(calls * num_episodes, time.perf_counter() - start)
  return [_row("env pool", f"sokoban steps, {num_episodes} episodes per call, {args.pool_workers} workers", pooled,
               in_process, "steps/s", "reference = same envs stepped in-process (the IPC cost)")]


def sandbox_rows(args) -> list[dict]:
  if args.skip_sandbox:
    return [_row("coding sandbox", "judged programs", "skipped", "skipped", "programs/s", "--skip-sandbox")]
  try:
    from leafe_jax.envs.coding.bench import measure_sandbox
  except ImportError as e:
    return [_row("coding sandbox", "judged programs", "skipped", "skipped", "programs/s", f"not available: {e}")]
  try:
    r = measure_sandbox(args.sandbox_n)
  except Exception as e:  # a broken section is reported, the other sections still run
    return [_row("coding sandbox", "judged programs", "failed", "failed", "programs/s", f"{type(e).__name__}: {e}")]
  notes = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("ours", "reference", "unit", "ratio"))
  return [_row("coding sandbox", "judged trivial programs vs bare subprocess", r["ours"], r["reference"],
               r.get("unit", "programs/s"), notes)]


def text_engine_rows(args) -> list[dict]:
  if args.skip_text_engines:
    return [_row("text engines", "ScienceWorld/ALFWorld", "skipped", "skipped", "", "--skip-text-engines")]
  try:
    from leafe_jax.envs.bench_text_engines import measure_text_engines
  except ImportError as e:
    return [_row("text engines", "ScienceWorld/ALFWorld", "skipped", "skipped", "", f"not available: {e}")]
  try:
    results = measure_text_engines()
  except Exception as e:  # a broken section is reported, the other sections still run
    return [_row("text engines", "ScienceWorld/ALFWorld", "failed", "failed", "", f"{type(e).__name__}: {e}")]
  rows = []
  for r in results:
    notes = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("name", "what", "ours", "reference", "unit",
                                                                     "ratio", "section", "notes"))
    rows.append(_row(r.get("section", "text engines"), r.get("what", r.get("name", "?")), r.get("ours", "n/a"),
                     r.get("reference", "n/a"), r.get("unit", ""), r.get("notes", notes)))
  return rows


def _fmt(value) -> str:
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
  return str(value)


def main() -> None:
  args = _args()
  rows, headline = sokoban_rows(args)
  rows += pool_rows(args)
  rows += sandbox_rows(args)
  rows += text_engine_rows(args)
  print(f"Environment throughput ({os.cpu_count()} cores, one run; reference = gym-sokoban 0.0.6 for Sokoban)\n")
  print("| section | what | ours | reference | unit | ours/reference | notes |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
    print(f"| {r['section']} | {r['what']} | {_fmt(r['ours'])} | {_fmt(r['reference'])} | {r['unit']} | {ratio} "
          f"| {r['notes']} |")
  print()
  print(json.dumps({"name": "sokoban_reset", "ours": round(headline["ours"], 1),
                    "reference": None if headline["reference"] is None else round(headline["reference"], 1),
                    "unit": "resets/s", "ratio": None if headline["ratio"] is None else round(headline["ratio"], 2)}))


if __name__ == "__main__":
  main()
