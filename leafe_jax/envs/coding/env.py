"""CodingEnv: write a program, get the public tests' feedback, up to `horizon` submissions.

One episode = one problem. The instruction is the problem statement with the submission format (the prompt shows
it once, always); `reset` returns a short "no submission yet" observation; each `step(action)` takes the model's
text (or `parse_action`'s canonical code block), judges its last fenced code block in the sandbox, and returns the
feedback of the PUBLIC tests (pass/fail, the first failing input / expected / got, the error trace, truncated).
Success = every hidden test passes (CodeContests: private + generated tests), which ends the episode with
reward 1. A text without a code block gets a feedback saying so and uses up an attempt. The paper's CodeContests
setting is horizon 4 with rollback only when the budget is exhausted, so `irreversible` is set only then.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from leafe_jax.envs.base import Step
from leafe_jax.envs.coding import judging as judge_lib
from leafe_jax.envs.coding import sandbox as sandbox_lib
from leafe_jax.envs.coding.problems import EXAMPLE_FILES, FORMATS, Problem, load_problems
from leafe_jax.envs.prompts import PromptTemplate

DEFAULT_HORIZON = 4  # LEAFE App. B.3: CodeContests max horizon 4
FEEDBACK_IO_CHARS = 500  # input / expected / got shown per failing test
FEEDBACK_TRACE_CHARS = 1500  # error trace shown (its end)
_PYTHON_TAGS = ("", "python", "python3", "py", "py3")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)

SUBMIT_FORMAT = {
    "stdio": "Write a complete Python 3 program that reads from standard input and writes to standard output.",
    "humaneval": "Write the complete Python function (signature included) and any imports it needs.",
    "mbpp": "Write the Python function(s) the tests call, with any imports they need.",
}
ANSWER_FORMAT = "Put your program in a single ```python ... ``` code block; only the last code block is judged."
NO_SUBMISSION = "No program submitted yet; you have {horizon} attempt(s). Each attempt is judged on the public tests."

# The problem statement is the instruction (shown once, always); observations are the judge's feedback, and
# the actions in the history are the submitted programs. No <action> tags: the program is a fenced code block,
# which a stop string at "</action>" would otherwise cut to its first line.
CODING_TEMPLATE = PromptTemplate(
    system="You are an expert Python programmer. Think about the problem first, then submit one complete program.",
    task_intro="Solve the following programming problem.\n\n{instruction}",
    history_intro="You have already made {step_count} attempt(s). The most recent {num_shown}, with their feedback:",
    history_item="[Feedback before attempt {step}]\n{observation}\n[Your attempt {step}]\n{action}",
    current_observation="[Feedback before attempt {step}]\n{observation}",
    experience=("Advice from reflecting on an earlier attempt at this problem (use it to write a better program):\n"
                "<experience>\n{experience}\n</experience>"),
    output_format=("First reason about the problem and any feedback inside <think> </think> tags. Then give the "
                   "complete program in a single ```python ... ``` code block (only the last code block is judged)."),
)

# For tiny demo models: the statement, the feedback, a LEAFE branch's experience, and a code-block cue.
CODING_COMPACT_TEMPLATE = PromptTemplate(
    task_intro="{instruction}",
    current_observation="{observation}",
    experience="hint: {experience}",
    output_format="```python",
)


def extract_code(text: str) -> str | None:
  """The last fenced Python (or untagged) code block of `text`; an unclosed final fence counts. None if none."""
  blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
  return blocks[-1] if blocks else None


def parse_action(text: str) -> str | None:
  """The action in a model's text: its last Python code block, re-fenced canonically; None without one.

  The coding env's counterpart of `envs.prompts.parse_action` (which reads <action> tags); `step` accepts both
  this canonical form and the raw model text.
  """
  code = extract_code(text or "")
  if code is None:
    return None
  return f"```python\n{code.rstrip()}\n```"


# Problems parsed per (file, format, mtime, size), shared by every env of the process: explore and eval build one
# env per task (and per sample), and re-reading 39 CodeContests parquet shards each time would dominate.
_FILE_CACHE: dict[tuple[str, str, int, int], list[Problem]] = {}


def _load_file_cached(path: str, format: str) -> list[Problem]:
  try:
    stat = os.stat(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"problem file not found: {path}") from None
  key = (os.path.abspath(path), format, stat.st_mtime_ns, stat.st_size)
  if key not in _FILE_CACHE:
    _FILE_CACHE[key] = load_problems(path, format)
  return _FILE_CACHE[key]


class CodingEnv:
  """Programming problems judged in the sandbox (see the module docstring).

  Args:
    format: "codecontests" | "mbpp" | "humaneval".
    problems: a problem file (or glob of shards) for every split, or {split: file or glob}; default the
      shipped example file of `format`.
    horizon: submissions per episode.
    time_limit_s, memory_mb: judge limits (None: the problem's own, else the judge's defaults).
    num_workers: tests run in parallel per judgement.
    isolation: sandbox isolation ("auto" | "namespace" | "userns" | "process").
    compact_prompt: the short prompt template for tiny demo models.
  """

  name = "coding"

  def __init__(self, format: str = "codecontests", problems: str | dict[str, str] | None = None,
               horizon: int = DEFAULT_HORIZON, time_limit_s: float | None = None, memory_mb: int | None = None,
               num_workers: int = 4, isolation: str = "auto", compact_prompt: bool = False):
    if format not in FORMATS:
      raise ValueError(f"coding env: unknown format {format!r}; expected one of {FORMATS}")
    if horizon < 1:
      raise ValueError(f"coding env: horizon must be >= 1, got {horizon}")
    self.format = format
    self.prompt_template = CODING_COMPACT_TEMPLATE if compact_prompt else CODING_TEMPLATE
    self._files = problems if isinstance(problems, dict) else None
    self._file = problems if isinstance(problems, str) else (None if self._files else EXAMPLE_FILES[format])
    self.horizon = horizon
    self.time_limit_s = time_limit_s
    self.memory_mb = memory_mb
    self.num_workers = num_workers
    self._isolation = isolation
    self._sandbox: sandbox_lib.Sandbox | None = None
    self._loaded: dict[str, list[Problem]] = {}
    self._index: dict[str, Problem] = {}  # task id -> problem, over the files loaded so far
    self._problem: Problem | None = None
    self._attempt = 0
    self._done = False

  # ------------------------------------------------------------------------------------------------- tasks

  def _problems(self, path: str) -> list[Problem]:
    """The problems of `path`, or of every file matching it when it is a glob (e.g. sharded parquet)."""
    if path not in self._loaded:
      files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
      if not files:
        raise FileNotFoundError(f"coding env: no problem file matches {path!r}")
      self._loaded[path] = [p for f in files for p in _load_file_cached(f, self.format)]
      self._index.update({p.task_id: p for p in self._loaded[path]})
    return self._loaded[path]

  def _split_file(self, split: str) -> str:
    if self._files is None:
      return self._file
    if split not in self._files:
      raise ValueError(f"coding env: no problem file for split {split!r}; configured: {sorted(self._files)}")
    return self._files[split]

  def tasks(self, split: str) -> list[str]:
    return [p.task_id for p in self._problems(self._split_file(split))]

  def problem(self, task_id: str) -> Problem:
    paths = [self._file] if self._files is None else list(self._files.values())
    for path in paths:
      self._problems(path)
      if task_id in self._index:
        return self._index[task_id]
    raise KeyError(f"coding env: unknown task id {task_id!r} (files: {paths})")

  @property
  def sandbox(self) -> sandbox_lib.Sandbox:
    if self._sandbox is None:
      self._sandbox = (sandbox_lib.default_sandbox() if self._isolation == "auto"
                       else sandbox_lib.Sandbox(isolation=self._isolation))
    return self._sandbox

  # ----------------------------------------------------------------------------------------------- episode

  def reset(self, task_id: str) -> str:
    self._problem = self.problem(task_id)
    self._attempt = 0
    self._done = False
    return NO_SUBMISSION.format(horizon=self.horizon)

  @property
  def instruction(self) -> str:
    if self._problem is None:
      return ""  # before the first reset
    kind = "stdio" if self._problem.io_kind == "stdio" else self._problem.format
    return f"{self._problem.statement}\n\n{SUBMIT_FORMAT[kind]} {ANSWER_FORMAT}"

  def admissible_actions(self) -> list[str] | None:
    return None

  @staticmethod
  def parse_action(text: str) -> str | None:
    return parse_action(text)

  def snapshot(self) -> tuple[str | None, int, bool]:
    """The whole episode state: submissions do not change the problem, so (task, attempts used, done) suffices.

    Restoring is free, whereas reset + replay would judge every replayed program again.
    """
    return (None if self._problem is None else self._problem.task_id, self._attempt, self._done)

  def restore(self, snapshot: tuple[str | None, int, bool]) -> None:
    task_id, self._attempt, self._done = snapshot
    self._problem = None if task_id is None else self.problem(task_id)

  def judge(self, program: str, tests: str = "hidden") -> judge_lib.Verdict:
    """Judges `program` on the current problem with this env's limits."""
    return judge_lib.judge(self._problem, program, tests, self.time_limit_s, self.memory_mb, sandbox=self.sandbox,
                           num_workers=self.num_workers)

  def step(self, action: str) -> Step:
    if self._problem is None:
      raise RuntimeError("coding env: reset(task_id) first")
    if self._done:
      return Step("The episode is over.", 0.0, True, False, {"irreversible": True, "attempt": self._attempt})
    self._attempt += 1
    head = f"Attempt {self._attempt}/{self.horizon}:"
    code = extract_code(action or "")
    info: dict[str, Any] = {"task_id": self._problem.task_id, "attempt": self._attempt, "horizon": self.horizon}
    if code is None:
      observation = f"{head} no code block found. {ANSWER_FORMAT}"
      success = False
      info.update(no_code_block=True, verdict=None)
    else:
      public = self.judge(code, "public")
      hidden = self.judge(code, "hidden")
      success = hidden.passed
      # The stdio judge runs nothing when there are no public tests; the assert harness always runs the program.
      observation = f"{head} {feedback(public, hidden.passed, ran=self._problem.io_kind != 'stdio')}"
      info.update(no_code_block=False, verdict={"public": public.summary(), "hidden": hidden.summary()})
    self._done = success or self._attempt >= self.horizon
    info["irreversible"] = self._done and not success
    return Step(observation, 1.0 if success else 0.0, self._done, success, info)


def feedback(public: judge_lib.Verdict, hidden_passed: bool, ran: bool = True) -> str:
  """The agent-facing text for one submission: public tests only (plus whether the hidden tests passed).

  `ran`: whether the public judging ran the program at all (False: a stdio problem without public tests)."""
  n = len(public.results)
  if public.passed:
    if hidden_passed:
      return "accepted: the program passed all tests."
    if n == 0 and not ran:
      return "this problem has no public tests, and the program failed the hidden tests."
    if n == 0:
      return "the program ran without errors (this problem has no public tests), but it failed the hidden tests."
    return f"the program passed all {n} public tests, but it failed the hidden tests."
  failure = public.first_failure
  if failure is None or failure.index < 0:
    return f"{public.status.replace('_', ' ')}.\n{_cut(public.error, FEEDBACK_TRACE_CHARS, tail=True)}"
  lines = [f"failed public test {failure.index + 1} of {n}: {failure.status.replace('_', ' ')}."]
  label = "Test" if failure.input.lstrip().startswith("assert") or not failure.expected else "Input"
  lines += [f"{label}:", _cut(failure.input, FEEDBACK_IO_CHARS)]
  if failure.expected:
    lines += ["Expected output:" if label == "Input" else "Expected:", _cut(failure.expected, FEEDBACK_IO_CHARS)]
  if failure.status == judge_lib.WRONG_ANSWER or failure.got:
    lines += ["Your output:" if label == "Input" else "Got:", _cut(failure.got, FEEDBACK_IO_CHARS) or "(empty)"]
  # A wrong answer with both sides shown needs no AssertionError trace.
  if failure.error and not (failure.status == judge_lib.WRONG_ANSWER and failure.expected):
    lines += ["Error:", _cut(failure.error, FEEDBACK_TRACE_CHARS, tail=True)]
  return "\n".join(lines)


def _cut(text: str, limit: int, tail: bool = False) -> str:
  return judge_lib.truncate(text.rstrip("\n"), limit, keep="tail" if tail else "head")
