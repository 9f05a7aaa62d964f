"""The jitted sampler against transformers generate and a teacher-forced forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from leafe_jax import models, parallel
from leafe_jax.sampling import Sampler
from leafe_jax.sampling import sampler as sampler_lib

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [3]]


class Letters:
  """Test-only tokenizer: token t -> one character."""

  def decode(self, ids, skip_special_tokens=False):
    return "".join(chr(ord("a") + t % 26) for t in ids)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  torch.manual_seed(0)
  config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=None,
                       pad_token_id=None)
  reference = AutoModelForCausalLM.from_config(config).eval()
  path = str(tmp_path_factory.mktemp("tiny"))
  reference.save_pretrained(path)
  model, params = models.from_hf(path)
  return reference, model, params


def test_greedy_matches_transformers_generate_token_for_token(tiny):
  reference, model, params = tiny
  out = Sampler(model, params, max_cache_len=64).generate(PROMPTS, max_new_tokens=10, temperature=0.0)
  for prompt, (sample,) in zip(PROMPTS, out):
    expected = reference.generate(torch.tensor([prompt]), max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert list(sample.token_ids) == expected[0, len(prompt):].tolist()
    assert sample.finish_reason == "length"


def test_logprobs_equal_a_teacher_forced_forward_pass(tiny):
  _, model, params = tiny
  out = Sampler(model, params, max_cache_len=64).generate(PROMPTS, max_new_tokens=6, temperature=1.0, seed=3)
  forward = jax.jit(lambda ids: jax.nn.log_softmax(model.apply({"params": params}, ids)[0][0], axis=-1))
  for prompt, (sample,) in zip(PROMPTS, out):
    logp = forward(jnp.asarray([prompt + list(sample.token_ids)]))
    forced = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(sample.token_ids)]
    np.testing.assert_allclose(sample.logprobs, forced, atol=1e-4)


def test_seeds_n_samples_and_top_k_one(tiny):
  _, model, params = tiny
  sampler = Sampler(model, params, max_cache_len=64)
  a = sampler.generate(PROMPTS, n=3, max_new_tokens=8, temperature=1.0, seed=1)
  b = sampler.generate(PROMPTS, n=3, max_new_tokens=8, temperature=1.0, seed=1)
  c = sampler.generate(PROMPTS, n=3, max_new_tokens=8, temperature=1.0, seed=2)
  ids = lambda out: [[s.token_ids for s in row] for row in out]
  assert [len(row) for row in a] == [3, 3, 3]
  assert ids(a) == ids(b) and ids(a) != ids(c)
  greedy = sampler.generate(PROMPTS, max_new_tokens=8, temperature=0.0)
  top1 = sampler.generate(PROMPTS, max_new_tokens=8, temperature=1.0, top_k=1, seed=5)
  assert ids(greedy) == ids(top1)
  # Rows of one prompt share its prefill: greedy repeated n times is the n=1 greedy output.
  assert ids(sampler.generate(PROMPTS, n=3, max_new_tokens=8, temperature=0.0)) == [r * 3 for r in ids(greedy)]


def test_seeds_2_to_the_32_apart_sample_differently(tiny):
  _, model, params = tiny
  keys = np.asarray(sampler_lib.prompt_keys([7, 2**32 + 7, 7]))
  assert not np.array_equal(keys[0], keys[1]) and np.array_equal(keys[0], keys[2])  # PRNGKey alone: both [0, 7]
  sampler = Sampler(model, params, max_cache_len=64)
  ids = lambda seed: [[s.token_ids for s in row] for row in
                      sampler.generate(PROMPTS, n=2, max_new_tokens=8, temperature=1.0, seed=seed)]
  assert ids([7, 7, 7]) != ids([2**32 + 7] * 3)
  assert ids(2**32 + 7) == ids(2**32 + 7)


def test_a_prompt_with_its_own_seed_samples_alike_whatever_else_is_in_the_call(tiny):
  # The explorer's resume redoes a task in calls with other tasks than the uninterrupted run: with one seed per
  # prompt its samples must not depend on them (they did with one key per call: a row's draw was its row's).
  _, model, params = tiny
  sampler = Sampler(model, params, max_cache_len=64)
  ids = lambda out: [[s.token_ids for s in row] for row in out]
  alone = sampler.generate([PROMPTS[1]], n=2, max_new_tokens=8, temperature=1.0, seed=[41])
  crowded = sampler.generate([PROMPTS[0], PROMPTS[2], PROMPTS[1]], n=2, max_new_tokens=[8, 8, 8],
                             temperature=[0.7, 1.0, 1.0], seed=[40, 42, 41])
  assert ids(crowded)[2] == ids(alone)[0]
  assert alone[0][0].token_ids != alone[0][1].token_ids  # the n samples of a prompt draw apart
  # One seed for the call is spread over the prompts: prompt i of the call draws with seed * 2^20 + i.
  assert ids(sampler.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=3)) == ids(
      sampler.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=[3 * 2**20 + i for i in range(3)]))
  with pytest.raises(ValueError, match="seed has 2 values for 3 prompts"):
    sampler.generate(PROMPTS, max_new_tokens=8, seed=[1, 2])


def test_eos_ends_a_row_and_stop_strings_truncate_text(tiny):
  _, model, params = tiny
  greedy = Sampler(model, params, max_cache_len=64).generate([PROMPTS[0]], max_new_tokens=8, temperature=0.0)
  tokens = greedy[0][0].token_ids
  eos = tokens[3]
  first = tokens.index(eos)
  with_eos = Sampler(model, params, eos_ids=(eos,), max_cache_len=64).generate([PROMPTS[0]], max_new_tokens=8,
                                                                               temperature=0.0)[0][0]
  assert with_eos.token_ids == tokens[:first] and with_eos.finish_reason == "eos"

  text = Letters().decode(tokens)
  stop = text[4:6]
  stopped = Sampler(model, params, tokenizer=Letters(), max_cache_len=64).generate(
      [PROMPTS[0]], max_new_tokens=8, temperature=0.0, stop_strings=(stop,))[0][0]
  assert stopped.finish_reason == "stop" and stopped.text == text[: text.find(stop)]
  assert stop in Letters().decode(stopped.token_ids) and stop not in Letters().decode(stopped.token_ids[:-1])


def test_stop_strings_per_prompt_cut_each_row_at_its_own_stop_string(tiny):
  _, model, params = tiny
  sampler = Sampler(model, params, tokenizer=Letters(), max_cache_len=64)
  prompts = PROMPTS[:2]
  texts = [row[0].text for row in sampler.generate(prompts, max_new_tokens=8, temperature=0.0)]
  stops = [[texts[0][4:6]], [texts[1][2:4], "never"]]
  assert stops[0][0] not in texts[1]  # else row 1 would stop at row 0's string too, hiding a mix-up
  # A tuple of lists is what JaxPolicy.generate passes (tuple(stop)).
  per_prompt = sampler.generate(prompts, max_new_tokens=8, temperature=0.0, stop_strings=tuple(stops))
  for prompt, text, stop, (sample,) in zip(prompts, texts, stops, per_prompt):
    assert sample.finish_reason == "stop" and sample.text == text[: text.find(stop[0])]
    (alone,), = sampler.generate([prompt], max_new_tokens=8, temperature=0.0, stop_strings=stop)
    # Alone the prompt is padded to another length: its log-probs may differ by float rounding.
    assert (alone.token_ids, alone.text, alone.finish_reason) == (sample.token_ids, sample.text, sample.finish_reason)
    np.testing.assert_allclose(alone.logprobs, sample.logprobs, atol=1e-5)
  no_stop_for_row_0 = sampler.generate(prompts, max_new_tokens=8, temperature=0.0, stop_strings=[[], stops[1]])
  assert no_stop_for_row_0[0][0].finish_reason == "length" and no_stop_for_row_0[0][0].text == texts[0]
  # A flat list is for every prompt.
  flat = sampler.generate(prompts, max_new_tokens=8, temperature=0.0, stop_strings=stops[0])
  assert [row[0].finish_reason for row in flat] == ["stop", "length"]
  with pytest.raises(ValueError, match=r"one list per prompt \(2 lists\)"):
    sampler.generate(prompts, stop_strings=[["a"]])


def test_a_prompt_too_long_for_the_cache_is_named_with_its_index_and_lengths(tiny):
  _, model, params = tiny
  with pytest.raises(ValueError, match=r"prompt 1 of 60 tokens \+ max_new_tokens=10 = 70 exceeds .*max_cache_len=64"):
    Sampler(model, params, max_cache_len=64).generate([[1] * 3, [1] * 60], max_new_tokens=[50, 10])


def test_rows_that_each_fit_the_cache_generate_though_longest_prompt_plus_largest_budget_does_not(tiny):
  """[60 tokens, budget 4] and [3 tokens, budget 60] each fit a 64-slot cache; together they run as two groups."""
  _, model, params = tiny
  sampler = Sampler(model, params, max_cache_len=64)
  prompts, budgets = [list(range(1, 61)), [5, 6, 7]], [4, 60]
  assert sampler._length_groups([60, 3], budgets) == [[1], [0]]
  both = sampler.generate(prompts, max_new_tokens=budgets, temperature=0.0)
  for prompt, budget, (sample,) in zip(prompts, budgets, both):
    (alone,), = sampler.generate([prompt], max_new_tokens=budget, temperature=0.0)
    assert sample.token_ids == alone.token_ids and len(sample.token_ids) == budget


def test_on_cpu_the_few_rows_needing_the_next_prompt_bucket_run_apart_from_many_short_ones():
  """CPU's default factor (1.5): 60 prompts of 40 tokens (bucket 64) and 4 of 70 (bucket 128) run as two programs;
  at the accelerator default (2.0) padding all to 128 (144 slots a row instead of 80: 1.8x) is one program."""
  sampler = Sampler(model=None, params=None, max_cache_len=256, prompt_buckets=(32, 64, 128, 256))
  assert jax.default_backend() == "cpu"
  assert sampler.max_padding_factor == sampler_lib.MAX_PADDING_FACTOR_BY_BACKEND["cpu"]
  lengths, budgets = [40] * 60 + [70] * 4, [16] * 64
  assert sampler._length_groups(lengths, budgets) == [list(range(60)), list(range(60, 64))]
  sampler.max_padding_factor = sampler_lib.DEFAULT_MAX_PADDING_FACTOR
  assert sampler._length_groups(lengths, budgets) == [list(range(64))]


def test_no_length_group_needs_more_cache_than_max_cache_len():
  sampler = Sampler(model=None, params=None, max_cache_len=96, prompt_buckets=(8, 32, 64))
  rng = np.random.RandomState(0)
  for _ in range(200):
    count = rng.randint(1, 9)
    new = [int(b) for b in rng.randint(1, 60, count)]
    lengths = [int(rng.randint(1, 97 - b)) for b in new]  # every row fits on its own
    groups = sampler._length_groups(lengths, new)
    assert sorted(i for g in groups for i in g) == list(range(count))
    for g in groups:
      longest, most_new = max(lengths[i] for i in g), max(new[i] for i in g)
      prompt_len, _ = sampler._bucketed(longest, most_new)
      assert longest <= prompt_len and prompt_len + most_new <= 96, (lengths, new, g)


def test_calls_within_one_bucket_reuse_the_compiled_program(tiny):
  _, model, params = tiny
  sampler = Sampler(model, params, max_cache_len=128)
  sampler.generate([[1, 2, 3], [4]], max_new_tokens=5, temperature=0.7, top_p=0.9)
  traces = sampler_lib.trace_count()
  sampler.generate([[4, 5, 6, 7, 8, 9, 10], [1, 2]], max_new_tokens=7, temperature=0.5, top_p=0.8, seed=3)
  assert sampler_lib.trace_count() == traces
  sampler.generate([[1] * 40, [4]], max_new_tokens=5, temperature=0.7, top_p=0.9)  # next prompt bucket
  assert sampler_lib.trace_count() == traces + 1


def test_sharded_greedy_equals_unsharded(tiny):
  _, model, params = tiny
  expected = Sampler(model, params, max_cache_len=64).generate(PROMPTS * 3, max_new_tokens=6, temperature=0.0)
  sharded = Sampler(model, params, mesh=parallel.make_mesh((2, 2, 2)), max_cache_len=64)
  got = sharded.generate(PROMPTS * 3, max_new_tokens=6, temperature=0.0)
  assert [r[0].token_ids for r in got] == [r[0].token_ids for r in expected]


def test_buckets_round_up_and_fall_back_to_the_cap():
  assert sampler_lib._bucket(3, (1, 2, 4, 8)) == 4
  assert sampler_lib._bucket(40, (32, 64), cap=50) == 50  # the bucket would not fit in the cache
  assert sampler_lib._bucket(100, (32, 64), cap=200) == 200  # beyond every bucket: the largest legal size
  with pytest.raises(ValueError, match="9 exceeds the largest bucket 8"):
    sampler_lib._bucket(9, (1, 2, 4, 8))
  assert [sampler_lib._power_of_two(v) for v in (1, 2, 3, 64, 65)] == [1, 2, 4, 64, 128]


def test_greedy_choice_is_the_first_index_of_the_maximum_as_argmax():
  logits = np.asarray([[0.0, 2.0, 2.0, -1.0], [5.0, 1.0, 5.0, 5.0], [-3.0, -2.0, -1.0, -1.5]], np.float32)
  got = sampler_lib._first_max_index(jnp.asarray(logits), jnp.asarray(logits.max(-1)))
  np.testing.assert_array_equal(np.asarray(got), np.argmax(logits, -1))  # ties: numpy's first index


def test_per_prompt_settings_equal_separate_calls(tiny):
  """One call with a greedy 3-token row and a sampled 8-token row gives each row what its own call gives."""
  _, model, params = tiny
  sampler = Sampler(model, params, max_cache_len=64)
  ids = lambda out: [s.token_ids for row in out for s in row]
  mixed = sampler.generate(PROMPTS[:2], max_new_tokens=[3, 8], temperature=[0.0, 1.0], top_p=[1.0, 0.9], seed=4)
  greedy = sampler.generate(PROMPTS[:2], max_new_tokens=8, temperature=0.0)
  assert len(mixed[0][0].token_ids) == 3 and mixed[0][0].finish_reason == "length"
  assert mixed[0][0].token_ids == greedy[0][0].token_ids[:3]
  # The sampled row draws with the same per-step keys as a call whose every row is sampled like it.
  sampled = sampler.generate(PROMPTS[:2], max_new_tokens=8, temperature=1.0, top_p=0.9, seed=4)
  assert ids(mixed)[1] == ids(sampled)[1] and len(ids(mixed)[1]) == 8


def test_per_prompt_settings_must_give_one_value_per_prompt(tiny):
  _, model, params = tiny
  with pytest.raises(ValueError, match="temperature has 2 values for 3 prompts"):
    Sampler(model, params, max_cache_len=64).generate(PROMPTS, temperature=[0.0, 1.0])


def test_a_long_prompt_runs_apart_from_short_ones_with_the_same_tokens(tiny):
  """Short prompts are not padded to a long one of the same call (KV cache and prefill grow with the padding)."""
  _, model, params = tiny
  sampler = Sampler(model, params, max_cache_len=128, prompt_buckets=(8, 64))
  short, long = [[5, 6, 7]] * 4, [list(range(1, 61))]
  assert sampler._length_groups([3, 3, 60, 3, 3], [4] * 5) == [[0, 1, 3, 4], [2]]
  assert sampler._length_groups([3, 5, 7], [4] * 3) == [[0, 1, 2]]  # one bucket: one program
  mixed = sampler.generate(short[:2] + long + short[2:], max_new_tokens=4, temperature=0.0)
  alone = sampler.generate(short, max_new_tokens=4, temperature=0.0) + sampler.generate(
      long, max_new_tokens=4, temperature=0.0)
  ids = lambda out: [row[0].token_ids for row in out]
  assert ids(mixed) == [ids(alone)[i] for i in (0, 1, 4, 2, 3)]


# A known distribution over 5 token ids; by probability: 1 (0.5), 3 (0.25), 4 (0.15), 0 (0.07), 2 (0.03).
PROBS = np.asarray([0.07, 0.5, 0.03, 0.25, 0.15])
DRAWS = 4000  # per setting


def _draw(top_k, temperatures, top_ps):
  """Empirical token frequencies of DRAWS rows per (temperature, top_p) setting, from one `_choose` call."""
  logits = np.tile(np.log(PROBS).astype(np.float32), (DRAWS * len(temperatures), 1))
  temperature_B = np.repeat(np.asarray(temperatures, np.float32), DRAWS)
  top_p_B = np.repeat(np.asarray(top_ps, np.float32), DRAWS)
  keys_B = jax.random.split(jax.random.PRNGKey(0), len(logits))  # one key per row, as the sampler draws
  tokens = sampler_lib._choose(jnp.asarray(logits), jnp.asarray(logits.max(-1)), keys_B,
                               jnp.asarray(temperature_B), jnp.asarray(top_p_B), greedy=False, top_k=top_k,
                               nucleus=min(top_ps) < 1.0)
  tokens = np.asarray(tokens).reshape(len(temperatures), DRAWS)
  return np.stack([np.bincount(row, minlength=len(PROBS)) / DRAWS for row in tokens])


def _assert_frequencies(got, expected):
  # Each count is Binomial(DRAWS, p): its frequency has sd sqrt(p(1-p)/DRAWS) (<= 0.008 here); 5 sd is missed
  # with chance ~6e-7 per entry (and the key is fixed, so the test is deterministic). p = 0 must never be drawn.
  tolerance = 5 * np.sqrt(expected * (1 - expected) / DRAWS)
  assert np.all(np.abs(got - expected) <= tolerance), (got, expected)


TOP_PS = (0.3, 0.6, 0.8, 0.85, 1.0)


@pytest.mark.parametrize("top_k, kept", [
    (0, [{1}, {1, 3}, {1, 3, 4}, {1, 3, 4}, {0, 1, 2, 3, 4}]),
    (2, [{1}, {1}, {1, 3}, {1, 3}, {1, 3}]),  # top-2 renormalised: 2/3, 1/3
    # top-p applies to the top-k renormalised: 0.5/0.9 + 0.25/0.9 = 0.83 >= 0.8 already without token 4.
    (3, [{1}, {1, 3}, {1, 3}, {1, 3, 4}, {1, 3, 4}]),
])
def test_top_k_and_top_p_draw_the_tokens_transformers_keeps_at_their_renormalised_probabilities(top_k, kept):
  """The smallest most-likely set reaching top_p (at least one token), after top-k, as transformers' warpers."""
  got = _draw(top_k, [1.0] * len(TOP_PS), TOP_PS)
  for top_p, freq, want in zip(TOP_PS, got, kept):
    scores = torch.tensor(np.log(PROBS), dtype=torch.float32)[None]
    if top_k:
      scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
      scores = TopPLogitsWarper(top_p)(None, scores)
    expected = torch.softmax(scores, -1)[0].double().numpy()
    assert set(np.flatnonzero(expected)) == want  # the hand-computed sets agree with transformers
    assert set(np.flatnonzero(freq)) == want, (top_k, top_p)
    _assert_frequencies(freq, expected)


def test_temperature_shapes_the_draws_as_softmax_of_logits_over_temperature():
  temperatures = (0.5, 1.0, 2.0, 0.0)
  got = _draw(0, temperatures, [1.0] * len(temperatures))
  for t, freq in zip(temperatures[:3], got):
    expected = PROBS ** (1 / t) / np.sum(PROBS ** (1 / t))  # softmax(log p / t), by hand
    scaled = TemperatureLogitsWarper(t)(None, torch.tensor(np.log(PROBS))[None])
    np.testing.assert_allclose(torch.softmax(scaled, -1)[0].numpy(), expected, rtol=1e-12)
    _assert_frequencies(freq, expected)
  np.testing.assert_array_equal(got[3], np.eye(len(PROBS))[1])  # temperature 0: the argmax, every time


def test_top_p_zero_is_greedy_and_a_top_k_above_the_vocabulary_keeps_everything(tiny):
  # transformers' TopPLogitsWarper(0.0) keeps the most likely token, and its top-k caps k at the vocabulary.
  _, model, params = tiny
  sampler = Sampler(model, params, max_cache_len=64)
  ids = lambda out: [[s.token_ids for s in row] for row in out]
  greedy = sampler.generate(PROMPTS, max_new_tokens=8, temperature=0.0)
  assert ids(sampler.generate(PROMPTS, max_new_tokens=8, temperature=1.0, top_p=0.0, seed=4)) == ids(greedy)
  assert (ids(sampler.generate(PROMPTS, max_new_tokens=8, temperature=1.0, top_k=1000, seed=4))
          == ids(sampler.generate(PROMPTS, max_new_tokens=8, temperature=1.0, top_k=0, seed=4)))


def test_a_stop_string_inside_another_stops_where_it_completes(tiny):
  # As a streaming server: generation stops at the first token that completes any stop string (here the inner
  # one), and the text ends before the earliest stop string of what was generated up to there.
  _, model, params = tiny
  sampler = Sampler(model, params, tokenizer=Letters(), max_cache_len=64)
  (greedy,), = sampler.generate([PROMPTS[0]], max_new_tokens=8, temperature=0.0)
  text = greedy.text
  outer, inner = text[2:7], text[3:5]  # inner completes at token 5, outer at token 7
  assert text.find(outer) == 2 and text.find(inner) == 3
  (sample,), = sampler.generate([PROMPTS[0]], max_new_tokens=8, temperature=0.0, stop_strings=[outer, inner])
  assert sample.token_ids == greedy.token_ids[:5] and sample.text == text[:3] and sample.finish_reason == "stop"


@pytest.mark.parametrize("chunk, buckets", [(8, sampler_lib.DEFAULT_PROMPT_BUCKETS), (16, (24, 48))])
def test_a_prefill_in_chunks_generates_what_transformers_does(tiny, chunk, buckets):
  """Prompts of 3, 13 and 29 tokens prefilled 8 (or 16, after a remainder chunk of 8: bucket 24) positions at a
  time, left-padded rows whose first chunks are all padding included."""
  reference, model, params = tiny
  prompts = [list(range(5, 8)), list(range(20, 33)), list(range(40, 69))]
  sampler = Sampler(model, params, max_cache_len=64, prefill_chunk=chunk, prompt_buckets=buckets,
                    max_padding_factor=100.0)  # one program: every row padded to the longest prompt
  out = sampler.generate(prompts, max_new_tokens=6, temperature=0.0)
  forward = jax.jit(lambda ids: jax.nn.log_softmax(model.apply({"params": params}, ids)[0][0], axis=-1))
  for prompt, (sample,) in zip(prompts, out):
    expected = reference.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert list(sample.token_ids) == expected[0, len(prompt):].tolist()
    logp = forward(jnp.asarray([prompt + list(sample.token_ids)]))
    forced = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(sample.token_ids)]
    np.testing.assert_allclose(sample.logprobs, forced, atol=1e-4)


def test_a_chunked_prefill_holds_one_chunk_of_activations():
  config = models.ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=1, num_kv_heads=1, head_dim=32,
                              d_ff=4096)  # a wide MLP: its [rows, positions, d_ff] activations dominate
  model = models.Decoder(config)
  params = models.init_params(config, jax.random.PRNGKey(0))
  b, p = 16, 2048
  args = (params, jnp.zeros((b, p), jnp.int32), jnp.ones((b, p), jnp.int32), sampler_lib.prompt_keys([0] * b),
          jnp.zeros(b), jnp.ones(b), jnp.ones(b, jnp.int32))
  temp = lambda chunk: sampler_lib._generate.lower(
      *args, model=model, pad_id=0, eos_ids=(), cache_len=p + 16, out_len=16, n=1, greedy=True, top_k=0,
      nucleus=False, prefill_chunk=chunk).compile().memory_analysis().temp_size_in_bytes
  mlp_activations = b * p * config.d_ff * 4  # one float32 [rows, positions, d_ff] tensor of the whole prompt
  assert temp(0) > mlp_activations  # at once: the whole prompt's activations
  assert temp(128) < mlp_activations / 4
