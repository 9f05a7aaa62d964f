"""Action prompts (verl-agent layout, experience block) and parse_action on what models really write."""

import pytest

from leafe_jax.envs.prompts import GENERIC_TEMPLATE, PromptTemplate, build_action_prompt, parse_action
from leafe_jax.envs.sokoban import SOKOBAN_COMPACT_TEMPLATE, SokobanEnv

ACTIONS = ["up", "down", "left", "right"]


def prompt(env_or_template, **overrides):
  kwargs = dict(instruction="Push the box.", history=[("grid0", "up"), ("grid1", "left"), ("grid2", "down")],
                current_observation="grid3", admissible_actions=ACTIONS, step_count=3, history_length=2)
  kwargs.update(overrides)
  return build_action_prompt(env_or_template, **kwargs)


def test_layout_task_history_observation_actions_format():
  env = SokobanEnv()
  system, user = prompt(env)
  assert system["role"] == "system" and user["role"] == "user"
  text = user["content"]
  assert "Push the box." in text
  assert "already taken 3 step(s)" in text and "most recent 2 observation(s)" in text
  # Only the last two pairs, numbered by their absolute step.
  assert "grid0" not in text
  assert "[Observation 2]\ngrid1\n[Action 2]: left" in text and "[Observation 3]\ngrid2\n[Action 3]: down" in text
  assert "step 4. Current grid:\ngrid3" in text
  assert "Admissible actions: [up, down, left, right]." in text
  assert text.index("Push the box.") < text.index("grid1") < text.index("grid3") < text.index("Admissible")
  assert text.endswith("inside <action> </action> tags.")
  assert "<experience>" not in text


def test_first_step_has_no_history_block():
  (_, user) = prompt(SokobanEnv(), history=[], step_count=0)
  assert "You have not taken any action yet." in user["content"]
  assert "Prior to this step" not in user["content"]


def test_experience_is_a_separate_block_and_absent_otherwise():
  env = SokobanEnv()
  plain = prompt(env)
  assert prompt(env, experience=None) == plain
  with_e = prompt(env, experience="Do not push the box into the corner at step 2.")
  text = with_e[1]["content"]
  assert "<experience>\nDo not push the box into the corner at step 2.\n</experience>" in text
  # Removing the experience block (and its separator) gives back the plain prompt byte for byte.
  block = env.prompt_template.experience.format(experience="Do not push the box into the corner at step 2.")
  assert text.replace("\n\n" + block, "") == plain[1]["content"]
  assert with_e[0] == plain[0]


def test_an_experience_for_a_template_without_an_experience_part_is_refused():
  # A branch would otherwise be sampled without its e: a resample indistinguishable from a correction.
  template = PromptTemplate(task_intro="{instruction}", current_observation="{observation}", output_format="go")
  kwargs = dict(instruction="q", history=[], current_observation="o", admissible_actions=None, step_count=0,
                history_length=0)
  assert build_action_prompt(template, **kwargs)[-1]["content"] == "q\n\no\n\ngo"
  with pytest.raises(ValueError, match="no experience part"):
    build_action_prompt(template, experience="try left", **kwargs)


def test_compact_template_same_code_path():
  env = SokobanEnv(compact_prompt=True)
  assert env.prompt_template is SOKOBAN_COMPACT_TEMPLATE
  messages = prompt(env, history=[], step_count=0, current_observation="#P_X_O#")
  assert messages == [{"role": "user", "content": "#P_X_O#\n\naction:"}]


def test_template_or_generic_fallback():
  custom = PromptTemplate(task_intro="Q: {instruction}", current_observation="O: {observation}", output_format="A:")
  assert prompt(custom, history_length=0)[0]["content"] == "Q: Push the box.\n\nO: grid3\n\nA:"

  class NoTemplateEnv:
    pass

  assert prompt(NoTemplateEnv())[0]["content"] == GENERIC_TEMPLATE.system


@pytest.mark.parametrize("text, expected", [
    ("<think>box is left</think><action>left</action>", "left"),
    ("<think>...</think>\n<action> Up </action>", "up"),
    ("<ACTION>RIGHT</ACTION>", "right"),
    ("< action >down</ action >", "down"),
    ("<action>up</action> wait, no. <action>down</action>", "down"),  # last complete block wins
    ("<action>left</action> and then <action>rig", "left"),  # the incomplete trailing block is ignored
    ("<think>go</think><action>up", "up"),  # missing closing tag (stop string cut it)
    ("<think>go</think><action>up\nbecause it is free", "up"),
    ("<action>**Left.**</action>", "left"),
    ("<action>\"down\"</action>", "down"),
    ("up", "up"),
    ("  Down.\n", "down"),
    ("left\nbecause the box is there", "left"),
    ("Action: right", "right"),
    ("<action>Action: up</action>", "up"),
    ("<action>jump</action>", None),
    ("<action></action>", None),
    ("I think we should go up", None),
    ("", None),
    ("<think>unfinished thought", None),
])
def test_parse_action_what_models_write(text, expected):
  assert parse_action(text, ACTIONS) == expected


def test_parse_action_returns_canonical_spelling_and_free_text_without_list():
  assert parse_action("<action>open the DOOR</action>", ["open the door", "look"]) == "open the door"
  assert parse_action("<action>  open   the door </action>", ["Open the door"]) == "Open the door"
  assert parse_action("<action>print(1)</action>") == "print(1)"
  assert parse_action("print(1)") is None  # no tags and no list: nothing to trust


@pytest.mark.parametrize("text", [
    "<think>I must give my answer inside <action> tags. The box is above me.</think>\n<action>up</action>",
    "<think>Use the <action> tag.</think><action>up</action>",
])
def test_action_tag_mentioned_in_reasoning_does_not_hide_the_last_block(text):
  assert parse_action(text, ACTIONS) == "up"
  assert parse_action(text, None) == "up"
