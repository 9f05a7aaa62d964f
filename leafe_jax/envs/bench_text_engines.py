"""ScienceWorld, ALFWorld and WebShop throughput through our adapters vs the packages used directly in-process.

Same tasks and the same action sequences on both sides (ScienceWorld: the package's gold sequence; ALFWorld: the
winning command list of the hand-written test game; WebShop, when $WEBSHOP_ROOT is set: searches and returns to the
search page). `measure_text_engines()` returns rows for
`benchmarks/envs.py`: section, what, ours, reference, unit, ratio, notes. Run alone:
  python -m leafe_jax.envs.bench_text_engines
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence

from leafe_jax.envs.pool import EnvPool

SCIENCEWORLD_TASK = "find-living-thing/0"
ALFWORLD_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "alfworld")
ALFWORLD_TASK = "valid_seen/pick_and_place_simple-Apple-None-Fridge-1/trial_T00000000_000001"
ALFWORLD_ACTIONS = ("go to countertop 1", "take apple 1 from countertop 1", "go to fridge 1", "open fridge 1",
                    "move apple 1 to fridge 1")
EPISODES = 3  # episodes per measurement (each is reset + the whole action list)


def _row(section: str, what: str, ours: float, reference: float | None, unit: str, notes: str = "") -> dict:
  ratio = round(ours / reference, 3) if reference else None
  return {"section": section, "what": what, "ours": round(ours, 2),
          "reference": round(reference, 2) if reference is not None else "n/a", "unit": unit, "ratio": ratio,
          "notes": notes}


def _timed(fn: Callable[[], None]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _pool_rates(env_name: str, config: dict, task_id: str, actions: Sequence[str], num_workers: int) -> dict:
  """Steps/s and reset/replay latency through an EnvPool with `num_workers` episodes in parallel."""
  with EnvPool(env_name, config, num_workers=num_workers) as pool:
    ids = [f"e{i}" for i in range(num_workers)]
    # Warm-up, as on the direct side: one whole episode (engine start and the JVM's JIT are not measured).
    pool.reset(ids, [task_id] * num_workers)
    for a in actions:
      pool.step(ids, [a] * num_workers)
    reset_s = step_s = 0.0
    for _ in range(EPISODES):
      reset_s += _timed(lambda: pool.reset(ids, [task_id] * num_workers))
      for a in actions:
        step_s += _timed(lambda a=a: pool.step(ids, [a] * num_workers))
    prefix = list(actions[: len(actions) // 2])
    replay_s = _timed(lambda: pool.replay(ids[0], task_id, prefix))
  return {"steps_per_s": EPISODES * len(actions) * num_workers / step_s, "reset_s": reset_s / EPISODES,
          "replay_s": replay_s, "prefix": len(prefix)}


def _direct_rates(reset: Callable[[], None], step: Callable[[str], None], actions: Sequence[str]) -> dict:
  reset()  # warm-up: one whole episode, as on the pool side
  for a in actions:
    step(a)
  reset_s = step_s = 0.0
  for _ in range(EPISODES):
    reset_s += _timed(reset)
    for a in actions:
      step_s += _timed(lambda a=a: step(a))
  prefix = list(actions[: len(actions) // 2])

  def replay():
    reset()
    for a in prefix:
      step(a)

  return {"steps_per_s": EPISODES * len(actions) / step_s, "reset_s": reset_s / EPISODES, "replay_s": _timed(replay)}


def _rows(section: str, env_name: str, config: dict, task_id: str, actions: Sequence[str], direct: dict) -> list[dict]:
  rows = []
  for workers in (1, 2):
    ours = _pool_rates(env_name, config, task_id, actions, workers)
    rows.append(_row(section, f"step, pool {workers} worker(s) vs package in-process", ours["steps_per_s"],
                     direct["steps_per_s"], "steps/s", "aggregate over workers"))
    if workers == 1:
      rows.append(_row(section, "reset (load task), pool 1 worker", ours["reset_s"] * 1e3, direct["reset_s"] * 1e3,
                       "ms", "lower is better"))
      rows.append(_row(section, f"rollback = reset + replay of {ours['prefix']} steps, pool 1 worker",
                       ours["replay_s"] * 1e3, direct["replay_s"] * 1e3, "ms",
                       "lower is better; no cheaper state restore in the package"))
  return rows


def measure_scienceworld() -> list[dict]:
  from scienceworld import ScienceWorldEnv as Engine

  from leafe_jax.envs.scienceworld import ScienceWorldEnv, parse_task_id

  adapter = ScienceWorldEnv()
  actions = adapter.gold_actions(SCIENCEWORLD_TASK)
  adapter.close()
  name, variation = parse_task_id(SCIENCEWORLD_TASK)
  engine = Engine("", envStepLimit=10**9)

  def reset():
    engine.load(name, variation, "")
    engine.reset()

  direct = _direct_rates(reset, engine.step, actions)
  engine.close()
  return _rows("ScienceWorld", "scienceworld", {}, SCIENCEWORLD_TASK, actions, direct)


def measure_alfworld() -> list[dict]:
  import textworld
  import textworld.gym
  from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

  data_dir = os.path.abspath(ALFWORLD_DATA)
  game = os.path.join(data_dir, "json_2.1.1", ALFWORLD_TASK, "game.tw-pddl")
  infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
  env = textworld.gym.make(textworld.gym.register_games(
      [game], infos, batch_size=1, asynchronous=False, max_episode_steps=50,
      wrappers=[AlfredDemangler(shuffle=False), AlfredInfos]))
  direct = _direct_rates(env.reset, lambda a: env.step([a]), ALFWORLD_ACTIONS)
  env.close()
  return _rows("ALFWorld (tiny test game)", "alfworld", {"data_dir": data_dir}, ALFWORLD_TASK, ALFWORLD_ACTIONS,
               direct)


def measure_webshop() -> list[dict]:
  """Our WebShop client (its server process) vs the package's WebAgentTextEnv in this process, on the catalogue
  under $WEBSHOP_ROOT; needs the package importable by this interpreter (both sides run the same code)."""
  root = os.environ.get("WEBSHOP_ROOT")
  if not root:
    raise ImportError("WEBSHOP_ROOT is not set")
  if root not in sys.path:
    sys.path.insert(0, root)  # as the server finds it
  from web_agent_site.envs.web_agent_text_env import WebAgentTextEnv

  from leafe_jax.envs.webshop import WebShopEnv
  from leafe_jax.envs.webshop import env as webshop_env

  client = WebShopEnv(webshop_root=root, python=sys.executable)
  client.reset("0")
  actions = [f"search[{client.instruction}]", "click[back to search]"] * 3  # valid on any catalogue
  cwd = os.getcwd()
  os.chdir(root)  # the server runs from the checkout too
  try:
    random.seed(webshop_env.DEFAULT_GOAL_SEED)  # as the server seeds the package's goal building
    package = WebAgentTextEnv(observation_mode="text", human_goals=True)
  finally:
    os.chdir(cwd)
  direct = _direct_rates(lambda: package.reset(session=0), package.step, actions)
  ours = _direct_rates(lambda: client.reset("0"), client.step, actions)
  notes = f"catalogue of {root}; a search and a return to the search page, 3 times"
  return [
      _row("WebShop", "step, client + server process vs package in-process", ours["steps_per_s"],
           direct["steps_per_s"], "steps/s", notes),
      _row("WebShop", "reset", ours["reset_s"] * 1e3, direct["reset_s"] * 1e3, "ms", "lower is better"),
      _row("WebShop", f"rollback = reset + replay of {len(actions) // 2} steps", ours["replay_s"] * 1e3,
           direct["replay_s"] * 1e3, "ms", "lower is better; no state restore in the package"),
  ]


def measure_text_engines() -> list[dict]:
  rows = []
  for measure in (measure_scienceworld, measure_alfworld, measure_webshop):
    try:
      rows += measure()
    except ImportError as e:  # an engine not installed: its section is reported as skipped
      rows.append({"section": measure.__name__, "what": "skipped", "ours": "n/a", "reference": "n/a", "unit": "",
                   "ratio": None, "notes": f"not installed: {e}"})
  return rows


if __name__ == "__main__":
  results = measure_text_engines()
  print("| section | what | ours | reference | unit | ratio |\n|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['section']} | {r['what']} | {r['ours']} | {r['reference']} | {r['unit']} | {r['ratio']} |")
  step_rows = [r for r in results if r["what"].startswith("step, pool 1")]
  head = step_rows[0] if step_rows else {"ours": None, "reference": None, "ratio": None}
  print(json.dumps({"name": "scienceworld_pool_step_1_worker", "ours": head["ours"], "reference": head["reference"],
                    "unit": "steps/s", "ratio": head["ratio"]}))
