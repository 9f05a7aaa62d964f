"""GRPO: advantages and the clipped loss against hand/numpy computations; the stage end to end on a bandit."""

import json
import os
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from leafe_jax import models
from leafe_jax.baselines import tiny_tokenizer
from leafe_jax.envs import registry
from leafe_jax.envs.base import INVALID_ACTION, Step
from leafe_jax.envs.prompts import PromptTemplate
from leafe_jax.train import grpo, grpo_stage, targets
from leafe_jax.train import loss as loss_lib


def test_group_advantages_normalise_within_the_group_with_bessels_std():
  got = grpo.group_advantages([1.0, 0.0, 0.0, 1.0])
  std = np.sqrt(4 * 0.25 / 3)  # sample std of the rewards around their mean 0.5
  np.testing.assert_allclose(got, [0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rtol=1e-5)
  np.testing.assert_array_equal(grpo.group_advantages([0.0, 0.0, 0.0]), [0.0, 0.0, 0.0])
  # Exactly 0 also where the mean rounds (three rewards of -0.1): an all-equal group is skipped, not trained.
  assert not np.any(grpo.group_advantages([-0.1, -0.1, -0.1]))
  np.testing.assert_allclose(grpo.group_advantages([0.7]), [0.7], rtol=1e-6)  # no baseline in a group of one


def test_rows_put_the_advantage_on_response_tokens_and_left_truncate_long_prompts():
  turns = [grpo.Turn((5, 6, 7), (8, 9), 0.5), grpo.Turn(tuple(range(1, 11)), (11,), -1.0)]
  rows, truncated = grpo.build_rows(turns, seq_len=6, pad_id=0, pack=False)
  assert truncated == 1
  np.testing.assert_array_equal(rows["input_ids_BxT"], [[5, 6, 7, 8, 9, 0], [6, 7, 8, 9, 10, 11]])
  np.testing.assert_array_equal(rows["loss_mask_BxT"], [[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]])
  np.testing.assert_array_equal(rows["advantage_BxT"], [[0, 0, 0, 0.5, 0.5, 0], [0, 0, 0, 0, 0, -1]])
  batch = grpo.gather_targets(rows, width=2)
  # Position t predicts token t+1: row 0's targets 8, 9 are predicted from positions 2, 3; row 1's 11 from 4.
  np.testing.assert_array_equal(batch[loss_lib.TARGET_INDEX], [[2, 3], [4, 5]])
  np.testing.assert_array_equal(batch["valid_BxN"], [[1, 1], [1, 0]])
  np.testing.assert_array_equal(batch["advantage_BxN"], [[0.5, 0.5], [-1, 0]])
  with pytest.raises(ValueError, match="does not fit seq_len=6"):
    grpo.build_rows([grpo.Turn((1,), tuple(range(6)), 1.0)], seq_len=6, pad_id=0)


def _tiny_model(seed):
  """(apply_fn, params) of a random 1-layer decoder over a 16-token vocabulary."""
  cfg = models.ModelConfig(vocab_size=16, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                           d_ff=32)
  model = models.Decoder(cfg)
  apply_fn = lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0]
  return apply_fn, models.init_params(cfg, jax.random.PRNGKey(seed))


def test_packed_rows_give_each_turn_the_log_probs_it_has_alone():
  apply_fn, params = _tiny_model(1)
  turns = [grpo.Turn((1, 2, 3), (4, 5), 1.0), grpo.Turn((6, 7), (8,), -1.0), grpo.Turn((9, 3, 2, 1), (10, 11), 2.0)]
  packed, _ = grpo.build_rows(turns, seq_len=12, pad_id=0)
  alone, _ = grpo.build_rows(turns, seq_len=12, pad_id=0, pack=False)
  assert len(packed["input_ids_BxT"]) == 2 and len(alone["input_ids_BxT"]) == 3
  np.testing.assert_array_equal(packed["segment_ids_BxT"][0], [1] * 5 + [2] * 3 + [0] * 4)

  def per_token(rows):
    batch = {k: jnp.asarray(v) for k, v in grpo.gather_targets(rows, width=12).items()}
    logp = np.asarray(jax.jit(lambda p, b: grpo.token_logprobs(apply_fn, p, b))(params, batch))
    valid = np.asarray(batch["valid_BxN"]) > 0
    return logp[valid], np.asarray(batch["advantage_BxN"])[valid]

  (lp_packed, adv_packed), (lp_alone, adv_alone) = per_token(packed), per_token(alone)
  np.testing.assert_allclose(lp_packed, lp_alone, atol=1e-5)
  np.testing.assert_array_equal(adv_packed, adv_alone)
  np.testing.assert_array_equal(adv_alone, [1, 1, -1, 2, 2])


def test_row_buckets_pad_at_most_a_quarter_and_keep_the_multiple():
  assert [grpo.bucket_rows(n, 2) for n in (1, 3, 5, 9, 820, 1024)] == [2, 4, 6, 10, 896, 1024]
  assert grpo.bucket_rows(13, 8) == 16 and grpo.bucket_rows(17, 8) == 24
  assert all(grpo.bucket_rows(n, 4) % 4 == 0 and n <= grpo.bucket_rows(n, 4) <= max(n + 4, 1.34 * n)
             for n in range(1, 300))


def _numpy_grpo_loss(logits, batch, clip_eps, kl_coef):
  total, count = 0.0, 0.0
  ids = batch["input_ids_BxT"]
  for b in range(ids.shape[0]):
    for n, t in enumerate(batch[loss_lib.TARGET_INDEX][b]):
      if not batch["valid_BxN"][b, n]:
        continue
      row = logits[b, t].astype(np.float64)
      logp = row[ids[b, t + 1]] - (np.log(np.sum(np.exp(row - row.max()))) + row.max())
      ratio = np.exp(logp - batch["old_logprob_BxN"][b, n])
      adv = batch["advantage_BxN"][b, n]
      surrogate = min(ratio * adv, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
      d = batch["ref_logprob_BxN"][b, n] - logp
      total += -surrogate + kl_coef * min(np.exp(d) - d - 1, grpo.KL_CLAMP)  # verl clamps the estimate
      count += 1
  return total / count


def test_clipped_loss_with_kl_equals_numpy():
  rng = np.random.default_rng(0)
  rows, _ = grpo.build_rows([grpo.Turn((1, 2, 3), (4, 5, 6), 1.5), grpo.Turn((2, 3), (7, 1), -0.8)], 8, 0)
  batch = grpo.gather_targets(rows, width=4)
  logits = rng.normal(size=(2, 8, 9)).astype(np.float32) * 2
  # Old log-probs far enough from the current ones that some ratios leave [1 - eps, 1 + eps].
  batch["old_logprob_BxN"] = rng.normal(-2.5, 0.6, size=(2, 4)).astype(np.float32)
  batch["ref_logprob_BxN"] = rng.normal(-2.0, 0.5, size=(2, 4)).astype(np.float32)
  apply_fn = lambda params, ids, logits_positions=None, **_: jnp.take_along_axis(
      params, logits_positions[..., None], axis=1)
  loss, aux = grpo.make_policy_loss_fn(apply_fn, clip_eps=0.2, kl_coef=0.05)(
      jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()})
  np.testing.assert_allclose(float(loss), _numpy_grpo_loss(logits, batch, 0.2, 0.05), rtol=1e-5)
  assert 0.0 < float(aux["clip_fraction"]) < 1.0 and float(aux["tokens"]) == 5.0


def test_a_reference_far_above_the_policy_gives_a_finite_gradient():
  # log(ref / policy) of 100 nats: exp overflows unless the log-ratio is clamped first (then 0 * inf = NaN).
  rows, _ = grpo.build_rows([grpo.Turn((1, 2), (3, 4), 1.0)], 6, 0)
  batch = {k: jnp.asarray(v) for k, v in grpo.gather_targets(rows, width=6).items()}
  logits = jnp.zeros((1, 6, 9), jnp.float32).at[:, :, 3].set(-120.0)
  batch["old_logprob_BxN"] = jnp.full((1, 6), -2.0)
  batch["ref_logprob_BxN"] = jnp.zeros((1, 6))
  apply_fn = lambda params, ids, logits_positions=None, **_: jnp.take_along_axis(
      params, logits_positions[..., None], axis=1)
  grads = jax.grad(lambda p: grpo.make_policy_loss_fn(apply_fn, 0.2, 0.01)(p, batch)[0])(logits)
  assert np.isfinite(np.asarray(grads)).all()


def test_minibatches_share_the_real_rows_and_are_filled_with_the_padding_ones():
  rng = np.random.default_rng(0)
  for num_real, num_rows, minibatches in ((5, 8, 4), (8, 8, 2), (9, 16, 4)):
    picks = grpo.minibatch_rows(num_real, num_rows, minibatches, rng)
    assert len(picks) == minibatches and all(len(p) == num_rows // minibatches for p in picks)
    assert sorted(np.concatenate(picks).tolist()) == list(range(num_rows))  # every row once
    real = [int(np.sum(p < num_real)) for p in picks]
    assert max(real) - min(real) <= 1 and sum(real) == num_real


def test_a_minibatch_that_would_hold_padding_alone_is_left_out():
  # 1 real row for 2 minibatches of 4 rows: one optimizer step, not a second one on a zero gradient.
  picks = grpo.minibatch_rows(1, 8, 2, np.random.default_rng(0))
  assert [p.tolist() for p in picks] == [[0, 1, 2, 3]]
  picks = grpo.minibatch_rows(2, 12, 3, np.random.default_rng(0))
  assert len(picks) == 2 and all(len(p) == 4 and np.sum(p < 2) == 1 for p in picks)


def test_one_update_raises_the_rewarded_response_and_lowers_the_other():
  apply_fn, params = _tiny_model(0)
  rows, _ = grpo.build_rows([grpo.Turn((1, 2, 3), (4, 5), 1.0), grpo.Turn((1, 2, 3), (6, 7), -1.0)], 8, 0)
  batch = {k: jnp.asarray(v) for k, v in grpo.gather_targets(rows, width=2).items()}
  logprobs = jax.jit(lambda p, b: grpo.token_logprobs(apply_fn, p, b))  # one program each, not op by op
  before = logprobs(params, batch)
  batch["old_logprob_BxN"] = batch["ref_logprob_BxN"] = before
  grads = jax.jit(jax.grad(lambda p: grpo.make_policy_loss_fn(apply_fn, 0.2, 0.01)(p, batch)[0]))(params)
  tx = optax.sgd(0.5)
  params = optax.apply_updates(params, tx.update(grads, tx.init(params))[0])
  after = logprobs(params, batch)
  gain = np.asarray((after - before).sum(axis=1))
  assert gain[0] > 0 > gain[1], gain


class BanditEnv:
  """One step: a response containing the letter "u" means "up" and succeeds, any other means "down" and fails.

  Even a random tiny model sometimes succeeds, so every group has mixed rewards and GRPO has a signal.
  """

  name = "bandit"
  # The instruction and the observation alone: prompts of a few tokens, so a 64-token cache serves them and many
  # turns share a 128-token row (one row bucket, one compiled update, whatever the number of turns).
  prompt_template = PromptTemplate()

  def parse_action(self, text):
    return "up" if "u" in text else "down"

  def tasks(self, split):
    return [f"{split}-{i}" for i in range(8)]

  def reset(self, task_id):
    return "Up or down?"

  def step(self, action):
    if action not in ("up", "down"):
      return Step(INVALID_ACTION, 0.0, True, False)
    return Step("done", float(action == "up"), True, action == "up")

  @property
  def instruction(self):
    return "Say up."

  def admissible_actions(self):
    return ["up", "down"]


def _grpo_config(tmp_path, **overrides):
  tok = tmp_path / "tok"
  if not tok.exists():
    tiny_tokenizer.train_tokenizer(["<action>up</action> <action>down</action> Up or down? Say up."] * 30,
                                   vocab_size=300, out_dir=str(tok), model_max_length=512)
  c = ml_collections.ConfigDict({"grpo": grpo_stage.default_config()})
  g = c.grpo
  g.init, g.tokenizer, g.env, g.split, g.num_tasks = "random", str(tok), "bandit", "train", 8
  g.model = ml_collections.ConfigDict(dict(vocab_size=300, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                           head_dim=16, d_ff=64, family="llama"))
  g.mesh, g.dtype, g.param_dtype = (-1, 1, 1), "float32", "float32"
  g.tasks_per_iteration, g.group_size, g.num_iterations, g.max_steps = 4, 4, 2, 1
  g.max_new_tokens, g.max_cache_len, g.seq_len, g.lr = 8, 64, 384, 1e-3
  g.async_checkpoint = False
  for key, value in overrides.items():
    g[key] = value
  return c


@pytest.fixture
def bandit(monkeypatch):
  monkeypatch.setitem(registry._REGISTRY, "bandit", f"{__name__}:BanditEnv")


def _json(path):
  with open(path) as f:
    return json.load(f)


def _params(stage_dir):
  from safetensors.numpy import load_file

  return load_file(os.path.join(stage_dir, "hf", "model.safetensors"))


def test_stage_learns_the_bandit(tmp_path, bandit):
  out = tmp_path / "out"
  began = time.perf_counter()
  grpo_stage.run(_grpo_config(tmp_path, num_iterations=6, lr=5e-2, kl_coef=0.0, tasks_per_iteration=8,
                              group_size=8, checkpoint_every=6), str(tmp_path), str(out))
  elapsed = time.perf_counter() - began
  ledger = _json(out / "ledger.json")["total"]
  assert ledger["turns"] > 0  # mixed groups: updates happened
  # A random policy says "u" in about 3% of responses; after 6 iterations GRPO says it in almost all.
  with open(out / "iterations.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert rows[0]["success"] < 0.2 and rows[-1]["success"] > 0.9, [r["success"] for r in rows]
  # The clocks: each iteration's rollout is part of it, and the iterations are part of the run.
  assert all(0 < r["rollout_s"] <= r["iteration_s"] for r in rows)
  assert sum(r["iteration_s"] for r in rows) <= elapsed


def test_stage_runs_resumes_to_the_same_params_and_counts_the_budget(tmp_path, bandit):
  # A budget of 20 env steps: iteration 1 plays 4 tasks x 4 episodes of one step (16), and the 4 left are one
  # task's group, so iteration 2 plays one task and the budget ends the run before its 5 iterations.
  budgeted = dict(num_iterations=5, env_step_budget=20, checkpoint_every=5)
  whole = tmp_path / "whole"
  grpo_stage.run(_grpo_config(tmp_path, **budgeted), str(tmp_path), str(whole))
  ledger = _json(whole / "ledger.json")
  assert ledger["iterations"] == 2 and ledger["total"]["env_steps"] == 20
  assert ledger["total"]["turns"] > 0
  assert sorted(os.listdir(whole / "checkpoints")) == ["2"]  # saved when the budget ended the run
  split = tmp_path / "split"
  grpo_stage.run(_grpo_config(tmp_path, num_iterations=1), str(tmp_path), str(split))
  grpo_stage.run(_grpo_config(tmp_path, **budgeted), str(tmp_path), str(split))  # resumes at iteration 1
  assert _json(split / "ledger.json") == ledger
  want, got = _params(whole), _params(split)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


class CoinEnv(BanditEnv):
  """Rewards a response of even length: about half of a random policy's episodes succeed, so nearly every
  group is mixed and every episode's turn is a training row."""

  def parse_action(self, text):
    return "up" if len(text) % 2 == 0 else "down"


class NoSignalEnv(BanditEnv):
  """Every episode fails: every group scores alike, so no iteration has a row to train on."""

  def parse_action(self, text):
    return "down"


def test_the_lr_schedule_follows_the_iterations_when_they_skip_updates(tmp_path, monkeypatch):
  # The schedule used to count the updates taken, so iterations without a signal held warmup (and a cosine's
  # decay) back; it counts `minibatches` updates per iteration, the iterations the config names.
  monkeypatch.setitem(registry._REGISTRY, "bandit", f"{__name__}:NoSignalEnv")
  out = tmp_path / "out"
  grpo_stage.run(_grpo_config(tmp_path, num_iterations=3, minibatches=2, warmup_steps=4, lr=1e-2),
                 str(tmp_path), str(out))
  with open(out / "iterations.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["updates"] for r in rows] == [0, 0, 0]
  # Each iteration's first update would be step 2 * i of the warmup over 4 steps.
  np.testing.assert_allclose([r["lr"] for r in rows], [0.0, 1e-2 * 2 / 4, 1e-2], rtol=1e-6)


def test_micro_batches_give_the_update_of_the_whole_minibatch_in_one_pass(tmp_path, monkeypatch):
  monkeypatch.setitem(registry._REGISTRY, "coin", f"{__name__}:CoinEnv")
  runs = {}
  for micro in (0, 1):  # 16 rows (one turn each, unpacked): one pass of 16, or two of 8 (1 per device of 8)
    out = tmp_path / f"micro{micro}"
    grpo_stage.run(_grpo_config(tmp_path, env="coin", num_iterations=1, pack=False, micro_batch_rows_per_shard=micro,
                                lr=1e-2, kl_coef=0.1), str(tmp_path), str(out))
    (row,) = [json.loads(line) for line in (out / "iterations.jsonl").read_text().splitlines()]
    runs[micro] = row, _params(out)
  (whole, whole_params), (micro, micro_params) = runs[0], runs[1]
  assert whole["rows"] == micro["rows"] == 16 and (whole["micro_batches"], micro["micro_batches"]) == (1, 2)
  for key in ("loss", "pg_loss", "kl", "tokens", "grad_norm"):
    np.testing.assert_allclose(micro[key], whole[key], rtol=1e-5, atol=1e-7, err_msg=key)
  # AdamW's first step moves a weight by ~lr x sign(grad) whatever the gradient's size, so a gradient that is ~0
  # up to rounding can move it anywhere within lr x 1e-3: atol scales with lr.
  for name in whole_params:
    np.testing.assert_allclose(micro_params[name], whole_params[name], rtol=1e-5, atol=1e-5, err_msg=name)
  assert whole["tokens"] > 0 and whole["grad_norm"] > 1e-3  # a real update, not two unchanged inits


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_new_tokens", 600, "grpo.max_new_tokens"),
    ("tasks_per_iteration", 9, "grpo.tasks_per_iteration"),
    ("clip_eps", 1.5, "grpo.clip_eps"),
    ("kl_coef", -1.0, "grpo.kl_coef"),
    ("micro_batch_rows_per_shard", -1, "grpo.micro_batch_rows_per_shard"),
    ("schedule", "cosine", "grpo.schedule' cannot be cosine with an interaction budget"),
    ("temperature", -1.0, "grpo.temperature' must be >= 0"),
    ("top_p", 1.7, r"grpo.top_p' must be in \(0, 1\]"),
    ("lr", -1e-6, "grpo.lr' must be >= 0"),
])
def test_bad_values_are_refused_before_any_work(tmp_path, field, value, message):
  config = _grpo_config(tmp_path, **{field: value}, env_step_budget=100)
  with pytest.raises(ValueError, match=message):
    grpo_stage.run(config, str(tmp_path), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_a_budget_below_one_tasks_worst_case_is_refused_before_any_work(tmp_path):
  # The test config's task: 4 episodes x 1 step. 3 steps could not play it: the run would train on nothing.
  with pytest.raises(ValueError, match=r"grpo.env_step_budget' holds not one task's group .* = 4 steps"):
    grpo_stage.run(_grpo_config(tmp_path, env_step_budget=3), str(tmp_path), str(tmp_path / "out"))
  _ledger(tmp_path / "ledger.json", 2, 1)
  with pytest.raises(ValueError, match=r"budget_from_ledger=.*ledger.json'.* its 3 steps hold not one task"):
    grpo_stage.run(_grpo_config(tmp_path, budget_from_ledger="ledger.json"), str(tmp_path), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_index_width_for_responses_is_a_configured_fraction():
  assert targets.index_width(8, 256, (0.125, 0.5)) == 32


def test_an_iteration_plays_only_the_tasks_whose_worst_case_fits_the_remaining_budget():
  # A task's worst case: 8 episodes x 15 steps = 120.
  assert grpo_stage.tasks_within_budget(0, 1600, 8, 32, 15) == 32  # no budget
  assert grpo_stage.tasks_within_budget(5000, 0, 8, 32, 15) == 32
  assert grpo_stage.tasks_within_budget(500, 0, 8, 32, 15) == 4  # 480 of 500
  assert grpo_stage.tasks_within_budget(5000, 1600, 8, 32, 15) == 28  # 3400 // 120
  # Less than one worst case left: not one more task (the former estimate played one: up to 70 steps past).
  assert grpo_stage.tasks_within_budget(1650, 1600, 8, 32, 15) == 0
  assert grpo_stage.tasks_within_budget(1650, 1700, 8, 32, 15) == 0


def test_the_budget_from_a_sharded_explore_run_sums_its_shard_ledgers(tmp_path):
  from leafe_jax.train import grpo_stage

  for i, (steps, replayed) in enumerate(((30, 4), (25, 6))):
    (tmp_path / f"ledger-shard-{i}-of-2.json").write_text(
        json.dumps({"total": {"env_steps": steps, "replayed_steps": replayed}}))
  assert grpo_stage.ledger_budget(str(tmp_path)) == 30 + 4 + 25 + 6
  assert grpo_stage.ledger_budget(str(tmp_path / "ledger-shard-0-of-2.json")) == 34
  (tmp_path / "trees").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no ledger"):
    grpo_stage.ledger_budget(str(tmp_path / "trees"))


# One process of a GRPO run over jax.distributed (the stage joins with config.train.distributed); argv: port,
# process count, process id, this tests folder, the run's workdir.
_MULTI_PROCESS_GRPO = textwrap.dedent(
    """
    import pathlib, sys
    import ml_collections
    from leafe_jax.envs import registry
    from leafe_jax.parallel import distributed
    from leafe_jax.train import grpo_stage

    port, nproc, pid, tests_dir, workdir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]
    sys.path.insert(0, tests_dir)
    import test_grpo

    registry._REGISTRY["coin"] = "test_grpo:CoinEnv"  # about half the episodes succeed: mixed groups, an update
    config = test_grpo._grpo_config(pathlib.Path(workdir).parent, lr=2e-2, env="coin")
    config.train = ml_collections.ConfigDict({"distributed": distributed.default_config()})
    if nproc > 1:
      config.train.distributed.update(mode="explicit", coordinator_address=f"localhost:{port}",
                                      num_processes=nproc, process_id=pid)
    grpo_stage.run(config, workdir, workdir + "/grpo")
    import jax
    assert jax.process_count() == nproc, jax.process_count()
    """
)


# ~75 s on 2 cores (three processes): the default suite keeps the two-process explore/eval sampling and the
# two-process training loss (tests/test_distributed.py), the two halves of this run.
@pytest.mark.slow
def test_two_processes_play_and_train_as_one_process_on_the_same_global_mesh(tmp_path):
  from test_distributed import _free_port, _launch_with, _result_of

  _grpo_config(tmp_path)  # the tokenizer, written once before the processes share it
  script = tmp_path / "grpo_mp.py"
  script.write_text(_MULTI_PROCESS_GRPO)
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  # Both runs see 4 CPU devices: 2 processes x 2, or 1 x 4.
  two = _launch_with(str(script), 2, _free_port(), devices=2, args=(tests_dir, str(tmp_path / "two")))
  one = _launch_with(str(script), 1, _free_port(), devices=4, args=(tests_dir, str(tmp_path / "one")))
  for proc in [*two, *one]:
    _result_of(proc)
  rows = {run: [json.loads(line) for line in (tmp_path / run / "grpo" / "iterations.jsonl").read_text().splitlines()]
          for run in ("two", "one")}
  assert [r["iteration"] for r in rows["two"]] == [1, 2]  # process 0 alone wrote the file, once per iteration
  for got, want in zip(rows["two"], rows["one"], strict=True):
    # The same rollouts (sampled on the global mesh) and the same rows; the updates agree to rounding.
    for key in ("successes", "env_steps", "generated_tokens", "turns", "rows"):
      assert got[key] == want[key], key
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, atol=1e-7)
  assert rows["one"][0]["turns"] > 0  # mixed groups: the update ran
  assert _json(tmp_path / "two" / "grpo" / "ledger.json") == _json(tmp_path / "one" / "grpo" / "ledger.json")
  want, got = _params(tmp_path / "one" / "grpo"), _params(tmp_path / "two" / "grpo")
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def _ledger(path, steps, replayed=0, per_task=None):
  path.write_text(json.dumps({"total": {"env_steps": steps, "replayed_steps": replayed},
                              "per_task": per_task or {"t": {"successes": 1}}}))


def test_budget_from_ledger_refuses_a_sharded_run_with_a_shard_not_finished(tmp_path):
  _ledger(tmp_path / "ledger-shard-0-of-2.json", 30, 4)  # shard 1 still running: no ledger yet
  with pytest.raises((RuntimeError, ValueError, FileNotFoundError), match="shard"):
    grpo_stage.ledger_budget(str(tmp_path))  # was 34: half the interaction LEAFE spends


def test_budget_from_ledger_refuses_ledgers_of_two_shard_counts(tmp_path):
  _ledger(tmp_path / "ledger.json", 60)  # an earlier one-shard explore of the same tasks
  _ledger(tmp_path / "ledger-shard-0-of-2.json", 30, 4)
  _ledger(tmp_path / "ledger-shard-1-of-2.json", 25, 6)
  with pytest.raises((RuntimeError, ValueError), match="shard"):
    grpo_stage.ledger_budget(str(tmp_path))  # was 125: both runs' interaction summed


def test_a_resumed_grpo_may_run_longer_but_refuses_other_settings(tmp_path, bandit):
  grpo_stage.run(_grpo_config(tmp_path, num_iterations=1), str(tmp_path), str(tmp_path / "grpo"))
  grpo_stage.run(_grpo_config(tmp_path, num_iterations=2), str(tmp_path), str(tmp_path / "grpo"))  # a resume
  assert [json.loads(line)["iteration"] for line in (tmp_path / "grpo" / "iterations.jsonl").read_text().splitlines()
          ] == [1, 2]
  with pytest.raises(ValueError, match=r"grpo: the checkpoints in .* \(kl_coef changed"):
    grpo_stage.run(_grpo_config(tmp_path, num_iterations=3, kl_coef=0.5), str(tmp_path), str(tmp_path / "grpo"))
