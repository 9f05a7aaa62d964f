"""WebShop through the real server process, over a stand-in of the package (tests/webshop_fake/README.md)."""

import os
import sys

import pytest

from leafe_jax.envs import INVALID_ACTION, make
from leafe_jax.envs.webshop import WebShopEnv, WebShopServerError
from leafe_jax.envs.webshop import env as webshop_env
from leafe_jax.explore import engine, reflection
from leafe_jax.explore.ledger import Ledger
from leafe_jax.policy.scripted import ScriptedPolicy

FAKE_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webshop_fake")


def _env(**kw) -> WebShopEnv:
  return make("webshop", webshop_root=FAKE_ROOT, **kw)


def _buy(env, task_id, size):
  env.reset(task_id)
  steps = [env.step(a) for a in ("search[red cotton t-shirt]", "click[b001]", f"click[{size}]", "click[buy now]")]
  return steps


def test_pages_lose_the_header_and_actions_are_canonical():
  page = "WebShop [SEP] Instruction: [SEP] i need a shirt [SEP] Search"
  assert webshop_env.page_text(page, "i need a shirt") == "Search"
  actions = {"has_search_bar": False, "clickables": ["back to search", "b001", "buy now"]}
  assert webshop_env.available_actions(actions) == ["click[back to search]", "click[b001]", "click[buy now]"]
  assert webshop_env.canonical_action("click[B001]", actions) == "click[b001]"
  assert webshop_env.canonical_action(" click [Buy Now] ", actions) == "click[buy now]"
  assert webshop_env.canonical_action("click[b002]", actions) is None  # not on this page
  assert webshop_env.canonical_action("search[red shirt]", actions) is None  # no search box here
  with_box = {"has_search_bar": True, "clickables": []}
  assert webshop_env.canonical_action("search[ red shirt ]", with_box) == "search[red shirt]"
  assert webshop_env.canonical_action("search[<your query>]", with_box) is None
  assert webshop_env.canonical_action("buy it", with_box) is None


def test_splits_are_webshops_goal_ranges_and_bad_ids_are_named():
  env = _env()
  assert env.tasks("test") == [str(i) for i in range(500)]
  assert env.tasks("dev")[0] == "500" and len(env.tasks("dev")) == 1000
  assert env.tasks("train") == ["1500", "1501", "1502"]
  with pytest.raises(ValueError, match="unknown WebShop split 'valid'"):
    env.tasks("valid")
  with pytest.raises(ValueError, match="not a goal index"):
    env.reset("goal-3")
  with pytest.raises(ValueError, match="out of range: the package has 1503 goals"):
    env.reset("1503")


def test_a_right_purchase_succeeds_and_a_wrong_option_ends_unrecoverably():
  env = _env()
  first = env.reset("0")  # goal 0: B001 in size small
  assert first == "Search" and env.instruction.startswith("i need a red cotton t-shirt in size small")
  assert env.admissible_actions() == ["search[<your query>]"]
  *_, bought = _buy(env, "0", "small")
  assert bought.done and bought.success and bought.reward == 1.0 and not bought.info["irreversible"]
  *_, wrong = _buy(env, "0", "large")
  assert wrong.done and not wrong.success and wrong.reward == 0.5 and wrong.info["irreversible"]
  assert env.step("click[back to search]").observation == "The episode is over."


def test_invalid_actions_count_against_the_step_limit_without_reaching_the_server():
  env = _env(max_steps=3)
  env.reset("3")
  step = env.step("click[b001]")  # nothing to click on the start page
  assert step.observation.startswith(INVALID_ACTION) and "search[<your query>]" in step.observation
  assert step.info["invalid"] and not step.done
  assert env.step("search[bottle]").observation.startswith("Back to Search [SEP] Page 1 (Total results: 1)")
  last = env.step("click[b003]")
  assert last.done and last.info["truncated"] and not last.success


def test_model_text_parses_to_an_action_the_page_then_checks():
  assert WebShopEnv.parse_action("<think>look</think><action>search[Red shirt]</action>") == "search[Red shirt]"
  assert WebShopEnv.parse_action("<action>Click[B001]</action>") == "click[b001]"
  assert WebShopEnv.parse_action("click[b002]\nbecause") == "click[b002]"
  assert WebShopEnv.parse_action("<action>buy the shirt</action>") is None
  env = _env()
  env.reset("0")
  assert env.step(WebShopEnv.parse_action("<action>click[b001]</action>")).info["invalid"]  # no link here yet


def test_the_env_runs_in_an_env_pool_worker():
  from leafe_jax.envs.pool import EnvPool
  from leafe_jax.envs.pooled import PooledEnv

  with EnvPool("webshop", {"webshop_root": FAKE_ROOT}, num_workers=1) as pool:
    env = PooledEnv(pool)
    assert env.reset("0") == "Search" and env.name == "webshop"
    assert env.parse_action("<action>search[red shirt]</action>") == "search[red shirt]"
    assert env.step("search[red shirt]").observation.startswith("Back to Search [SEP] Page 1")
    assert "click[b001]" in env.admissible_actions()


def test_the_expert_finds_the_target_product_and_options_and_buys_them():
  from leafe_jax.baselines.early_experience import play_expert

  env = _env()
  for task_id in ("0", "4", "1502"):  # three products, both sizes, every split
    actions = env.gold_actions(task_id)
    assert actions[0].startswith("search[") and actions[-1] == "click[buy now]"
    states, success = play_expert(env, task_id, actions)
    assert success and len(states) == len(actions)
  assert env.gold_actions("3")[2] == "click[large]"  # goal 3: B001 in size large


def test_early_experience_world_model_records_are_the_pages_the_actions_lead_to():
  from leafe_jax.baselines import early_experience as ee

  env, fresh = _env(), _env()
  plan = env.gold_actions("1500")
  builder = ee.Builder(env, None, ee.Settings(methods=("iwm",), iwm_alternatives=2))
  examples = builder.build(["1500"])
  assert [e.response for e in examples if e.kind == "sft"] == [f"<action>{a}</action>" for a in plan]
  iwm = [e for e in examples if e.kind == "iwm"]
  assert builder.stats["replay_divergences"] == 0 and len(iwm) > len(plan)
  for example in iwm:
    action = example.messages[-1]["content"].rsplit("takes the action: ", 1)[1].split("\n")[0]
    assert action != "search[<your query>]"  # the listed search template is not an action to execute
    fresh.reset("1500")
    for prefix_action in plan[: example.step]:
      fresh.step(prefix_action)
    assert example.response == fresh.step(action).observation


def test_envs_of_a_process_share_one_server_and_keep_their_own_sessions():
  a, b = _env(), _env()
  a.reset("0")
  b.reset("0")
  a.step("search[red shirt]")
  assert b.admissible_actions() == ["search[<your query>]"]  # b's session did not move
  assert b.step("search[bottle]").observation.endswith("$20.00")
  assert a.step("click[b001]").observation.startswith("Back to Search [SEP] < Prev [SEP] size")
  assert a._server is b._server and a._server.alive()


def test_a_killed_server_is_restarted_and_the_episode_replayed():
  env = _env()
  env.reset("0")
  env.step("search[red shirt]")
  env.step("click[b001]")
  env._server.process.kill()
  env._server.process.wait()
  after = env.step("click[small]")
  assert env.server_restarts == 1 and "small" in after.observation
  bought = env.step("click[buy now]")
  assert bought.success and bought.reward == 1.0


def test_every_server_process_builds_the_same_goals():
  """The package draws goal price limits from the global random: seeded, a new server has the same tasks."""

  def instructions(env):
    texts = []
    for task_id in map(str, range(12)):
      env.reset(task_id)
      texts.append(env.instruction)
    return texts

  env = _env()
  first = instructions(env)
  env._server.process.kill()
  env._server.process.wait()
  assert instructions(_env()) == first


def test_a_python_without_webshop_fails_with_the_servers_error(tmp_path):
  env = WebShopEnv(webshop_root=str(tmp_path), python=sys.executable)
  with pytest.raises(WebShopServerError, match=r"exited with code 1 during open(.|\n)*web_agent_site"):
    env.tasks("test")


def test_leafe_branches_after_a_wrong_purchase_and_the_replay_checks_out():
  """A scripted agent buys the wrong size, reflects back to step 3, and the branch buys the right one."""

  def respond(messages):
    content = messages[-1]["content"]
    if messages[0]["content"] == reflection.REFLECTION_SYSTEM:
      return reflection.format_reflection(3, "the task asks for size small")
    page = content.split("The current page:\n")[1].split("\n\n")[0]
    last_action = content.split("You are now at step")[0].rstrip().rsplit("]: ", 1)[-1]
    if page == "Search":
      return "<action>search[red cotton t-shirt]</action>"
    if page.startswith("Back to Search [SEP] Page 1"):
      return "<action>click[b001]</action>"
    if last_action in ("click[small]", "click[large]"):
      return "<action>click[buy now]</action>"
    return f"<action>click[{'small' if '<experience>' in content else 'large'}]</action>"

  trees, ledger = [], Ledger()
  settings = engine.ExploreSettings(max_steps=6, max_depth=1, max_attempts=2, history_length=2)
  engine.Explorer(ScriptedPolicy(respond), _env, "webshop", settings, ledger).run(["0"], trees.append)
  root, branch = trees[0].nodes
  assert [t.action for t in root.turns] == ["search[red cotton t-shirt]", "click[b001]", "click[large]",
                                            "click[buy now]"]
  assert root.outcome == "failure" and branch.rollback_step == 3
  assert [t.action for t in branch.turns] == ["click[small]", "click[buy now]"]
  assert branch.outcome == "success" and ledger.total["divergences"] == 0
  assert ledger.total["replayed_steps"] == 2


@pytest.mark.skipif(not os.environ.get("WEBSHOP_ROOT"),
                    reason="set WEBSHOP_ROOT (and WEBSHOP_PYTHON) to run against an installed WebShop")
def test_an_installed_webshop_plays_an_episode_to_a_score():
  """Opt-in: the real package (README, Table 1 WebShop) through the same client, one episode to a purchase."""
  env = WebShopEnv()
  assert env.reset("0") == "Search" and env.admissible_actions() == ["search[<your query>]"]
  assert env.step(f"search[{env.instruction}]").observation.startswith("Back to Search [SEP] Page 1")
  buttons = {"click[back to search]", "click[next >]", "click[< prev]"}
  env.step(next(a for a in env.admissible_actions() if a not in buttons))  # the first product link
  assert "click[buy now]" in env.admissible_actions()
  bought = env.step("click[buy now]")
  assert bought.done and 0.0 <= bought.reward <= 1.0 and bought.success == (bought.reward == 1.0)
