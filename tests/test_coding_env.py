"""CodingEnv: the Env protocol, public-test feedback, attempts, horizon and success on hidden tests."""

import json

import pytest

from leafe_jax.envs import base, prompts, registry
from leafe_jax.envs.coding import CodingEnv, extract_code
from leafe_jax.envs.coding.problems import EXAMPLE_FILES


def _fenced(code: str, tag: str = "python") -> str:
  return f"Here is my program.\n```{tag}\n{code}```\n"


@pytest.fixture(scope="module")
def env():
  return CodingEnv(format="codecontests")


def test_registry_builds_the_env_and_it_meets_the_protocol():
  env = registry.make("coding", format="mbpp", horizon=2)
  assert isinstance(env, base.Env)
  assert env.name == "coding" and env.horizon == 2
  assert env.tasks("train") == ["mbpp/9001", "mbpp/9002", "mbpp/9003"]


def test_reset_and_instruction_show_statement_once(env):
  obs = env.reset("ex_sum_of_pairs")
  assert obs.startswith("No program submitted yet; you have 4 attempt(s)")
  assert env.instruction.startswith("You are given t test cases")
  assert "```python" in env.instruction and "standard input" in env.instruction
  assert env.admissible_actions() is None


def test_prompt_from_the_shared_builder(env):
  env.reset("ex_sum_of_pairs")
  program = env.parse_action(_fenced("print(0)\n"))
  assert program == "```python\nprint(0)\n```"
  feedback = env.step(program).observation
  messages = prompts.build_action_prompt(env, instruction=env.instruction, history=[(env.reset("ex_sum_of_pairs"),
                                         program)], current_observation=feedback, admissible_actions=None,
                                         step_count=1, history_length=2, experience="Read all t cases.")
  text = messages[-1]["content"]
  assert text.count("You are given t test cases") == 1
  assert "[Your attempt 1]\n```python\nprint(0)\n```" in text
  assert "[Feedback before attempt 2]\nAttempt 1/4: failed public test 1" in text
  assert "<experience>\nRead all t cases.\n</experience>" in text
  assert "```python ... ``` code block" in text


def test_no_code_block_is_feedback_and_counts_as_an_attempt(env):
  env.reset("ex_sum_of_pairs")
  step = env.step("I think the answer is to add the numbers.")
  assert "no code block" in step.observation
  assert step.observation.startswith("Attempt 1/4")
  assert (step.reward, step.done, step.success) == (0.0, False, False)
  assert step.info["no_code_block"] and step.info["attempt"] == 1


def test_wrong_program_gets_public_feedback_then_horizon_ends_irreversibly(env):
  env.reset("ex_sum_of_pairs")
  wrong = _fenced("t = int(input())\nfor _ in range(t):\n  a, b = map(int, input().split())\n  print(a * b)\n")
  for attempt in range(1, 5):
    step = env.step(wrong)
    assert step.observation.startswith(f"Attempt {attempt}/4: failed public test 1 of 1: wrong answer.")
    assert "Input:\n2\n1 2\n-5 5" in step.observation and "Your output:\n2\n-25" in step.observation
    assert step.info["verdict"]["hidden"]["passed"] is False
    assert step.done is (attempt == 4)
    assert step.info["irreversible"] is (attempt == 4)
  after = env.step(wrong)
  assert after.done and not after.success


def test_feedback_is_reproducible_for_replay(env):
  program = _fenced("import sys\nprint({'b', 'a', 'c'})\nraise ValueError(sys.argv)\n")
  observations = []
  for _ in range(2):
    env.reset("ex_reverse_words")
    observations.append(env.step(program).observation)
  assert observations[0] == observations[1]
  assert "ValueError" in observations[0]


def test_correct_program_succeeds_and_ends_the_episode(env):
  env.reset("ex_circle_area")
  step = env.step(_fenced("print('not yet')\n") + "Actually, final answer:\n" +
                  _fenced(env.problem("ex_circle_area").reference_solution))
  assert (step.reward, step.done, step.success) == (1.0, True, True)
  assert step.info["irreversible"] is False
  assert "accepted" in step.observation


def test_passing_public_but_failing_hidden_tests_is_not_success(tmp_path):
  record = {"name": "echo", "description": "Print the input number.",
            "public_tests": {"input": ["1\n"], "output": ["1\n"]},
            "private_tests": {"input": ["2\n"], "output": ["2\n"]}}
  path = tmp_path / "cc.jsonl"
  path.write_text(json.dumps(record) + "\n")
  env = CodingEnv(problems={"test": str(path)}, horizon=1)
  assert env.tasks("test") == ["echo"]
  env.reset("echo")
  step = env.step(_fenced("print(1)\n"))
  assert not step.success and step.done and step.info["irreversible"]
  assert "passed all 1 public tests, but it failed the hidden tests" in step.observation
  with pytest.raises(ValueError, match="no problem file for split 'train'"):
    env.tasks("train")


def test_split_given_as_a_glob_of_shards(tmp_path):
  with open(EXAMPLE_FILES["codecontests"]) as f:
    lines = f.read().splitlines()
  for i, line in enumerate(lines):
    (tmp_path / f"train-{i:05d}-of-{len(lines):05d}.jsonl").write_text(line + "\n")
  env = CodingEnv(problems={"train": str(tmp_path / "train-*.jsonl")})
  assert env.tasks("train") == ["ex_sum_of_pairs", "ex_circle_area", "ex_reverse_words"]
  with pytest.raises(FileNotFoundError, match="no problem file matches"):
    CodingEnv(problems=str(tmp_path / "test-*.jsonl")).tasks("test")


def test_humaneval_and_mbpp_episodes(tmp_path):
  env = CodingEnv(format="humaneval")
  env.reset("Example/1")
  step = env.step(_fenced("def is_palindrome(text):\n    return text == text[::-1]\n"))
  assert "failed public test 1 of 2: wrong answer." in step.observation
  assert "Got:\nFalse" in step.observation and "Expected:\nTrue" in step.observation
  ok = env.step(_fenced(env.problem("Example/1").reference_solution))
  assert ok.success
  mbpp = CodingEnv(format="mbpp")
  mbpp.reset("mbpp/9003")
  assert mbpp.step(_fenced(mbpp.problem("mbpp/9003").reference_solution)).success


@pytest.mark.parametrize("text,code", [
    ("```python\na = 1\n```\ntext\n```py\nb = 2\n```", "b = 2\n"),  # the last block
    ("```\nuntagged = 1\n```", "untagged = 1\n"),
    ("```python\nx = 1\n```\n```cpp\nint main(){}\n```", "x = 1\n"),  # non-Python blocks are ignored
    ("```python\nunclosed = True\n", "unclosed = True\n"),  # cut off by a stop string / token limit
    ("no code at all", None),
    ("```cpp\nint main(){}\n```", None),
])
def test_extract_code(text, code):
  assert extract_code(text) == code


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match="unknown format"):
    CodingEnv(format="apps")
  with pytest.raises(ValueError, match="horizon"):
    CodingEnv(horizon=0)
  with pytest.raises(KeyError, match="unknown task id"):
    CodingEnv().reset("nope")


def test_snapshot_restore_equals_reset_and_replay(env):
  wrong = _fenced("print(0)\n")
  env.reset("ex_reverse_words")
  env.step(wrong)
  snap = env.snapshot()
  replayed = env.step(wrong)
  env.reset("ex_sum_of_pairs")  # somewhere else entirely
  env.restore(snap)
  restored = env.step(wrong)
  assert restored == replayed
  assert isinstance(env, base.SnapshotEnv)


@pytest.mark.parametrize("code", ["print('\udcff')\n", "x = 1\x00\n", "def f(:\n"])
def test_broken_programs_are_feedback_never_exceptions(env, code):
  env.reset("ex_sum_of_pairs")
  step = env.step(_fenced(code))
  assert not step.success and "failed public test 1 of 1" in step.observation


def test_runs_in_env_pool_workers():
  from leafe_jax.envs.pool import EnvPool

  with EnvPool("coding", {"format": "mbpp"}, num_workers=1) as pool:
    (obs,) = pool.reset(["e0"], ["mbpp/9002"])
    assert obs.startswith("No program submitted yet")
    reference = CodingEnv(format="mbpp").problem("mbpp/9002").reference_solution
    (step,) = pool.step(["e0"], [_fenced(reference)])
    assert step.success and step.done


def test_problem_files_are_parsed_once_per_process_and_reread_when_changed(tmp_path, monkeypatch):
  from leafe_jax.envs.coding import env as env_module

  path = tmp_path / "cc.jsonl"
  with open(EXAMPLE_FILES["codecontests"]) as f:
    path.write_text(f.read())
  calls = []
  real = env_module.load_problems
  monkeypatch.setattr(env_module, "load_problems", lambda p, fmt: calls.append(p) or real(p, fmt))
  for _ in range(3):  # explore and eval build one env per task
    assert CodingEnv(problems=str(path)).problem("ex_circle_area").task_id == "ex_circle_area"
  assert len(calls) == 1
  lines = path.read_text().splitlines()
  path.write_text(lines[0] + "\n")  # edited: the cache must not serve the old problems
  assert CodingEnv(problems=str(path)).tasks("test") == ["ex_sum_of_pairs"]
  assert len(calls) == 2


def test_stdio_problem_without_public_tests_does_not_tell_a_broken_program_it_ran_without_errors(tmp_path):
  """CodeContests records may have no public tests (only private/generated ones): the stdio judge then runs nothing
  on the public tests, yet the feedback said "the program ran without errors" to a program with a syntax error."""
  record = {"name": "nopublic", "description": "Print the sum.", "public_tests": {"input": [], "output": []},
            "private_tests": {"input": ["1 2\n"], "output": ["3\n"]}}
  path = tmp_path / "cc.jsonl"
  path.write_text(json.dumps(record) + "\n")
  env = CodingEnv("codecontests", problems=str(path))
  env.reset("nopublic")
  step = env.step("```python\nprint(sum(map(int, input().split()))\n```")  # a SyntaxError
  assert not step.success
  assert "ran without errors" not in step.observation, step.observation
