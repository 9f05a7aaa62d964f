"""WebShop (Yao et al. 2022) through the princeton-nlp package (`web_agent_site`), text mode.

WebShop pins old packages (Flask, gym, torch, pyserini + Java) and usually lives in its own Python environment,
so the package runs in a server process under that environment's interpreter (`python`, default this one):
`server.py` next to this file, standard library + `web_agent_site` only. Every WebShopEnv of a process shares
one server (one copy of the product catalogue and search index) and keeps its own browser session on it.

Task ids are goal indices into the package's goal list (shuffled by the package with its fixed seed), as
decimal strings. Splits are WebShop's own (its `baseline_models`, and the 500-task test set the LEAFE paper
reports): test = goals 0-499, dev = 500-1499, train = 1500 onwards. An episode ends when the agent clicks
"Buy Now" (reward = the package's attribute/option/price score in [0, 1]) or at `max_steps`; success is a
score of 1, as verl-agent counts a WebShop win. Rollback is reset + replay (the package has no state
save/restore), checked against the recorded pages.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import threading
from typing import Any

from leafe_jax.envs.base import INVALID_ACTION, Step
from leafe_jax.envs.prompts import PromptTemplate, parse_action

logger = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 15  # verl-agent's WebShop episode limit (also the paper notes' horizon for WebShop)
SPLITS = {"test": (0, 500), "dev": (500, 1500), "train": (1500, None)}  # WebShop's own goal ranges
SUCCESS_SCORE = 1.0  # a purchase matching every attribute, option and the price limit
SEARCH_TEMPLATE = "search[<your query>]"  # how the admissible list shows the free-text search
SERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
# Seeds the package's global `random` before it builds its goals (it draws each human goal's price limit from
# it), so every server process has the same goal list: a task id means one task on every host.
DEFAULT_GOAL_SEED = 0
EXPERT_RESULT_PAGES = 5  # [ours] result pages the expert looks through for the target product
DEFAULT_START_TIMEOUT_S = 1800.0  # loading the full catalogue and index takes minutes
DEFAULT_REQUEST_TIMEOUT_S = 300.0  # one search or click
_SEP = " [SEP] "
INSTRUCTION_HEADING = "Instruction:"  # how the package's instruction text (and every page) starts
_ACTION = re.compile(r"^\s*(search|click)\s*\[(.*)\]\s*$", re.IGNORECASE | re.DOTALL)

WEBSHOP_TEMPLATE = PromptTemplate(
    system="You are an expert agent shopping on the WebShop e-commerce website.",
    task_intro="Your task is to: {instruction}",
    first_step="You have not taken any action yet.",
    history_intro=("Prior to this step, you have already taken {step_count} step(s). Below are the most recent "
                   "{num_shown} page(s) and the action you took on each:"),
    history_item="[Page {step}]\n{observation}\n[Action {step}]: {action}",
    current_observation="You are now at step {step}. The current page:\n{observation}",
    admissible_actions="Your admissible actions on this page are: [{actions}].",
    experience=("Advice from reflecting on an earlier attempt at this task:\n<experience>\n{experience}\n"
                "</experience>"),
    output_format=("First reason step-by-step about the page inside <think> </think> tags. Then give exactly one "
                   "action inside <action> </action> tags: search[your query] when there is a search box, or "
                   "click[one of the clickable items]."),
)


class WebShopServerError(RuntimeError):
  """The WebShop server process failed to start, died, or answered a request with an error."""


def page_text(page: str, instruction: str) -> str:
  """The page without WebShop's header (site name and the instruction, which the prompt shows once)."""
  parts = page.split(_SEP)
  if instruction in parts:
    parts = parts[parts.index(instruction) + 1:]
  return _SEP.join(parts)


def available_actions(actions: dict[str, Any]) -> list[str]:
  """The package's {"has_search_bar", "clickables"} as action strings."""
  listed = [SEARCH_TEMPLATE] if actions.get("has_search_bar") else []
  # The search page's "Search" button is a clickable the package refuses to click (searching is search[...]).
  return listed + [f"click[{c}]" for c in actions.get("clickables", []) if c != "search"]


def written_action(candidate: str) -> str | None:
  """`search[q]` with a non-empty query, or `click[x]` in the package's spelling (lower case, as it matches
  clickables), whatever the page; None for anything else."""
  match = _ACTION.match(candidate)
  if match is None:
    return None
  verb, argument = match.group(1).lower(), match.group(2).strip()
  if verb == "search":
    action = f"search[{argument}]"
    return action if argument and action != SEARCH_TEMPLATE else None
  return f"click[{argument.lower()}]" if argument else None


def canonical_action(candidate: str, actions: dict[str, Any]) -> str | None:
  """`written_action(candidate)` if this page offers it: a search box for `search[q]`, `x` among the clickables
  for `click[x]`; None otherwise."""
  action = written_action(candidate)
  if action is None:
    return None
  if action.startswith("search["):
    return action if actions.get("has_search_bar") else None
  clickable = action[len("click["):-1]
  return action if clickable in actions.get("clickables", []) and clickable != "search" else None


class _Server:
  """One WebShop server process; requests are serialised (one env at a time talks to it)."""

  def __init__(self, python: str, webshop_root: str | None, config: dict[str, Any], request_timeout_s: float):
    self.python, self.webshop_root = python, webshop_root
    env = dict(os.environ)
    if webshop_root:
      env["PYTHONPATH"] = os.pathsep.join(p for p in (webshop_root, env.get("PYTHONPATH", "")) if p)
    self.stderr_lines: list[str] = []
    # Run from the checkout: the package and this config name data files relative to it.
    self.process = subprocess.Popen([python, SERVER_SCRIPT, json.dumps(config)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=webshop_root or None, env=env, bufsize=1)
    # stderr is drained continuously (a full pipe would block the server) and its tail kept for errors.
    self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
    self._drainer.start()
    self.request_timeout_s = request_timeout_s
    self.lock = threading.Lock()

  def _drain_stderr(self) -> None:
    for line in self.process.stderr:
      self.stderr_lines = (self.stderr_lines + [line.rstrip("\n")])[-40:]

  def alive(self) -> bool:
    return self.process.poll() is None

  def request(self, payload: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    with self.lock:
      if not self.alive():
        raise WebShopServerError(self._died(payload))
      try:
        self.process.stdin.write(json.dumps(payload) + "\n")
        self.process.stdin.flush()
      except (BrokenPipeError, OSError) as e:
        raise WebShopServerError(self._died(payload)) from e
      line = _readline(self.process.stdout, timeout_s or self.request_timeout_s)
      if line is None:
        self.process.kill()
        raise WebShopServerError(f"WebShop server: no answer to {payload['op']} within "
                                 f"{timeout_s or self.request_timeout_s:.0f} s; killed it")
      if not line:
        raise WebShopServerError(self._died(payload))
    reply = json.loads(line)
    if not reply.get("ok"):
      raise WebShopServerError(f"WebShop server: {payload} failed: {reply.get('error')}\n"
                               f"{reply.get('traceback', '')}")
    return reply

  def _died(self, payload: dict[str, Any]) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):  # its stdout closed: it is exiting
      self.process.wait(timeout=10)
    self._drainer.join(timeout=5)  # the rest of its stderr
    tail = "\n".join(self.stderr_lines[-15:])
    hint = ("" if "web_agent_site" not in tail else
            f"\n(is WebShop installed for {self.python}? set webshop_root to the WebShop checkout and python to "
            "the interpreter of its environment)")
    return (f"WebShop server ({self.python} {SERVER_SCRIPT}) exited with code {self.process.returncode} "
            f"during {payload['op']}; its stderr ends with:\n{tail}{hint}")


def _readline(stream, timeout_s: float) -> str | None:
  """One line from `stream`, "" at EOF, None when nothing came within `timeout_s`."""
  result: list[str] = []
  reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
  reader.start()
  reader.join(timeout_s)
  return result[0] if result else None


_SERVERS: dict[str, _Server] = {}  # one per (python, root, catalogue config) in this process
_SERVERS_LOCK = threading.Lock()
_ENV_IDS = itertools.count()


@atexit.register
def _stop_servers() -> None:
  """Closes every server's stdin (it exits at EOF) when this process ends; no request at shutdown."""
  for server in _SERVERS.values():
    with contextlib.suppress(OSError):
      server.process.stdin.close()


def _server_for(python: str, webshop_root: str | None, config: dict[str, Any], request_timeout_s: float) -> _Server:
  key = json.dumps([python, webshop_root, config], sort_keys=True)
  with _SERVERS_LOCK:
    server = _SERVERS.get(key)
    if server is None or not server.alive():
      server = _SERVERS[key] = _Server(python, webshop_root, config, request_timeout_s)
    return server


class WebShopEnv:
  """The Env protocol over WebShop's `WebAgentTextEnv` (text observation mode).

  Config: webshop_root (the WebShop checkout: its `data/` and `search_engine/indexes`; default $WEBSHOP_ROOT),
  python (the interpreter that has WebShop's requirements; default $WEBSHOP_PYTHON, else this one), file_path
  (the product file, relative to webshop_root; None = the package default, data/items_shuffle_1000.json),
  human_goals (the human-written instructions of the standard benchmark; False = synthetic goals), num_products
  (None = the whole file), max_steps, goal_seed (seeds the package's goal building: the same goals in every
  process), start_timeout_s (first answer: loading the catalogue), request_timeout_s.
  """

  name = "webshop"
  prompt_template = WEBSHOP_TEMPLATE

  def __init__(self, webshop_root: str | None = None, python: str | None = None, file_path: str | None = None,
               human_goals: bool = True, num_products: int | None = None, max_steps: int = DEFAULT_MAX_STEPS,
               goal_seed: int = DEFAULT_GOAL_SEED,
               start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S, **unknown: Any):
    if unknown:
      raise ValueError(f"unknown webshop config keys: {sorted(unknown)}")
    self.webshop_root = webshop_root or os.environ.get("WEBSHOP_ROOT") or None
    self.python = python or os.environ.get("WEBSHOP_PYTHON") or sys.executable
    self._config = {"file_path": file_path, "human_goals": bool(human_goals), "num_products": num_products,
                    "goal_seed": int(goal_seed)}
    self._timeouts = (start_timeout_s, request_timeout_s)
    self.max_steps = max_steps
    self.server_restarts = 0
    self._env_id = f"e{os.getpid()}-{next(_ENV_IDS)}"
    self._server: _Server | None = None
    self._num_goals = 0
    self._goal: int | None = None
    self._instruction = ""
    self._actions: dict[str, Any] = {}
    self._taken: list[str] = []
    self._steps = 0
    self._done = False

  # --- server --------------------------------------------------------------------------------------------------
  def _connect(self) -> _Server:
    if self._server is None or not self._server.alive():
      self._server = _server_for(self.python, self.webshop_root, self._config, self._timeouts[1])
      reply = self._server.request({"op": "open", "env": self._env_id}, timeout_s=self._timeouts[0])
      self._num_goals = int(reply["goals"])
    return self._server

  def _request(self, payload: dict[str, Any]) -> dict[str, Any]:
    """Sends one request. A server that died (or was replaced after another env saw it die) is started anew
    once, and the current episode is replayed on it before the request is retried."""
    payload = {**payload, "env": self._env_id}
    server = self._server
    if server is not None and server.alive():
      try:
        return server.request(payload)
      except WebShopServerError:
        if server.alive():
          raise  # the server answered with an error: a restart would not change it
    if server is not None:
      logger.warning("WebShop server died; starting a new one and replaying the episode (%d steps)",
                     len(self._taken))
      self.server_restarts += 1
    self._server = None
    server = self._connect()
    if self._goal is not None and payload["op"] == "step":
      server.request({"op": "reset", "env": self._env_id, "goal": self._goal})
      for action in self._taken:
        server.request({"op": "step", "env": self._env_id, "action": action})
    return server.request(payload)

  def close(self) -> None:
    if self._server is not None and self._server.alive():
      self._server.request({"op": "close", "env": self._env_id})
    self._server = None

  # --- Env protocol --------------------------------------------------------------------------------------------
  def tasks(self, split: str) -> list[str]:
    if split not in SPLITS:
      raise ValueError(f"unknown WebShop split {split!r}; expected one of {tuple(SPLITS)}")
    self._connect()
    start, stop = SPLITS[split]
    return [str(i) for i in range(start, min(stop or self._num_goals, self._num_goals))]

  def reset(self, task_id: str) -> str:
    if not task_id.isdigit():
      raise ValueError(f"WebShop task id {task_id!r} is not a goal index (a decimal number, e.g. '17')")
    self._connect()
    if int(task_id) >= self._num_goals:
      raise ValueError(f"WebShop task id {task_id!r} is out of range: the package has {self._num_goals} goals")
    self._goal = None  # nothing to replay if the server dies during the reset
    reply = self._request({"op": "reset", "goal": int(task_id)})
    self._goal, self._taken, self._steps, self._done = int(task_id), [], 0, False
    # The package's instruction text is the page's "Instruction: ..." heading; the prompt shows the task itself.
    self._instruction = reply["instruction"].strip().removeprefix(INSTRUCTION_HEADING).strip()
    self._actions = reply["actions"]
    return page_text(reply["page"], self._instruction)

  def step(self, action: str) -> Step:
    if self._goal is None:
      raise RuntimeError("WebShopEnv.step before reset")
    if self._done:
      return Step("The episode is over.", 0.0, True, False, {"score": 0.0, "irreversible": False})
    self._steps += 1
    truncated = self._steps >= self.max_steps
    command = canonical_action(action, self._actions)
    if command is None:
      self._done = truncated
      choices = ", ".join(available_actions(self._actions))
      return Step(f"{INVALID_ACTION} Choose one of: {choices}.", 0.0, self._done, False,
                  {"score": 0.0, "irreversible": False, "truncated": truncated, "invalid": True})
    reply = self._request({"op": "step", "action": command})
    self._taken.append(command)
    self._actions = reply["actions"]
    score, purchased = float(reply["reward"]), bool(reply["done"])
    self._done = purchased or truncated
    # A purchase ends the episode whatever the score: a wrong purchase cannot be undone.
    return Step(page_text(reply["page"], self._instruction), score, self._done, purchased and score >= SUCCESS_SCORE,
                {"score": score, "irreversible": purchased and score < SUCCESS_SCORE,
                 "truncated": truncated and not purchased})

  @property
  def instruction(self) -> str:
    return self._instruction

  def admissible_actions(self) -> list[str] | None:
    return available_actions(self._actions)

  def gold_actions(self, task_id: str) -> list[str]:
    """An expert for Early Experience: with the goal's target product and options (from the package's goal
    record), search for the instruction, page through the results to the target, click each goal option the
    page offers, buy. Plays the episode to find the path (reset afterwards); the caller checks it succeeds
    (the price limit and the search engine decide). EE's own WebShop expert was human demonstrations."""
    self.reset(task_id)
    goal = self._request({"op": "goal", "goal": int(task_id)})
    self.step(f"search[{self._instruction}]")
    target = f"click[{goal['asin'].lower()}]"
    for _ in range(EXPERT_RESULT_PAGES):
      if target in self.admissible_actions() or "click[next >]" not in self.admissible_actions():
        break
      self.step("click[next >]")
    if target in self.admissible_actions():  # else not found: the episode fails, and the caller drops the task
      self.step(target)
      for option in goal["options"]:
        click = f"click[{str(option).strip().replace('/', ' | ').lower()}]"  # the package's option spelling
        if click in self.admissible_actions():
          self.step(click)
      self.step("click[buy now]")
    return list(self._taken)  # every action above was offered by its page, so each was executed

  @staticmethod
  def parse_action(text: str) -> str | None:
    """The action in a model's text (its `<action>` block, else its first line) as `search[q]` / `click[x]`, or
    None. Whether the page offers it is checked by `step` (a static function, so it crosses an EnvPool)."""
    candidate = parse_action(text, None)
    if candidate is None:  # no tag: the text itself may be a bare action
      candidate = text.strip().splitlines()[0] if text.strip() else ""
    return written_action(candidate)
