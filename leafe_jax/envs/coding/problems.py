"""Coding problems: one `Problem` type, loaded from CodeContests, MBPP or HumanEval files.

Formats (one JSON object per line in `.jsonl`; CodeContests also as `.parquet`, read with pyarrow):
- "codecontests" (deepmind/code_contests): `name`, `description`, `public_tests`, `private_tests`,
  `generated_tests` (each `{"input": [...], "output": [...]}`), optional `solutions`
  (`{"language": [...], "solution": [...]}`, language 3 or "PYTHON3" = Python 3), optional `time_limit`
  (`{"seconds", "nanos"}`) and `memory_limit_bytes`. Hidden tests = private + generated (public when both are
  empty). Tests are stdin/stdout.
- "mbpp": `task_id`, `text`, `code`, `test_list`, `test_setup_code`, `challenge_test_list` (the "sanitized"
  release's `prompt` and `test_imports` are read too). Statement = text +
  the `test_list` asserts (the MBPP prompt); public tests = `test_list`; hidden = `test_list` +
  `challenge_test_list`.
- "humaneval": `task_id`, `prompt`, `entry_point`, `canonical_solution`, `test` (defines `check(candidate)`).
  The program is the complete function source (prompt + completion). Hidden test = `check(entry_point)`;
  public tests = the `>>>` examples of the prompt's docstring, where it has them.
"""

from __future__ import annotations

import dataclasses
import doctest
import json
import os
from collections.abc import Iterator
from typing import Any

FORMATS = ("codecontests", "mbpp", "humaneval")
# deepmind/code_contests `Language` enum values that are Python 3.
_PYTHON3 = (3, "PYTHON3", "python3")
_DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
EXAMPLE_FILES = {fmt: os.path.join(_DATA_DIR, f"{fmt}_example.jsonl") for fmt in FORMATS}


class ProblemFormatError(ValueError):
  """A problem file that does not match its format; the message names file, record and field."""


@dataclasses.dataclass(frozen=True)
class TestCase:
  """A stdin/stdout test (`input`, `output`) or an assert-style test (`code`, run after the program)."""

  __test__ = False  # not a pytest class

  input: str = ""
  output: str = ""
  code: str = ""


@dataclasses.dataclass(frozen=True)
class Problem:
  """One programming problem in any of the supported formats."""

  task_id: str
  format: str  # "codecontests" | "mbpp" | "humaneval"
  statement: str  # what the agent is shown
  public_tests: tuple[TestCase, ...]
  hidden_tests: tuple[TestCase, ...]
  reference_solution: str | None = None  # a complete program that passes, where the data has one
  test_setup_code: str = ""  # MBPP: run after the program, before the asserts
  entry_point: str = ""  # HumanEval: the function `check` is called with
  time_limit_s: float | None = None  # from the data (CodeContests); None = the judge's default
  memory_mb: int | None = None
  source: str = ""  # "file:line" of the record

  @property
  def io_kind(self) -> str:
    """"stdio" (program reads stdin, writes stdout) or "assert" (tests are Python code)."""
    return "stdio" if self.format == "codecontests" else "assert"


def load_problems(path: str, format: str = "codecontests") -> list[Problem]:
  """Loads every problem of `path` (.jsonl, or .parquet for CodeContests) in file order."""
  if format not in FORMATS:
    raise ValueError(f"unknown problem format {format!r}; expected one of {FORMATS}")
  parse = {"codecontests": _codecontests, "mbpp": _mbpp, "humaneval": _humaneval}[format]
  problems, seen = [], {}
  for where, record in _records(path):
    problem = parse(record, where)
    if problem.task_id in seen:
      raise ProblemFormatError(f"{where}: duplicate task id {problem.task_id!r} (first at {seen[problem.task_id]})")
    seen[problem.task_id] = where
    problems.append(problem)
  return problems


def _records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"problem file not found: {path}")
  if path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq
    except ImportError as e:
      raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from e
    for i, row in enumerate(pq.read_table(path).to_pylist()):
      yield f"{path}:row {i}", row
    return
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ProblemFormatError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise ProblemFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
      yield where, record


def _field(record: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
  if name not in record or record[name] is None:
    if default is ...:
      raise ProblemFormatError(f"{where}: missing field {name!r}")
    return default
  value = record[name]
  if not isinstance(value, kind):
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    raise ProblemFormatError(f"{where}: field {name!r} must be {names}, got {type(value).__name__}")
  return value


def _str_list(record: dict[str, Any], name: str, where: str, default: Any = ...) -> list[str]:
  values = _field(record, name, list, where, default)
  for i, v in enumerate(values):
    if not isinstance(v, str):
      raise ProblemFormatError(f"{where}: field {name!r}[{i}] must be str, got {type(v).__name__}")
  return values


def _io_tests(record: dict[str, Any], name: str, where: str) -> tuple[TestCase, ...]:
  tests = _field(record, name, dict, where, default={})
  if not tests:
    return ()
  inputs = _str_list(tests, "input", f"{where}: field {name!r}")
  outputs = _str_list(tests, "output", f"{where}: field {name!r}")
  if len(inputs) != len(outputs):
    raise ProblemFormatError(f"{where}: field {name!r} has {len(inputs)} inputs but {len(outputs)} outputs")
  return tuple(TestCase(input=i, output=o) for i, o in zip(inputs, outputs))


def _codecontests(record: dict[str, Any], where: str) -> Problem:
  name = _field(record, "name", str, where)
  description = _field(record, "description", str, where)
  public = _io_tests(record, "public_tests", where)
  hidden = _io_tests(record, "private_tests", where) + _io_tests(record, "generated_tests", where)
  if not public and not hidden:
    raise ProblemFormatError(f"{where}: field 'public_tests': no tests at all (private and generated are empty too)")
  reference = None
  solutions = _field(record, "solutions", dict, where, default={})
  if solutions:
    languages = _field(solutions, "language", list, f"{where}: field 'solutions'")
    codes = _str_list(solutions, "solution", f"{where}: field 'solutions'")
    if len(languages) != len(codes):
      raise ProblemFormatError(f"{where}: field 'solutions' has {len(languages)} languages but {len(codes)} solutions")
    reference = next((c for lang, c in zip(languages, codes) if lang in _PYTHON3), None)
  time_limit = _field(record, "time_limit", dict, where, default={})
  seconds = float(time_limit.get("seconds") or 0) + float(time_limit.get("nanos") or 0) * 1e-9
  memory = _field(record, "memory_limit_bytes", int, where, default=0)
  return Problem(
      task_id=name, format="codecontests", statement=description.strip(), public_tests=public,
      hidden_tests=hidden or public, reference_solution=reference, time_limit_s=seconds or None,
      memory_mb=(memory >> 20) or None, source=where)


def _mbpp(record: dict[str, Any], where: str) -> Problem:
  task_id = _field(record, "task_id", (int, str), where)
  # The "sanitized" MBPP release names the text `prompt` and lists imports in `test_imports`.
  text = _field(record, "text" if "text" in record or "prompt" not in record else "prompt", str, where)
  code = _field(record, "code", str, where, default=None)
  tests = _str_list(record, "test_list", where)
  if not tests:
    raise ProblemFormatError(f"{where}: field 'test_list' is empty")
  challenge = _str_list(record, "challenge_test_list", where, default=[])
  setup = _field(record, "test_setup_code", str, where, default="")
  setup = "\n".join([*_str_list(record, "test_imports", where, default=[]), setup]).strip()
  statement = f"{text.strip()}\nYour code should pass these tests:\n\n" + "\n".join(tests)
  return Problem(
      task_id=f"mbpp/{task_id}", format="mbpp", statement=statement,
      public_tests=tuple(TestCase(code=t) for t in tests),
      hidden_tests=tuple(TestCase(code=t) for t in tests + challenge), reference_solution=code,
      test_setup_code=setup, source=where)


def _humaneval(record: dict[str, Any], where: str) -> Problem:
  task_id = _field(record, "task_id", str, where)
  prompt = _field(record, "prompt", str, where)
  entry_point = _field(record, "entry_point", str, where)
  if not entry_point.isidentifier():
    raise ProblemFormatError(f"{where}: field 'entry_point' must be a Python identifier, got {entry_point!r}")
  canonical = _field(record, "canonical_solution", str, where, default=None)
  test = _field(record, "test", str, where)
  if "def check(" not in test:
    raise ProblemFormatError(f"{where}: field 'test' must define check(candidate)")
  statement = ("Complete the following Python function. Submit the complete function (signature included).\n\n"
               + prompt.rstrip())
  return Problem(
      task_id=task_id, format="humaneval", statement=statement, public_tests=_docstring_examples(prompt),
      hidden_tests=(TestCase(code=f"{test}\n\ncheck({entry_point})\n"),),
      reference_solution=None if canonical is None else prompt + canonical, entry_point=entry_point, source=where)


def _docstring_examples(prompt: str) -> tuple[TestCase, ...]:
  """`>>> f(x)` / `y` examples of a HumanEval prompt as asserts (those whose answer is a Python literal)."""
  tests = []
  try:
    examples = doctest.DocTestParser().get_examples(prompt)
  except ValueError:  # malformed doctest markup: no public tests rather than a failed load
    return ()
  for ex in examples:
    # The last example's "want" runs into the docstring's closing quotes.
    lines = [line for line in ex.want.strip().splitlines() if line.strip() not in ('"""', "'''")]
    want = "\n".join(lines).strip()
    if not want or "\n" in want:
      continue
    try:
      compile(want, "<want>", "eval")
    except SyntaxError:
      continue
    tests.append(TestCase(code=f"assert ({ex.source.strip()}) == ({want})"))
  return tuple(tests)
