"""Judging: reference solutions pass and wrong ones fail in every format; CodeContests output comparison."""

import pytest

from leafe_jax.envs.coding import judging as judge_lib
from leafe_jax.envs.coding.judging import judge, outputs_match
from leafe_jax.envs.coding.problems import EXAMPLE_FILES, Problem, TestCase, load_problems
from leafe_jax.envs.coding.sandbox import Sandbox

# A wrong program per example problem (same order as the example files).
WRONG = {
    "codecontests": [
        "t = int(input())\nfor _ in range(t):\n  a, b = map(int, input().split())\n  print(a - b)\n",
        "import math\nr = int(input())\nprint('%.3f' % (math.pi * r * r))\n",  # 1e-3 precision: wrong
        "print(' '.join(input().split()).upper())\n",
    ],
    "mbpp": [
        "def max_of_three(a, b, c):\n  return a\n",
        "def count_vowels(s):\n  return sum(ch in 'aeiou' for ch in s)\n",  # case-sensitive: wrong
        "def hypotenuse(a, b):\n  return a + b\n",
    ],
    "humaneval": [
        "def running_max(numbers):\n    return list(numbers)\n",
        "def is_palindrome(text):\n    return text == text[::-1]\n",  # case-sensitive: wrong
        "def digit_sum(n):\n    return n % 10\n",
    ],
}


@pytest.fixture(scope="module")
def sandbox():
  sb = Sandbox()
  yield sb
  sb.close()


def _problems(fmt):
  return load_problems(EXAMPLE_FILES[fmt], fmt)


@pytest.mark.parametrize("fmt", ["codecontests", "mbpp", "humaneval"])
def test_reference_solutions_pass_all_tests(sandbox, fmt):
  for problem in _problems(fmt):
    verdict = judge(problem, problem.reference_solution, tests="all", sandbox=sandbox)
    assert verdict.passed, (problem.task_id, verdict)
    assert verdict.status == judge_lib.ACCEPTED
    assert verdict.num_passed == len(verdict.results) > 0


@pytest.mark.parametrize("fmt", ["codecontests", "mbpp", "humaneval"])
def test_wrong_solutions_fail_hidden_tests(sandbox, fmt):
  for problem, wrong in zip(_problems(fmt), WRONG[fmt]):
    verdict = judge(problem, wrong, tests="hidden", sandbox=sandbox)
    assert not verdict.passed, problem.task_id
    assert verdict.status == judge_lib.WRONG_ANSWER
    assert verdict.first_failure is not None


def test_stdio_failure_reports_input_expected_got_and_skips_the_rest(sandbox):
  problem = _problems("codecontests")[0]
  verdict = judge(problem, WRONG["codecontests"][0], tests="all", sandbox=sandbox, num_workers=1)
  first = verdict.first_failure
  assert first.index == 0
  assert first.input == problem.public_tests[0].input
  assert first.expected == problem.public_tests[0].output
  assert first.got.split() == ["-1", "-10"]
  assert [r.status for r in verdict.results[1:]] == [judge_lib.SKIPPED] * (len(verdict.results) - 1)


def test_runtime_error_carries_the_trace(sandbox):
  problem = _problems("codecontests")[0]
  verdict = judge(problem, "import sys\nx = {}\nprint(x['missing'])\n", tests="public", sandbox=sandbox)
  assert verdict.status == judge_lib.RUNTIME_ERROR
  assert "KeyError: 'missing'" in verdict.error
  assert 'File "main.py", line 3' in verdict.error


def test_time_limit_is_reported(sandbox):
  problem = _problems("codecontests")[2]
  verdict = judge(problem, "while True:\n  pass\n", tests="public", time_limit_s=1.0, sandbox=sandbox)
  assert verdict.status == judge_lib.TIME_LIMIT


def test_assert_failure_reports_both_sides(sandbox):
  problem = _problems("mbpp")[0]
  verdict = judge(problem, WRONG["mbpp"][0], tests="public", sandbox=sandbox)
  first = verdict.first_failure
  assert (first.index, first.got, first.expected) == (0, "1", "3")
  assert "AssertionError" in first.error and 'File "test_0.py"' in first.error


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit"])
def test_early_exit_cannot_fake_a_pass(sandbox, exit_call):
  problem = _problems("humaneval")[0]
  verdict = judge(problem, f"def running_max(numbers):\n    return []\n{exit_call}\n", tests="all", sandbox=sandbox)
  assert not verdict.passed


def test_program_rewriting_test_files_cannot_fake_a_pass(sandbox):
  problem = _problems("mbpp")[0]
  hack = "for i in range(10):\n  open(f'test_{i}.py', 'w').write('pass')\ndef max_of_three(a, b, c):\n  return a\n"
  assert not judge(problem, hack, tests="hidden", sandbox=sandbox).passed


def test_program_reading_stdin_cannot_get_the_harness_token(sandbox):
  problem = _problems("mbpp")[0]
  hack = "import sys\nsys.stdin.seek(0)\ntoken = sys.stdin.read()\nprint('\\n' + token.strip() + '{\"done\": true}')\n"
  assert not judge(problem, hack, tests="hidden", sandbox=sandbox).passed


def test_mbpp_setup_code_runs_before_the_tests(sandbox, tmp_path):
  path = tmp_path / "s.jsonl"
  path.write_text('{"task_id": 8, "prompt": "Root.", "code": "def r(x):\\n  return sqrt(x)", '
                  '"test_imports": ["from math import sqrt"], "test_list": ["assert r(4) == 2"]}\n')
  (problem,) = load_problems(str(path), "mbpp")
  assert judge(problem, problem.reference_solution, sandbox=sandbox).passed


def test_humaneval_without_public_tests_still_reports_a_broken_program(sandbox):
  problem = _problems("humaneval")[2]
  assert problem.public_tests == ()
  assert judge(problem, "def digit_sum(n):\n    return 0\n", tests="public", sandbox=sandbox).passed
  broken = judge(problem, "def digit_sum(n) return 0\n", tests="public", sandbox=sandbox)
  assert not broken.passed and "SyntaxError" in broken.error


@pytest.mark.parametrize("got,expected,match", [
    ("1 2 3\n", "1 2 3", True),
    ("1\n2\n3", "1 2 3\n", True),  # whitespace kind does not matter
    ("YES", "yes", True),  # case does not matter
    ("3.1415926", "3.14159265", True),  # |diff| < 1e-5
    ("3.1415", "3.14159265", False),
    ("1e-7", "0", True),  # a float against an integer: tolerance
    ("100000000000000000001", "100000000000000000000", False),  # integers: exact, any size
    ("0.5 abc", "0.500001 abc", True),
    ("abc", "abd", False),
    ("1 2", "1 2 3", False),
    ("", "", True),
    ("nan", "nan", True),
    ("1.0", "nan", False),
])
def test_outputs_match_follows_code_contests(got, expected, match):
  assert outputs_match(got, expected) is match


def test_tests_selection():
  problem = Problem("x", "codecontests", "s", (TestCase("1", "1"),), (TestCase("2", "2"), TestCase("1", "1")))
  assert judge_lib.select_tests(problem, "public") == (TestCase("1", "1"),)
  assert judge_lib.select_tests(problem, "all") == (TestCase("1", "1"), TestCase("2", "2"))
  with pytest.raises(ValueError, match="hidden|public|all"):
    judge_lib.select_tests(problem, "private")


_READ_TEST_FILES = """import ast, glob
_answers = {}
for _path in glob.glob('test_*.py'):
  _node = ast.parse(open(_path).read()).body[-1]
  _answers[ast.unparse(_node.test.left)] = ast.literal_eval(_node.test.comparators[0])
def max_of_three(a, b, c):
  return _answers[f'max_of_three({a}, {b}, {c})']
"""
_READ_LINECACHE = """import ast, linecache
def max_of_three(a, b, c):
  for _path, _entry in list(linecache.cache.items()):
    if _path.startswith('test_'):
      _node = ast.parse(''.join(_entry[2])).body[-1]
      if ast.unparse(_node.test.left) == f'max_of_three({a}, {b}, {c})':
        return ast.literal_eval(_node.test.comparators[0])
"""


@pytest.mark.parametrize("hack", [_READ_TEST_FILES, _READ_LINECACHE], ids=["test_files", "linecache"])
def test_assert_program_cannot_read_the_expected_values(hack, sandbox):
  problem = load_problems(EXAMPLE_FILES["mbpp"], "mbpp")[0]  # max_of_three; hidden adds a challenge test
  verdict = judge(problem, hack, tests="hidden", sandbox=sandbox)
  assert not verdict.passed
  # A failing assert still shows its line in the feedback.
  wrong = judge(problem, "def max_of_three(a, b, c):\n  return a\n", tests="hidden", sandbox=sandbox)
  assert not wrong.passed and "assert max_of_three(1, 2, 3) == 3" in wrong.error
