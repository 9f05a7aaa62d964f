"""The in-process policy over a HF directory: chat templating, greedy text vs transformers, mesh placement."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from leafe_jax.baselines.tiny_tokenizer import train_tokenizer
from leafe_jax.policy.base import PROMPT_TOO_LONG
from leafe_jax.policy.chat import encode_prompt
from leafe_jax.policy.factory import make_policy

PROMPTS = [
    [{"role": "user", "content": "#####\n#_P_#\n#_X_#\naction:"}],
    [{"role": "system", "content": "You play Sokoban."}, {"role": "user", "content": "#####\n#P_O#\naction:"}],
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("policy"))
  train_tokenizer(["#####\n#_P_#\n#_X√#\naction:", "<action>up</action>", "You play Sokoban."] * 20,
                  vocab_size=300, out_dir=path, model_max_length=512)
  tokenizer = AutoTokenizer.from_pretrained(path)
  torch.manual_seed(0)
  config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
  AutoModelForCausalLM.from_config(config).save_pretrained(path)
  return path


def test_greedy_completion_equals_transformers_generate_on_the_chat_prompt(hf_dir):
  policy = make_policy(hf_dir, "/unused", max_cache_len=128)
  tokenizer = AutoTokenizer.from_pretrained(hf_dir)
  reference = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
  out = policy.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=8)
  for messages, (completion,) in zip(PROMPTS, out):
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    expected = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = expected[0, len(ids):].tolist()
    assert list(completion.token_ids) == new
    assert completion.text == tokenizer.decode([t for t in new if t != tokenizer.eos_token_id])


@pytest.mark.parametrize("mesh_shape", [(2, 1, 4), (1, 1, -1)])
def test_policy_on_a_mesh_gives_the_single_device_samples(hf_dir, mesh_shape):
  single = make_policy(hf_dir, "/unused", max_cache_len=128)
  sharded = make_policy(hf_dir, "/unused", max_cache_len=128, mesh_shape=mesh_shape)
  want = single.generate(PROMPTS * 2, n=2, temperature=1.0, max_new_tokens=6, seed=7)
  got = sharded.generate(PROMPTS * 2, n=2, temperature=1.0, max_new_tokens=6, seed=7)
  assert [[c.token_ids for c in row] for row in got] == [[c.token_ids for c in row] for row in want]


def test_bad_policy_mesh_names_the_field(hf_dir):
  with pytest.raises(ValueError, match="config field 'eval.policy_mesh'"):
    make_policy(hf_dir, "/unused", mesh_shape=(3, 1), field="eval.policy")


def test_a_prompt_that_does_not_fit_the_cache_is_answered_prompt_too_long_and_the_rest_are_served(hf_dir):
  policy = make_policy(hf_dir, "/unused", max_cache_len=64)
  long_prompt = [{"role": "user", "content": "#####\n#_P_#\n#_X_#\n" * 12 + "action:"}]
  assert len(encode_prompt(policy.tokenizer, long_prompt)) + 8 > 64
  alone = policy.generate(PROMPTS, n=2, temperature=[0.0, 0.0], max_new_tokens=8)
  mixed = policy.generate([PROMPTS[0], long_prompt, PROMPTS[1]], n=2, temperature=[0.0, 1.0, 0.0],
                          max_new_tokens=[8, 8, 8])
  assert [c.finish_reason for c in mixed[1]] == [PROMPT_TOO_LONG] * 2
  assert all(c.text == "" and c.token_ids == () for c in mixed[1])
  assert [[c.token_ids for c in row] for row in (mixed[0], mixed[2])] == [[c.token_ids for c in row] for row in alone]
  (only,) = policy.generate([long_prompt], max_new_tokens=8)
  assert [c.finish_reason for c in only] == [PROMPT_TOO_LONG]
  # One stop list per prompt: the served prompts keep their own.
  per_prompt = policy.generate([PROMPTS[0], long_prompt, PROMPTS[1]], temperature=0.0, max_new_tokens=8,
                               stop=[["never-a"], ["never-b"], ["never-c"]])
  assert [row[0].finish_reason for row in per_prompt][1] == PROMPT_TOO_LONG
  assert [row[0].token_ids for row in (per_prompt[0], per_prompt[2])] == [row[0].token_ids for row in alone]


def test_prefill_chunk_reaches_the_sampler_and_leaves_the_samples_alike(hf_dir):
  prompts = [[{"role": "user", "content": "a longer prompt " * 6}], [{"role": "user", "content": "hi"}]]
  whole = make_policy(hf_dir, "/unused", max_cache_len=256, prefill_chunk=0)
  chunked = make_policy(hf_dir, "/unused", max_cache_len=256, prefill_chunk=8)
  assert (whole.sampler.prefill_chunk, chunked.sampler.prefill_chunk) == (0, 8)
  ask = lambda policy: [c.token_ids for (c,) in policy.generate(prompts, max_new_tokens=8, temperature=0.0)]
  assert ask(chunked) == ask(whole)
