"""Problem loading: the three formats, parquet, and errors that name file, record and field."""

import json

import pytest

from leafe_jax.envs.coding.problems import EXAMPLE_FILES, ProblemFormatError, TestCase, load_problems


def _write_jsonl(path, records):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return str(path)


def _cc(**overrides):
  record = {"name": "p", "description": "Print the input.", "public_tests": {"input": ["1\n"], "output": ["1\n"]},
            "private_tests": {"input": ["2\n"], "output": ["2\n"]}, "generated_tests": {"input": [], "output": []},
            "solutions": {"language": [2, 3], "solution": ["int main(){}", "print(input())"]}}
  record.update(overrides)
  return record


@pytest.mark.parametrize("fmt,count", [("codecontests", 3), ("mbpp", 3), ("humaneval", 3)])
def test_example_files_load(fmt, count):
  problems = load_problems(EXAMPLE_FILES[fmt], fmt)
  assert len(problems) == count
  assert all(p.reference_solution for p in problems)
  assert all(p.hidden_tests for p in problems)
  assert len({p.task_id for p in problems}) == count


def test_codecontests_fields_map_to_problem(tmp_path):
  path = _write_jsonl(tmp_path / "cc.jsonl", [_cc(time_limit={"seconds": 2, "nanos": 500_000_000},
                                                  memory_limit_bytes=256 << 20)])
  (p,) = load_problems(path, "codecontests")
  assert p.task_id == "p" and p.io_kind == "stdio"
  assert p.public_tests == (TestCase(input="1\n", output="1\n"),)
  assert p.hidden_tests == (TestCase(input="2\n", output="2\n"),)  # private + generated
  assert p.reference_solution == "print(input())"  # the Python 3 one, not the C++ one
  assert p.time_limit_s == 2.5 and p.memory_mb == 256
  assert p.source == f"{path}:1"


def test_codecontests_parquet_matches_jsonl(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  with open(EXAMPLE_FILES["codecontests"]) as f:
    records = [json.loads(line) for line in f]
  pq.write_table(pa.Table.from_pylist(records), str(tmp_path / "cc.parquet"))
  assert load_problems(str(tmp_path / "cc.parquet"), "codecontests") == [
      p.__class__(**{**p.__dict__, "source": f"{tmp_path / 'cc.parquet'}:row {i}"})
      for i, p in enumerate(load_problems(EXAMPLE_FILES["codecontests"], "codecontests"))]


def test_mbpp_public_and_hidden_tests(tmp_path):
  path = _write_jsonl(tmp_path / "m.jsonl", [{"task_id": 7, "text": "Add.", "code": "def f(a, b): return a + b",
                                             "test_list": ["assert f(1, 2) == 3"], "test_setup_code": "",
                                             "challenge_test_list": ["assert f(0, 0) == 0"]}])
  (p,) = load_problems(path, "mbpp")
  assert p.task_id == "mbpp/7"
  assert "assert f(1, 2) == 3" in p.statement
  assert [t.code for t in p.public_tests] == ["assert f(1, 2) == 3"]
  assert [t.code for t in p.hidden_tests] == ["assert f(1, 2) == 3", "assert f(0, 0) == 0"]


def test_mbpp_sanitized_layout(tmp_path):
  record = {"task_id": 8, "prompt": "Root.", "code": "def r(x): return sqrt(x)",
            "test_imports": ["from math import sqrt"], "test_list": ["assert r(4) == 2"]}
  path = _write_jsonl(tmp_path / "s.jsonl", [record])
  (p,) = load_problems(path, "mbpp")
  assert p.statement.startswith("Root.") and p.test_setup_code == "from math import sqrt"


def test_humaneval_docstring_examples_become_public_tests():
  problems = load_problems(EXAMPLE_FILES["humaneval"], "humaneval")
  assert [t.code for t in problems[0].public_tests] == [
      "assert (running_max([1, 3, 2, 5])) == ([1, 3, 3, 5])", "assert (running_max([])) == ([])"]
  assert problems[2].public_tests == ()  # no >>> examples in its prompt
  assert problems[0].hidden_tests[0].code.rstrip().endswith("check(running_max)")


@pytest.mark.parametrize("fmt,line,field_name", [
    ("codecontests", json.dumps(_cc(description=None)), "'description'"),
    ("codecontests", json.dumps(_cc(public_tests={"input": ["1"], "output": []}, private_tests={})), "'public_tests'"),
    ("codecontests", json.dumps(_cc(private_tests={"input": [1], "output": ["1"]})), "'private_tests'"),
    ("mbpp", json.dumps({"task_id": 1, "text": "t", "test_list": "assert x"}), "'test_list'"),
    ("humaneval", json.dumps({"task_id": "H/0", "prompt": "def f():\n", "entry_point": "f", "test": "assert 1"}),
     "'test'"),
    ("humaneval", json.dumps({"task_id": "H/0", "prompt": "", "test": "def check(c): pass"}), "'entry_point'"),
])
def test_malformed_record_error_names_file_line_and_field(tmp_path, fmt, line, field_name):
  good = {"codecontests": json.dumps(_cc(name="ok")),
          "mbpp": json.dumps({"task_id": 0, "text": "t", "code": "", "test_list": ["assert 1"]}),
          "humaneval": json.dumps({"task_id": "H/9", "prompt": "", "entry_point": "f", "test": "def check(c): pass"})}
  path = _write_jsonl(tmp_path / "bad.jsonl", [good[fmt], "", line])
  with pytest.raises(ProblemFormatError) as err:
    load_problems(path, fmt)
  assert f"{path}:3" in str(err.value)
  assert field_name in str(err.value)


def test_invalid_json_names_file_and_line(tmp_path):
  path = _write_jsonl(tmp_path / "bad.jsonl", [_cc(), '{"name": "x", '])
  with pytest.raises(ProblemFormatError, match=f"{path}:2: not valid JSON"):
    load_problems(path, "codecontests")


def test_duplicate_task_ids_are_rejected(tmp_path):
  path = _write_jsonl(tmp_path / "dup.jsonl", [_cc(), _cc()])
  with pytest.raises(ProblemFormatError, match="duplicate task id 'p'"):
    load_problems(path, "codecontests")


def test_unknown_format_and_missing_file():
  with pytest.raises(ValueError, match="unknown problem format"):
    load_problems(EXAMPLE_FILES["mbpp"], "apps")
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    load_problems("/nonexistent/nope.jsonl", "mbpp")
