"""Judging a program against a problem's tests in the sandbox.

Output comparison (stdin/stdout problems) follows the deepmind/code_contests evaluator
(`execution/tester_sandboxer.cc`, `OutputsMatch`): both outputs are split on whitespace (space, \\n, \\t, \\r, \\v),
empty tokens dropped, tokens lower-cased; equal token lists pass; otherwise the lists must have the same length and
every token pair must match: if either token is not a number, exactly; if either is a non-integer number, within
an absolute difference < 1e-5; two integers, exactly (we compare integers of any size exactly; the original
parses 32-bit integers only and compares larger ones as doubles).

Assert-style problems (MBPP, HumanEval) run in one process: the program, then MBPP's `test_setup_code`, then each
test in order. The harness reports per test on stdout behind a per-run secret token read from stdin, and a run
counts only if the harness reached its end, so a program that exits early (`sys.exit(0)`, `os._exit(0)`) fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import secrets
from typing import Any

from leafe_jax.envs.coding import sandbox as sandbox_lib
from leafe_jax.envs.coding.problems import Problem, TestCase

DEFAULT_TIME_LIMIT_S = 4.0  # per stdin/stdout test, or per assert-style run, when the problem gives none
DEFAULT_MEMORY_MB = 512
FLOAT_TOLERANCE = 1e-5  # absolute, as deepmind/code_contests OutputsMatch
TRACE_MAX_CHARS = 2000  # tracebacks kept in a Verdict (the end of the trace, where the error is)
IO_MAX_CHARS = 1000  # input / expected / got kept per test result
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")

# Test statuses (CodeContests / Codeforces vocabulary).
ACCEPTED = "accepted"
WRONG_ANSWER = "wrong_answer"
RUNTIME_ERROR = "runtime_error"
TIME_LIMIT = "time_limit_exceeded"
MEMORY_LIMIT = "memory_limit_exceeded"
OUTPUT_LIMIT = "output_limit_exceeded"
SKIPPED = "skipped"  # not run: an earlier test failed (stop on first failure)
SANDBOX_ERROR = "sandbox_error"


@dataclasses.dataclass(frozen=True)
class TestResult:
  """The outcome of one test."""

  __test__ = False  # not a pytest class

  index: int  # position in the judged test list
  status: str
  input: str = ""  # stdin, or the assert's source
  expected: str = ""
  got: str = ""
  error: str = ""  # truncated traceback / reason
  time_s: float = 0.0

  @property
  def passed(self) -> bool:
    return self.status == ACCEPTED


@dataclasses.dataclass(frozen=True)
class Verdict:
  """The outcome of judging one program on a list of tests."""

  passed: bool
  status: str  # ACCEPTED, or the status of the first failing test
  results: tuple[TestResult, ...]
  tests: str  # which tests were judged: "hidden" | "public" | "all"
  error: str = ""  # error (truncated trace) of the first failure, if any
  time_s: float = 0.0

  @property
  def first_failure(self) -> TestResult | None:
    return next((r for r in self.results if not r.passed and r.status != SKIPPED), None)

  @property
  def num_passed(self) -> int:
    return sum(r.passed for r in self.results)

  def summary(self) -> dict[str, Any]:
    """A small JSON-able dict for `info` and logs."""
    return {"passed": self.passed, "status": self.status, "num_passed": self.num_passed,
            "num_tests": len(self.results), "tests": self.tests}


def outputs_match(got: str, expected: str) -> bool:
  """CodeContests output equality (see the module docstring)."""
  a, b = got.lower().split(), expected.lower().split()
  if a == b:
    return True
  return len(a) == len(b) and all(_tokens_match(x, y) for x, y in zip(a, b))


def _tokens_match(a: str, b: str) -> bool:
  if not (_NUMBER.fullmatch(a) and _NUMBER.fullmatch(b)):
    return a == b
  if _INTEGER.fullmatch(a) and _INTEGER.fullmatch(b):
    return int(a) == int(b)
  x, y = float(a), float(b)
  return math.isfinite(x) and math.isfinite(y) and abs(x - y) < FLOAT_TOLERANCE


def select_tests(problem: Problem, tests: str) -> tuple[TestCase, ...]:
  if tests == "hidden":
    return problem.hidden_tests
  if tests == "public":
    return problem.public_tests
  if tests == "all":
    return problem.public_tests + tuple(t for t in problem.hidden_tests if t not in problem.public_tests)
  raise ValueError(f"tests must be hidden|public|all, got {tests!r}")


def judge(problem: Problem, program: str, tests: str = "hidden", time_limit_s: float | None = None,
          memory_mb: int | None = None, *, sandbox: sandbox_lib.Sandbox | None = None, num_workers: int = 4,
          stop_on_first_failure: bool = True) -> Verdict:
  """Runs `program` on the problem's `tests` and returns the verdict.

  `time_limit_s` is per test for stdin/stdout problems and for the whole run for assert-style problems (default:
  the problem's own limit, else DEFAULT_TIME_LIMIT_S). HumanEval programs are the complete function source.
  """
  sandbox = sandbox or sandbox_lib.default_sandbox()
  cases = select_tests(problem, tests)
  limits = sandbox_lib.Limits(wall_time_s=time_limit_s or problem.time_limit_s or DEFAULT_TIME_LIMIT_S,
                              memory_mb=memory_mb or problem.memory_mb or DEFAULT_MEMORY_MB)
  if not cases and problem.io_kind == "stdio":
    return Verdict(True, ACCEPTED, (), tests)
  if problem.io_kind == "stdio":
    results = _judge_stdio(sandbox, program, cases, limits, num_workers, stop_on_first_failure)
  else:
    results = _judge_asserts(sandbox, problem, program, cases, limits, stop_on_first_failure)
  failure = next((r for r in results if not r.passed and r.status != SKIPPED), None)
  return Verdict(passed=failure is None and all(r.passed for r in results),
                 status=ACCEPTED if failure is None else failure.status, results=tuple(results), tests=tests,
                 error=failure.error if failure else "", time_s=sum(r.time_s for r in results))


def truncate(text: str, limit: int, keep: str = "head") -> str:
  """`text` cut to about `limit` characters, saying how much was cut."""
  if len(text) <= limit:
    return text
  cut = len(text) - limit
  if keep == "tail":
    return f"...[{cut} characters cut]...\n{text[-limit:]}"
  return f"{text[:limit]}\n...[{cut} characters cut]..."


def _run_status(run: sandbox_lib.RunResult) -> str:
  if run.status == sandbox_lib.STATUS_TIMEOUT:
    return TIME_LIMIT
  if run.status == sandbox_lib.STATUS_OUTPUT_LIMIT:
    return OUTPUT_LIMIT
  if run.status == sandbox_lib.STATUS_SANDBOX_ERROR:
    return SANDBOX_ERROR
  if "MemoryError" in run.stderr[-2000:]:
    return MEMORY_LIMIT
  return RUNTIME_ERROR


def _run_error(run: sandbox_lib.RunResult) -> str:
  text = run.stderr.strip()
  if run.detail:
    text = f"{text}\n{run.detail}".strip()
  elif run.status != sandbox_lib.STATUS_OK and run.returncode and not text:
    text = f"exit status {run.returncode}"
  return truncate(text, TRACE_MAX_CHARS, keep="tail")


def _judge_stdio(sandbox: sandbox_lib.Sandbox, program: str, cases: tuple[TestCase, ...],
                 limits: sandbox_lib.Limits, num_workers: int, stop_on_first_failure: bool) -> list[TestResult]:
  jobs = [sandbox_lib.Job(source=program, stdin=c.input) for c in cases]

  def failed(run: sandbox_lib.RunResult) -> bool:
    return stop_on_first_failure and not run.ok  # wrong answers are checked below, after the run

  def job_passed(i: int, run: sandbox_lib.RunResult) -> bool:
    return run.ok and outputs_match(run.stdout, cases[i].output)

  runs: list[sandbox_lib.RunResult | None] = [None] * len(jobs)
  # Tests run in waves of `num_workers` so that a wrong answer also stops the remaining tests early.
  for start in range(0, len(jobs), max(1, num_workers)):
    wave = sandbox.run_many(jobs[start:start + num_workers], limits, num_workers, stop=failed)
    runs[start:start + len(wave)] = wave
    if stop_on_first_failure and any(r is None or not job_passed(start + k, r) for k, r in enumerate(wave)):
      break
  results = []
  for i, (case, run) in enumerate(zip(cases, runs)):
    base = dict(index=i, input=truncate(case.input, IO_MAX_CHARS), expected=truncate(case.output, IO_MAX_CHARS))
    if run is None:
      results.append(TestResult(status=SKIPPED, **base))
      continue
    got = truncate(run.stdout, IO_MAX_CHARS)
    if run.ok:
      status = ACCEPTED if outputs_match(run.stdout, case.output) else WRONG_ANSWER
      results.append(TestResult(status=status, got=got, time_s=run.wall_s, **base))
    else:
      results.append(TestResult(status=_run_status(run), got=got, error=_run_error(run), time_s=run.wall_s, **base))
  return results


# The assert-style harness. It reads a secret token from stdin, runs the program and the tests from files in
# its directory (so tracebacks show their lines), and reports each step on stdout behind the token.
_HARNESS = r"""
import ast, json, linecache, os, sys, traceback

def _leafe_harness():
  token = sys.stdin.readline().strip()
  # The program must not read the token back: stdin is replaced by /dev/null before it runs.
  null = os.open(os.devnull, os.O_RDONLY)
  os.dup2(null, 0)
  os.close(null)
  out = sys.stdout
  def emit(**obj):
    out.write("\n" + token + json.dumps(obj) + "\n")
    out.flush()
  spec = json.load(open("tests.json"))
  # Every source is read before the program runs (it could rewrite the files). The test files are then deleted
  # and their lines reach linecache only while a traceback is formatted: a program must not read the tests'
  # expected values (from the directory or from linecache) and return them.
  sources, hidden = {}, {}
  for path in ["solution.py", "setup.py"] + [f"test_{i}.py" for i in range(spec["num_tests"])]:
    sources[path] = open(path).read()
    entry = (len(sources[path]), None, sources[path].splitlines(True), path)
    if path.startswith("test_"):
      hidden[path] = entry
      os.remove(path)
    else:
      linecache.cache[path] = entry
  namespace = {"__name__": "__main__", "__builtins__": __builtins__}
  def trace():
    # The traceback without the harness' own frame, its last 8 frames at most.
    e = sys.exc_info()[1]
    linecache.cache.update(hidden)
    try:
      return "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next, limit=-8))
    finally:
      for path in hidden:
        linecache.cache.pop(path, None)
  for phase, path in (("program", "solution.py"), ("setup", "setup.py")):
    try:
      exec(compile(sources[path], path, "exec"), namespace)
    except BaseException:
      emit(phase=phase, error=trace())
      return
  for i in range(spec["num_tests"]):
    path = f"test_{i}.py"
    emit(start=i)
    try:
      exec(compile(sources[path], path, "exec"), namespace)
      emit(test=i, passed=True)
    except BaseException as e:
      got = expected = None
      if isinstance(e, AssertionError):
        try:  # `assert left == right`: report both sides
          node = ast.parse(sources[path]).body[-1]
          if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1:
            got = repr(eval(compile(ast.Expression(node.test.left), path, "eval"), namespace))
            expected = repr(eval(compile(ast.Expression(node.test.comparators[0]), path, "eval"), namespace))
        except BaseException:
          pass
      emit(test=i, passed=False, error=trace(), got=got, expected=expected)
      if spec["stop_on_first_failure"]:
        break
  emit(done=True)

_leafe_harness()
"""


def _judge_asserts(sandbox: sandbox_lib.Sandbox, problem: Problem, program: str, cases: tuple[TestCase, ...],
                   limits: sandbox_lib.Limits, stop_on_first_failure: bool) -> list[TestResult]:
  token = f"@@leafe-{secrets.token_hex(16)}@@"
  files = [("solution.py", program), ("setup.py", problem.test_setup_code),
           ("tests.json", json.dumps({"num_tests": len(cases), "stop_on_first_failure": stop_on_first_failure}))]
  files += [(f"test_{i}.py", c.code) for i, c in enumerate(cases)]
  run = sandbox.run(_HARNESS, stdin=token + "\n", limits=limits, files=files)
  events, program_output = [], []
  for line in run.stdout.split("\n"):
    if line.startswith(token):
      with contextlib.suppress(json.JSONDecodeError):
        events.append(json.loads(line[len(token):]))
    else:
      program_output.append(line)
  per_test: dict[int, TestResult] = {}
  running, done, phase_error = None, False, None
  for ev in events:
    if "phase" in ev:
      phase_error = ev
    elif "start" in ev:
      running = ev["start"]
    elif "test" in ev:
      i = ev["test"]
      running = None
      error = ev.get("error", "")
      status = ACCEPTED if ev["passed"] else WRONG_ANSWER if "AssertionError" in error else RUNTIME_ERROR
      if status == RUNTIME_ERROR and "MemoryError" in ev.get("error", ""):
        status = MEMORY_LIMIT
      per_test[i] = TestResult(i, status, input=truncate(cases[i].code, IO_MAX_CHARS),
                               expected=truncate(ev.get("expected") or "", IO_MAX_CHARS),
                               got=truncate(ev.get("got") or "", IO_MAX_CHARS),
                               error=truncate(ev.get("error", ""), TRACE_MAX_CHARS, keep="tail"))
    elif ev.get("done"):
      done = True
  results = []
  for i, case in enumerate(cases):
    if i in per_test:
      results.append(per_test[i])
      continue
    code = truncate(case.code, IO_MAX_CHARS)
    if phase_error is not None and not results:
      status = RUNTIME_ERROR if "MemoryError" not in phase_error["error"] else MEMORY_LIMIT
      where = "the program" if phase_error["phase"] == "program" else "the test setup code"
      error = truncate(f"error while running {where}:\n{phase_error['error']}", TRACE_MAX_CHARS, keep="tail")
      results.append(TestResult(i, status, input=code, error=error))
    elif not done and (running == i or (running is None and not results and not per_test and phase_error is None)):
      status = _run_status(run) if not run.ok else RUNTIME_ERROR
      error = _run_error(run) if not run.ok else "the program exited before the tests finished"
      results.append(TestResult(i, status, input=code, error=error, got=truncate("\n".join(program_output).strip(),
                                                                                  IO_MAX_CHARS)))
    else:
      results.append(TestResult(i, SKIPPED, input=code))
  if not cases and (phase_error is not None or not done):
    # No tests, but the program itself failed to load: a pseudo-test with index -1 carries the error.
    if phase_error is not None:
      status = MEMORY_LIMIT if "MemoryError" in phase_error["error"] else RUNTIME_ERROR
      error = truncate(phase_error["error"], TRACE_MAX_CHARS, keep="tail")
    else:
      status = _run_status(run) if not run.ok else RUNTIME_ERROR
      error = _run_error(run) if not run.ok else "the program exited before the harness finished"
    results.append(TestResult(-1, status, error=error))
  if results:  # one process ran all tests: charge its wall time to the first result
    results[0] = dataclasses.replace(results[0], time_s=run.wall_s)
  return results
