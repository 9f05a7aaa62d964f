"""Policy clients that need no model: chat encoding, the tiny tokenizer, the OpenAI-compatible client."""

import hashlib
import http.server
import json
import threading

import pytest
from transformers import AutoTokenizer

from leafe_jax.baselines.tiny_tokenizer import train_tokenizer
from leafe_jax.envs import Step
from leafe_jax.explore import engine
from leafe_jax.explore.ledger import Ledger
from leafe_jax.policy import chat
from leafe_jax.policy.base import PROMPT_TOO_LONG, Completion
from leafe_jax.policy.chat import encode_prompt, encode_turn
from leafe_jax.policy.openai_policy import OpenAIPolicy, PolicyServerError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  out = tmp_path_factory.mktemp("tok")
  corpus = ["Grid:\n#####\n#_P_#\n#_X√#\nAction?", "<think>go</think><action>up</action>"] * 20
  train_tokenizer(corpus, vocab_size=300, out_dir=str(out), model_max_length=512)
  return AutoTokenizer.from_pretrained(str(out))


def test_tiny_tokenizer_round_trips_text_exactly(tokenizer):
  text = "Grid:\n#_√S_#\n<action>left</action> unseen words ünïcode"
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_turn_masks_exactly_the_response_and_end_of_turn(tokenizer):
  messages = [{"role": "user", "content": "Grid:\n#_P_#\nAction?"}]
  ids, mask = encode_turn(tokenizer, messages, "<action>up</action>")
  prompt = encode_prompt(tokenizer, messages)
  assert ids[: len(prompt)] == prompt and mask[: len(prompt)] == [0] * len(prompt)
  target = tokenizer.decode([t for t, m in zip(ids, mask) if m])
  assert target == "<action>up</action><|im_end|>\n"


def test_batched_encode_turns_equals_transformers_tokenize_true_per_turn(tokenizer, monkeypatch):
  monkeypatch.setattr(chat, "BATCH_SIZE", 2)  # 5 distinct turns: three batched tokenizer calls
  turns = [([{"role": "user", "content": f"Grid:\n#_P{'_' * i}#\nAction?"}], f"<action>{a}</action>")
           for i, a in enumerate(["up", "down", "left", "right", "up"])]
  turns[3] = ([{"role": "system", "content": "Sokoban."}, *turns[3][0],
               {"role": "assistant", "content": "<action>up</action>"}, {"role": "user", "content": "again"}],
              turns[3][1])
  turns += [turns[1], (list(turns[3][0]), turns[3][1])]  # repeats (the same and an equal turn) are encoded once
  encoded = chat.encode_turns(tokenizer, turns)
  assert encoded[5] == encoded[1] and encoded[5][0] is not encoded[1][0] and encoded[6] == encoded[3]
  for (messages, response), (ids, mask) in zip(turns, encoded, strict=True):
    conversation = [*messages, {"role": "assistant", "content": response}]
    want = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)
    want_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=False)
    assert ids == list(want)
    assert encode_prompt(tokenizer, messages) == list(want_prompt)
    assert mask == [0] * len(want_prompt) + [1] * (len(want) - len(want_prompt))


class _Handler(http.server.BaseHTTPRequestHandler):
  requests: list = []
  fail_first = 0
  refusals: dict = {}  # prompt content -> the HTTP 400 message answered for it

  def do_POST(self):
    payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    type(self).requests.append(payload)
    refusal = type(self).refusals.get(payload["messages"][-1]["content"])
    if refusal is not None:
      body = json.dumps({"object": "error", "message": refusal, "code": 400}).encode()
      self.send_response(400)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)
      return
    if type(self).fail_first > 0:
      type(self).fail_first -= 1
      self.send_response(503)
      self.end_headers()
      return
    prompt = payload["messages"][-1]["content"]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": f"{prompt}-{i}"},
            "finish_reason": "stop",
            "logprobs": {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.0}]},
        }
        for i in range(payload["n"])
    ]
    body = json.dumps({"choices": choices}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  _Handler.requests = []
  _Handler.fail_first = 0
  _Handler.refusals = {}
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
  httpd.shutdown()


def test_openai_policy_returns_n_completions_per_prompt_in_order(server):
  policy = OpenAIPolicy(server, "m", retry_backoff_s=0.0)
  prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(3)]
  out = policy.generate(prompts, n=2, temperature=0.4, max_new_tokens=7, stop=["</action>"], seed=5)
  assert [[c.text for c in row] for row in out] == [[f"p{i}-0", f"p{i}-1"] for i in range(3)]
  assert out[0][0].logprobs == (-0.5, -1.0)
  sent = sorted(_Handler.requests, key=lambda r: r["seed"])
  assert [r["seed"] for r in sent] == [5 * 2**20, 5 * 2**20 + 1, 5 * 2**20 + 2]
  assert sent[0]["max_tokens"] == 7 and sent[0]["stop"] == ["</action>"] and sent[0]["temperature"] == 0.4


def test_openai_policy_sends_each_prompt_its_own_settings(server):
  policy = OpenAIPolicy(server, "m", retry_backoff_s=0.0)
  prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(2)]
  policy.generate(prompts, temperature=[0.0, 0.7], top_p=0.9, max_new_tokens=[4, 64], stop=[["</action>"], []],
                  seed=1)
  sent = sorted(_Handler.requests, key=lambda r: r["seed"])
  assert [(r["temperature"], r["top_p"], r["max_tokens"]) for r in sent] == [(0.0, 0.9, 4), (0.7, 0.9, 64)]
  assert sent[0]["stop"] == ["</action>"] and "stop" not in sent[1]  # one stop list per prompt, as JaxPolicy takes


def test_openai_policy_retries_server_errors_then_succeeds(server):
  _Handler.fail_first = 2
  policy = OpenAIPolicy(server, "m", retry_backoff_s=0.0, max_retries=3)
  out = policy.generate([[{"role": "user", "content": "x"}]], n=1)
  assert out[0][0].text == "x-0" and len(_Handler.requests) == 3


def test_openai_policy_gives_up_with_a_clear_error(server):
  _Handler.fail_first = 10
  policy = OpenAIPolicy(server, "m", retry_backoff_s=0.0, max_retries=1)
  with pytest.raises(PolicyServerError, match="no answer after 2 tries"):
    policy.generate([[{"role": "user", "content": "x"}]], n=1)


def test_openai_policy_answers_a_context_length_refusal_prompt_too_long_and_serves_the_rest(server):
  # vLLM's wording of the refusal; other 400s stay errors.
  _Handler.refusals = {"long": "This model's maximum context length is 4096 tokens. However, you requested 5000 "
                               "tokens (4990 in the messages, 10 in the completion).",
                       "bad": "temperature must be non-negative"}
  policy = OpenAIPolicy(server, "m", retry_backoff_s=0.0, max_retries=3)
  out = policy.generate([[{"role": "user", "content": c}] for c in ("a", "long", "b")], n=2)
  assert [c.text for c in out[0]] == ["a-0", "a-1"] and [c.text for c in out[2]] == ["b-0", "b-1"]
  assert [(c.finish_reason, c.text) for c in out[1]] == [(PROMPT_TOO_LONG, "")] * 2
  assert sum(r["messages"][-1]["content"] == "long" for r in _Handler.requests) == 1  # not retried
  with pytest.raises(PolicyServerError, match="HTTP 400: .*temperature must be non-negative"):
    policy.generate([[{"role": "user", "content": "bad"}]])


class _ThreeTasks:
  """Tasks "a" and "c" are solved by any first action; "b" is never solved and ends after 2 steps."""

  name = "toy"
  prompt_template = None

  def tasks(self, split):
    return ["a", "c", "b"]

  def reset(self, task_id):
    self.task, self.t = task_id, 0
    return f"start of {task_id}"

  def step(self, action):
    self.t += 1
    success = self.task != "b"
    return Step(f"{self.task} after {self.t}", float(success), success or self.t >= 2, success, {})

  @property
  def instruction(self):
    return "do it"

  def admissible_actions(self):
    return None


def _seeded_server(policy, requests):
  """Makes `policy` answer like a server with per-request seeds: the sample is a function of (prompt, seed)."""

  def post(payload):
    key = (repr(payload["messages"]), payload["seed"])
    requests.append(key)
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:8]
    return {"choices": [{"index": 0, "message": {"content": f"<action>x{digest}</action>"}, "finish_reason": "stop"}]}

  policy._post = post


def test_independent_samples_through_a_seeded_server_never_repeat_a_request():
  # IS: task b's second attempt starts from the same prompt as its first. Its first attempt began at tick 0 as
  # prompt 2 of the call; its second begins at tick 2 as prompt 0 (a and c are done). With per-prompt seeds
  # `call seed + i` and call seeds `base + tick`, both get seed base + 2: a seeded server returns the same sample,
  # so the "independent" attempt repeats the first one's action and spends budget on nothing new.
  policy, requests = OpenAIPolicy("http://unused/v1", "m", max_concurrency=1), []
  _seeded_server(policy, requests)
  settings = engine.ExploreSettings(method="is", max_attempts=2, max_steps=2, history_length=0, concurrency=3,
                                    stop_on_success=True)
  trees = []
  engine.Explorer(policy, _ThreeTasks, "toy", settings, Ledger()).run(_ThreeTasks().tasks("x"), trees.append)
  (b,) = [t for t in trees if t.task_id == "b"]
  assert len(b.nodes) == 2
  assert len(set(requests)) == len(requests), "a (prompt, seed) request was sent twice"
  assert b.nodes[0].turns[0].response != b.nodes[1].turns[0].response


def test_openai_policy_seeds_of_consecutive_calls_are_disjoint(monkeypatch):
  # The explorer, eval and GRPO pass one seed per call, base + tick; each prompt of a call needs its own stream.
  policy, sent = OpenAIPolicy("http://unused/v1", "m", max_concurrency=1), []
  monkeypatch.setattr(policy, "_one", lambda *args: sent.append(args[-1]) or [Completion(text="")])
  prompts = [[{"role": "user", "content": "same"}]] * 4
  policy.generate(prompts, seed=100)
  first = list(sent)
  sent.clear()
  policy.generate(prompts, seed=101)
  assert len(set(first)) == 4 and not set(first) & set(sent)
  sent.clear()
  policy.generate(prompts, seed=100)
  assert sent == first  # still reproducible
