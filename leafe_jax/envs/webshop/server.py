"""The WebShop side of `leafe_jax.envs.webshop`: a JSON-lines server around the package's text environment.

Run by path, not as a module, under the Python that has WebShop installed (WebShop pins old packages, so it
usually lives in its own environment): standard library + `web_agent_site` only, Python 3.8 syntax, nothing
from leafe_jax. One process holds ONE `SimServer` (the product catalogue and the Lucene index, gigabytes for the
full catalogue) shared by every client env; each client env is a `WebAgentTextEnv` with its own browser and
session prefix.

  python server.py '{"file_path": ..., "human_goals": true, "num_products": null}'

Requests (one JSON object per stdin line) and replies (one per stdout line):
  {"op": "open", "env": "e1"}                    -> {"ok": true, "goals": <number of goals>}
  {"op": "reset", "env": "e1", "goal": 17}        -> {"ok": true, "page": ..., "instruction": ..., "actions": ...}
  {"op": "step", "env": "e1", "action": "click[x]"} -> {"ok": true, "page": ..., "reward": r, "done": d,
                                                       "actions": ...}
  {"op": "goal", "env": "e1", "goal": 17}         -> {"ok": true, "asin": ..., "options": [...], "query": ...,
                                                       "instruction": ...}   (the target, for the expert)
  {"op": "close", "env": "e1"}                    -> {"ok": true}
`page` is the text-mode observation ("[SEP]"-separated), `actions` the package's available actions
({"has_search_bar": bool, "clickables": [...]}). A failed request answers {"ok": false, "error": "..."}.
Everything the package prints goes to stderr, so stdout carries replies only.
"""

import json
import os
import random
import sys
import traceback


def _serve(config, requests, replies):
  # The package draws each human goal's price limit with the global `random` before it seeds it (its goal list
  # is built in SimServer, then shuffled with seed 233): seeded here, every server process (explore and eval
  # hosts, pool workers, a restart) builds the same goals, so a task id means the same task everywhere.
  random.seed(config.get("goal_seed", 0))
  from web_agent_site.envs.web_agent_text_env import WebAgentTextEnv

  envs = {}
  shared = []  # the first env's SimServer, handed to every later env

  def make_env(name):
    kwargs = dict(observation_mode="text", num_products=config.get("num_products"),
                  human_goals=config.get("human_goals", True), session_prefix=name + "-")
    if config.get("file_path"):
      kwargs["file_path"] = config["file_path"]
    if shared:
      kwargs["server"] = shared[0]
    env = WebAgentTextEnv(**kwargs)
    if not shared:
      shared.append(env.server)
    return env

  for line in requests:
    if not line.strip():
      continue
    try:
      request = json.loads(line)
      op, name = request["op"], request.get("env", "")
      if op == "open":
        if name not in envs:
          envs[name] = make_env(name)
        reply = {"ok": True, "goals": len(envs[name].server.goals)}
      elif op == "reset":
        env = envs[name]
        page, _ = env.reset(session=int(request["goal"]))
        reply = {"ok": True, "page": page, "instruction": env.instruction_text,
                 "actions": env.get_available_actions()}
      elif op == "step":
        env = envs[name]
        page, reward, done, _ = env.step(request["action"])
        reply = {"ok": True, "page": page, "reward": float(reward), "done": bool(done),
                 "actions": env.get_available_actions()}
      elif op == "goal":
        goal = envs[name].server.goals[int(request["goal"])]
        options = goal.get("goal_options") or []
        reply = {"ok": True, "asin": goal["asin"], "query": goal.get("query", ""),
                 "instruction": goal["instruction_text"],
                 "options": list(options.values()) if isinstance(options, dict) else list(options)}
      elif op == "close":
        envs.pop(name, None)
        reply = {"ok": True}
      else:
        reply = {"ok": False, "error": f"unknown op {op!r}"}
    except Exception as e:  # every failure goes back to the client, which names the request
      reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()


def main():
  config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
  replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the package's prints (and C libraries') go to stderr
  sys.stdout = sys.stderr
  _serve(config, sys.stdin, replies)


if __name__ == "__main__":
  main()
