"""The terminal player: runs an env with the model's exact prompt, actions from --script or stdin."""

import os
import subprocess
import sys

import pytest

from leafe_jax.envs.play import parse_config

DATA = os.path.join(os.path.dirname(__file__), "data", "alfworld")
FRIDGE = "valid_seen/pick_and_place_simple-Apple-None-Fridge-1/trial_T00000000_000001"
WIN = ["go to countertop 1", "take apple 1 from countertop 1", "go to fridge 1", "open fridge 1",
       "move apple 1 to fridge 1"]


def _play(*args, stdin=""):
  return subprocess.run([sys.executable, "-m", "leafe_jax.envs.play", *args], input=stdin, capture_output=True,
                        text=True, timeout=120)


def test_parse_config_types():
  assert parse_config(["a=1", "b=0.5", "c=true", "d=x"]) == {"a": 1, "b": 0.5, "c": True, "d": "x"}
  with pytest.raises(ValueError, match="key=value"):
    parse_config(["oops"])


def test_stdin_play_wins_alfworld_with_model_answers():
  pytest.importorskip("alfworld")
  # The last answer is a model-style completion: the player parses it like the explorer does.
  lines = WIN[:-1] + [f"<think>apple goes in</think><action>{WIN[-1]}</action>"]
  result = _play("--env=alfworld", f"--task={FRIDGE}", "--config", f"data_dir={DATA}", stdin="\n".join(lines) + "\n")
  assert result.returncode == 0, result.stderr
  assert "ALFRED Embodied Environment" in result.stdout and "admissible actions" in result.stdout
  assert "success=True after 5 step(s)" in result.stdout


def test_script_play_stops_when_actions_run_out():
  pytest.importorskip("alfworld")
  result = _play("--env=alfworld", f"--task={FRIDGE}", "--config", f"data_dir={DATA}", "--script", ",".join(WIN[:2]))
  assert result.returncode == 1 and "(stopped)" in result.stdout
  assert "You pick up the apple 1" in result.stdout
