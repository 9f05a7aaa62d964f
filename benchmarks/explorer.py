"""Explorer overhead: tree bookkeeping, replay and record writing per env step vs bare env stepping; batching.

Sections (one run, Sokoban, a scripted zero-cost policy that acts by a hash of its prompt and reflects with
tau = half the steps taken, so branches replay real prefixes):
  * bookkeeping: the Explorer (method leafe, periodic and failure reflections) over training tasks, the trees
    appended to a TreeStore (a JSON line per tree, fsynced in groups and at the end, as the explore stage does),
    then the real distill stage (tiny BPE tokenizer, TFRecord shards) to a temp dir. Reference = bare stepping of
    the exact same env calls (every node's reset, replayed prefix and own actions, read back from the trees) on
    fresh envs. Policy time is measured and left out; room generation is warmed before both sides (it is env
    work either way).
  * pooled: the same exploration with `--pool-workers` EnvPool processes (the IPC cost of explore.env_workers).
  * batching: the same explorer with a fake policy that sleeps `--latency-s` per generate call: generate calls
    (counted at the policy) per explorer tick (1: a tick's actions and reflections share one call) and wall time
    vs ticks x latency.
  * floor: the least per-step work any CPython explorer that saves JSONL trees adds (one prompt format, one
    action regex, one json.dumps of the step), over the same turns: a lower bound for the bookkeeping goal.
The last line is one JSON object: explorer seconds per env step (everything but the policy) vs bare stepping.
Goals: bookkeeping <= 20% of bare stepping; with a 50 ms policy, wall time within 1.2x of ticks x 50 ms.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import re
import tempfile
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections

from leafe_jax.envs.sokoban import SokobanEnv
from leafe_jax.explore import reflection
from leafe_jax.explore.engine import Explorer, ExploreSettings
from leafe_jax.explore.ledger import Ledger
from leafe_jax.explore.tree import Tree, TreeStore, load_trees
from leafe_jax.policy.scripted import ScriptedPolicy

ACTIONS = ("up", "down", "left", "right")
STEP_MARK = " action]: "  # how the full reflection prompt lists each step taken
TOKENIZER_VOCAB = 512  # tiny BPE for the records row (a real vocabulary only changes the tokenizer's cost)
TOKENIZER_MAX_LEN = 8192  # above any prompt here, so nothing is truncated
TOKENIZER_CORPUS_TREES = 4  # trees whose prompts train the tokenizer
# The floor row's prompt: the least an LLM policy can be shown (the grid and the answer format), no history.
FLOOR_PROMPT = "Step {step}. Current observation:\n{observation}\nAnswer with <action>up|down|left|right</action>."
FLOOR_ACTION = re.compile(r"<action>(.*?)</action>", re.DOTALL)


def _args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tasks", type=int, default=128, help="Sokoban training tasks explored")
  parser.add_argument("--dim", type=int, nargs=2, default=(6, 6), help="room rows cols (verl-agent: 6 6)")
  parser.add_argument("--boxes", type=int, default=1, help="boxes per room (verl-agent: 1)")
  parser.add_argument("--max-steps", type=int, default=15, help="episode horizon (verl-agent: 15)")
  parser.add_argument("--max-attempts", type=int, default=8, help="rollouts per task (explore default)")
  parser.add_argument("--max-depth", type=int, default=2, help="branch depth bound (explore default)")
  parser.add_argument("--reflect-every", type=int, default=5, help="K: periodic reflections, so more branches")
  parser.add_argument("--history-length", type=int, default=2, help="pairs in the action prompt (default)")
  parser.add_argument("--concurrency", type=int, default=64, help="tasks alive at once (explore default)")
  parser.add_argument("--pool-workers", type=int, default=2, help="EnvPool processes of the pooled row (0: skip)")
  parser.add_argument("--latency-s", type=float, default=0.05, help="fake policy latency per generate call")
  parser.add_argument("--latency-tasks", type=int, default=64, help="tasks of the fixed-latency run")
  parser.add_argument("--skip-distill", action="store_true", help="leave out the records (tokenizer) row")
  return parser.parse_args()


def respond(messages) -> str:
  """Zero-cost scripted policy: reflections roll back to half the steps taken, actions hash the prompt."""
  content = messages[-1]["content"]
  if messages[0]["content"] == reflection.REFLECTION_SYSTEM:
    taken = content.count(STEP_MARK)
    return reflection.format_reflection(max(1, taken // 2), "push the box towards the target")
  return f"<think>-</think><action>{ACTIONS[zlib.crc32(content.encode()) % len(ACTIONS)]}</action>"


class TimedPolicy:
  """Forwards to a policy and adds up the time spent in it."""

  def __init__(self, policy):
    self.policy, self.seconds = policy, 0.0

  def generate(self, prompts, **kw):
    start = time.perf_counter()
    try:
      return self.policy.generate(prompts, **kw)
    finally:
      self.seconds += time.perf_counter() - start


class TimedEnv:
  """Forwards to an env and adds up the time of its resets and steps into a shared one-element list."""

  def __init__(self, env, clock: list[float]):
    self._env, self._clock = env, clock
    # Plain attributes, not __getattr__ forwarding: the prompt builder reads them twice per step.
    self.name, self.prompt_template, self.admissible_actions = env.name, env.prompt_template, env.admissible_actions

  def reset(self, task_id):
    start = time.perf_counter()
    observation = self._env.reset(task_id)
    self._clock[0] += time.perf_counter() - start
    return observation

  def step(self, action):
    start = time.perf_counter()
    step = self._env.step(action)
    self._clock[0] += time.perf_counter() - start
    return step

  @property
  def instruction(self):
    return self._env.instruction


def _collected() -> None:
  """A full garbage collection before a timed phase. The imported TensorFlow / transformers / torch objects (~0.5 M)
  make one take ~0.2 s, and which phase happens to trigger it otherwise depends on what earlier phases left
  pending: the distill row came out 15 or 35 us/step from one run to the next."""
  gc.collect()


def _settings(args, concurrency: int) -> ExploreSettings:
  return ExploreSettings(method="leafe", reflect_every=args.reflect_every, max_depth=args.max_depth,
                         max_attempts=args.max_attempts, history_length=args.history_length,
                         max_steps=args.max_steps, concurrency=concurrency)


def _env_config(args) -> dict:
  return {"dim": tuple(args.dim), "num_boxes": args.boxes, "max_steps": args.max_steps}


def bare_stepping(trees: list[Tree], env_config: dict) -> tuple[float, int]:
  """Seconds to replay every env call the explorer made (per node: reset, prefix, own actions) on fresh envs."""
  envs = {t.task_id: SokobanEnv(**env_config) for t in trees}
  calls = [(envs[t.task_id], t.task_id, n.prefix_actions + [turn.action or turn.response for turn in n.turns])
           for t in trees for n in t.nodes]
  steps = 0
  _collected()
  start = time.perf_counter()
  for env, task_id, actions in calls:
    env.reset(task_id)
    for action in actions:
      env.step(action)
    steps += len(actions)
  return time.perf_counter() - start, steps


def python_floor(trees: list[Tree]) -> tuple[float, int]:
  """Seconds of the least per-step work ANY CPython explorer that saves the issue's JSONL trees must do, over the
  explorer's own executed turns: format the step's prompt (one `str.format`), parse the action (one compiled regex)
  and encode the step's observation, response and action as JSON (one `json.dumps`, kept in a list). No history,
  no ledger, no reflection, no replay check, no records: a lower bound on the explorer loop and tree store rows."""
  turns = [(turn.step, turn.observation, turn.response) for t in trees for n in t.nodes for turn in n.turns]
  lines = []
  _collected()
  start = time.perf_counter()
  for step, observation, response in turns:
    FLOOR_PROMPT.format(step=step, observation=observation)
    match = FLOOR_ACTION.search(response)
    lines.append(json.dumps([observation, response, match.group(1) if match else ""]))
  return time.perf_counter() - start, len(turns)


def explore_timed(args, tasks: list[str], tree_path: str) -> dict:
  """The explorer with timed envs, policy and tree store; seconds by part."""
  env_config, clock = _env_config(args), [0.0]
  policy, ledger = TimedPolicy(ScriptedPolicy(respond)), Ledger()
  store, store_s = TreeStore(tree_path), [0.0]

  def on_tree(tree):
    start = time.perf_counter()
    store.append(tree)
    store_s[0] += time.perf_counter() - start

  _collected()
  start = time.perf_counter()
  Explorer(policy, lambda: TimedEnv(SokobanEnv(**env_config), clock), "sokoban", _settings(args, args.concurrency),
           ledger).run(tasks, on_tree)
  sync_start = time.perf_counter()
  store.sync()  # the stage's last fsync, before it saves the ledger
  store_s[0] += time.perf_counter() - sync_start
  wall = time.perf_counter() - start
  return {"wall": wall, "policy": policy.seconds, "env": clock[0], "store": store_s[0], "ledger": ledger}


def explore_pooled(args, tasks: list[str]) -> dict:
  from leafe_jax.envs.pool import DEFAULT_STEP_TIMEOUT_S
  from leafe_jax.envs.pooled import env_factory

  policy, ledger = TimedPolicy(ScriptedPolicy(respond)), Ledger()
  with env_factory("sokoban", _env_config(args), args.pool_workers, DEFAULT_STEP_TIMEOUT_S) as make_env:
    make_env().reset(tasks[0])  # workers up and importing done before the clock starts
    start = time.perf_counter()
    Explorer(policy, make_env, "sokoban", _settings(args, args.concurrency), ledger).run(tasks, lambda tree: None)
    wall = time.perf_counter() - start
  return {"wall": wall, "policy": policy.seconds, "ledger": ledger}


def _import_record_writers() -> None:
  """Imports what the distill stage imports lazily (transformers, TensorFlow, tfds): import time is not record
  writing.

  `import transformers` alone is lazy: the first `AutoTokenizer` access imports torch (about 2 s), which had
  been timed as record writing; tensorflow_datasets is imported when the writer closes (tfds metadata).
  """
  import tensorflow_datasets  # noqa: F401
  from transformers import AutoTokenizer  # noqa: F401

  from leafe_jax.data import records  # noqa: F401


def distill_records(tree_dir: str, workdir: str) -> float:
  """Seconds of the real distill stage (tokenize + TFRecord shards) over the trees; tokenizer built first."""
  from leafe_jax.baselines.tiny_tokenizer import train_tokenizer
  from leafe_jax.explore import distill_stage

  trees = list(load_trees(os.path.join(tree_dir, "shard-0-of-1.jsonl")))
  corpus = [m["content"] for t in trees[:TOKENIZER_CORPUS_TREES] for n in t.nodes for turn in n.turns
            for m in turn.messages]
  train_tokenizer(corpus, vocab_size=TOKENIZER_VOCAB, out_dir=os.path.join(workdir, "tok"),
                  model_max_length=TOKENIZER_MAX_LEN)
  config = ml_collections.ConfigDict({"distill": distill_stage.default_config()})
  config.distill.trees, config.distill.tokenizer = tree_dir, "tok"
  _import_record_writers()
  _collected()
  start = time.perf_counter()
  distill_stage.run(config, workdir, os.path.join(workdir, "distill"))
  return time.perf_counter() - start


class TickCountingPolicy:
  """Forwards to a policy and counts its generate calls by the explorer tick they came in (not the ledger's)."""

  def __init__(self, policy):
    self.policy, self.explorer = policy, None
    self.calls_by_tick: collections.Counter = collections.Counter()

  def generate(self, prompts, **kw):
    self.calls_by_tick[self.explorer.tick] += 1
    return self.policy.generate(prompts, **kw)


def latency_run(args, tasks: list[str]) -> dict:
  """Generate calls counted at the policy, against the explorer's own tick count."""
  env_config, ledger = _env_config(args), Ledger()
  policy = TickCountingPolicy(ScriptedPolicy(respond, latency_s=args.latency_s))
  explorer = Explorer(policy, lambda: SokobanEnv(**env_config), "sokoban", _settings(args, len(tasks)), ledger)
  policy.explorer = explorer
  start = time.perf_counter()
  explorer.run(tasks, lambda tree: None)
  wall = time.perf_counter() - start
  calls = sum(policy.calls_by_tick.values())
  assert calls == len(policy.policy.calls)
  return {"wall": wall, "ticks": explorer.tick, "calls": calls,
          "max_calls_per_tick": max(policy.calls_by_tick.values(), default=0),
          "reflections": ledger.total["reflections"]}


def _row(what: str, ours, reference, unit: str, notes: str = "") -> dict:
  ratio = ours / reference if isinstance(ours, float | int) and isinstance(reference, float | int) else None
  return {"what": what, "ours": ours, "reference": reference, "unit": unit, "ratio": ratio, "notes": notes}


def _sig(value: float) -> float:
  return float(f"{value:.3g}")


def _fmt(value) -> str:
  if isinstance(value, float):
    return f"{value:.3g}"
  return str(value)


def main() -> None:
  args = _args()
  env_config = _env_config(args)
  tasks = SokobanEnv(**env_config).tasks("train", args.tasks)
  warm = SokobanEnv(**env_config)
  for task_id in tasks:  # room generation (solver proof) is cached per process: env work on both sides
    warm.reset(task_id)
  rows = []
  with tempfile.TemporaryDirectory() as workdir:
    tree_dir = os.path.join(workdir, "explore", "trees")
    run = explore_timed(args, tasks, os.path.join(tree_dir, "shard-0-of-1.jsonl"))
    run["ledger"].save(os.path.join(workdir, "explore", "ledger.json"))  # as the stage ends: distill needs it
    trees = list(load_trees(os.path.join(tree_dir, "shard-0-of-1.jsonl")))
    bare_s, bare_steps = bare_stepping(trees, env_config)
    total = run["ledger"].total
    steps = total["env_steps"] + total["replayed_steps"]
    assert steps == bare_steps, (steps, bare_steps)  # the bare side made exactly the explorer's env calls
    loop = run["wall"] - run["policy"] - run["store"]
    floor_s, floor_steps = python_floor(trees)
    floor_fraction = (floor_s / floor_steps) / (bare_s / steps)
    distill_s = 0.0 if args.skip_distill else distill_records(tree_dir, workdir)
    ours = loop + run["store"] + distill_s
    nodes = sum(len(t.nodes) for t in trees)
    rows += [
        _row("bare env stepping, same resets/steps/replays", bare_s / steps, bare_s / steps, "s/step",
             f"{steps} steps ({total['replayed_steps']} replayed), {nodes} rollouts, {len(trees)} tasks"),
        _row("env time inside the explorer", run["env"] / steps, bare_s / steps, "s/step",
             "same calls, timed in place"),
        _row("explorer loop (prompts, parsing, tree, ledger, replay)", loop / steps, bare_s / steps, "s/step",
             f"bookkeeping {(loop - run['env']) / bare_s:.0%} of bare; policy {run['policy']:.2f}s left out"),
        _row("tree store (JSON line per tree, grouped fsync)", run["store"] / steps, bare_s / steps, "s/step",
             f"{run['store']:.2f}s"),
        _row("distill to correction records (tokenize + TFRecord)", distill_s / steps, bare_s / steps, "s/step",
             "skipped" if args.skip_distill else f"{distill_s:.2f}s, tiny BPE tokenizer"),
        _row("explorer total (all but the policy)", ours / steps, bare_s / steps, "s/step",
             f"overhead {(ours - bare_s) / bare_s:.0%} of bare (goal <= 20%)"),
        _row("floor: 1 format + 1 regex + 1 json.dumps per step", floor_s / floor_steps, bare_s / steps, "s/step",
             f"{floor_fraction:.0%} of bare: the least any CPython explorer saving JSONL trees adds "
             f"({floor_steps} executed turns)"),
    ]
    pooled = None
    if args.pool_workers > 0:
      pooled = explore_pooled(args, tasks)
      pooled_loop = pooled["wall"] - pooled["policy"]
      rows.append(_row(f"explorer loop, envs in an EnvPool of {args.pool_workers}", pooled_loop / steps,
                       bare_s / steps, "s/step", "explore.env_workers; IPC included"))
  latency = latency_run(args, tasks[: args.latency_tasks])
  per_tick = latency["calls"] / latency["ticks"]
  rows += [
      _row(f"generate calls per explorer tick, {args.latency_tasks} tasks", per_tick, 1.0, "calls/tick",
           f"{latency['calls']} calls over {latency['ticks']} ticks, max {latency['max_calls_per_tick']}; "
           f"{latency['reflections']} reflections ride along"),
      _row(f"wall vs ticks x {args.latency_s * 1000:.0f} ms", latency["wall"], latency["ticks"] * args.latency_s,
           "s", "goal <= 1.2x"),
  ]
  print(f"Explorer overhead ({os.cpu_count()} cores, one run; Sokoban {args.dim[0]}x{args.dim[1]}, "
        f"{args.boxes} box(es), scripted policy)\n")
  print("| what | ours | reference | unit | ours/reference | notes |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
    print(f"| {r['what']} | {_fmt(r['ours'])} | {_fmt(r['reference'])} | {r['unit']} | {ratio} | {r['notes']} |")
  print()
  headline = {
      "name": "explorer_bookkeeping_overhead", "ours": _sig(ours / steps), "reference": _sig(bare_s / steps),
      "unit": "s/step",
      "ratio": round(ours / bare_s, 3), "overhead_fraction": round((ours - bare_s) / bare_s, 3),
      "loop_overhead_fraction": round((loop - bare_s) / bare_s, 3),
      "floor_overhead_fraction": round(floor_fraction, 3), "env_steps": steps,
      "policy_calls_per_tick": round(per_tick, 3),
      "latency_wall_over_ticks": round(latency["wall"] / (latency["ticks"] * args.latency_s), 3),
  }
  if pooled is not None:
    headline["pooled_loop_ratio"] = round((pooled["wall"] - pooled["policy"]) / bare_s, 3)
  print(json.dumps(headline))


if __name__ == "__main__":
  main()
