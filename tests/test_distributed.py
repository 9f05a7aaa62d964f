"""Multi-controller training: two localhost processes with jax.distributed train like one process."""

import json
import os
import socket
import sys
import textwrap

import numpy as np
import processes
import pytest

from leafe_jax import parallel
from leafe_jax.parallel import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(**fields):
  config = distributed.default_config()
  config.update(fields)
  return config


@pytest.mark.parametrize(
    ("fields", "env", "want"),
    [
        ({}, {}, "off"),
        ({}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, "off"),
        ({}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "cluster"),
        ({}, {"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}, "cluster"),
        ({}, {"TPU_WORKER_HOSTNAMES": "t-0"}, "off"),
        ({}, {"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476,10.0.0.2:8476"}, "cluster"),
        ({"coordinator_address": "10.0.0.1:1234"}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "explicit"),
        ({"mode": "off"}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "off"),
        ({"mode": "cluster"}, {}, "cluster"),
    ],
)
def test_mode_follows_config_then_environment(fields, env, want):
  assert distributed.resolve_mode(_cfg(**fields), env) == want


def test_unknown_mode_is_refused_naming_the_field():
  with pytest.raises(ValueError, match="distributed.mode"):
    distributed.resolve_mode(_cfg(mode="mpi"), {})


@pytest.mark.parametrize("detected", [True, False])
def test_auto_on_a_tpu_vm_lets_jax_find_the_slice_else_runs_one_process(monkeypatch, detected):
  calls = []

  def fake_initialize(**kwargs):
    calls.append(kwargs)
    if not detected:
      raise ValueError("coordinator_address should be defined.")

  monkeypatch.setattr(distributed.jax.distributed, "initialize", fake_initialize)
  monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(distributed.jax, "process_count", lambda: 1)
  monkeypatch.setattr(distributed, "_on_tpu_vm", lambda: False)
  distributed.initialize(_cfg())
  assert calls == []  # not a TPU VM, no cluster variables: nothing to join
  monkeypatch.setattr(distributed, "_on_tpu_vm", lambda: True)
  distributed.initialize(_cfg())
  assert calls == [{"initialization_timeout": 300}]  # no coordinator given: JAX asks the metadata server
  distributed.initialize(_cfg(mode="off"))
  assert len(calls) == 1  # "off" means off, TPU VM or not


def test_explicit_mode_without_process_id_is_refused():
  with pytest.raises(ValueError, match="process_id"):
    distributed.initialize(_cfg(mode="explicit", coordinator_address="localhost:1", num_processes=2))


# One training run: `nproc` processes (each with 2 CPU devices) each feed their half of a fixed global batch.
_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    from leafe_jax import models, parallel
    from leafe_jax.parallel import distributed
    from leafe_jax.train import step as step_lib, state as state_lib

    port, nproc, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    cfg = distributed.default_config()
    if nproc > 1:
      cfg.coordinator_address, cfg.num_processes, cfg.process_id = f"localhost:{port}", nproc, pid
    distributed.initialize(cfg)
    assert jax.process_count() == nproc, jax.process_count()
    mcfg = models.ModelConfig(vocab_size=64, d_model=16, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=8,
                              d_ff=32, dtype="float32", param_dtype="float32", family="llama")
    model = models.Decoder(mcfg)
    mesh = parallel.make_mesh((jax.device_count(), 1, 1))
    psh = parallel.param_shardings(model, mesh)
    params = jax.jit(lambda k: models.init_params(mcfg, k), out_shardings=psh)(jax.random.PRNGKey(0))
    tx = optax.adamw(1e-2)
    ssh = state_lib.shardings(tx, params, psh, mesh)
    state = jax.jit(lambda p: state_lib.create(p, tx, jax.random.PRNGKey(1)), out_shardings=ssh)(params)
    fn = step_lib.make_train_step(lambda p, ids, **kw: model.apply({"params": p}, ids, **kw)[0], tx,
                                  normalization="token", num_kinds=5)
    keys = ("input_ids_BxT", "loss_mask_BxT", "weight_BxT", "segment_ids_BxT", "positions_BxT", "kind_BxT")
    bsh = parallel.batch_sharding(mesh)
    jitted = step_lib.jit_train_step(fn, ssh, dict.fromkeys(keys, bsh), mesh)
    rng = np.random.default_rng(0)
    b, t = 8, 16
    full = {"input_ids_BxT": rng.integers(1, 64, (b, t)).astype(np.int32),
            "loss_mask_BxT": (rng.random((b, t)) < 0.6).astype(np.float32),
            "weight_BxT": np.repeat(rng.uniform(0.5, 2, (b, 1)), t, 1).astype(np.float32),
            "segment_ids_BxT": np.ones((b, t), np.int32),
            "positions_BxT": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
            "kind_BxT": np.zeros((b, t), np.int32)}
    rows = slice(pid * b // nproc, (pid + 1) * b // nproc)
    losses = []
    for _ in range(3):
      state, m = jitted(state, distributed.global_batch({k: v[rows] for k, v in full.items()}, mesh))
      losses.append(float(m["loss"]))
    print("RESULT " + json.dumps(losses), flush=True)
    """
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch_with(script, nproc, port, devices=2, args=()):
  """`nproc` processes of `script PORT NPROC PID *args`, each with `devices` CPU devices."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  return [processes.popen_logged([sys.executable, script, str(port), str(nproc), str(pid), *args], env)
          for pid in range(nproc)]


def _result_of(proc) -> str:
  """The process's output, once it has ended successfully."""
  out = processes.output(proc, timeout=240)
  assert proc.returncode == 0, out[-4000:]
  return out


def _result(proc):
  line = [ln for ln in _result_of(proc).splitlines() if ln.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def test_two_processes_train_to_the_same_loss_as_one(tmp_path):
  script = tmp_path / "train_small.py"
  script.write_text(_SCRIPT)
  two = _launch_with(str(script), 2, _free_port())
  one = _launch_with(str(script), 1, _free_port())
  losses_two = [_result(p) for p in two]
  losses_one = _result(one[0])
  assert losses_two[0] == losses_two[1]
  np.testing.assert_allclose(losses_two[0], losses_one, rtol=1e-5)
  assert losses_one[-1] < losses_one[0]  # it trains



_AGREE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from leafe_jax.parallel import distributed

    port, nproc, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    cfg = distributed.default_config()
    cfg.coordinator_address, cfg.num_processes, cfg.process_id = f"localhost:{port}", nproc, pid
    distributed.initialize(cfg)
    widths, lengths = distributed.HostMax("widths"), distributed.HostMax("lengths")
    agreed = [[widths(10 * pid + r), lengths(100 - pid - r)] for r in range(6)]
    gathered = distributed.allgather_json({"process": pid, "batches": [pid] * (pid + 1)})
    distributed._coordination_client = lambda: None  # as on a JAX that moved the private client
    fallback = [widths(10 * pid + r) for r in range(3)]
    distributed.check_processes_agree(lambda: "same rows", "equal batches")  # passes on both
    try:
      distributed.check_processes_agree(lambda: f"rows of process {pid}", "the test's batches")
      disagreement = None
    except distributed.ProcessesDisagreeError as e:
      disagreement = str(e)
    print("RESULT " + json.dumps({"agreed": agreed, "gathered": gathered, "fallback": fallback,
                                  "disagreement": disagreement}), flush=True)
    """
)


def test_host_max_and_allgather_json_agree_across_processes(tmp_path):
  script = tmp_path / "agree.py"
  script.write_text(_AGREE_SCRIPT)
  results = [_result(p) for p in _launch_with(str(script), 2, _free_port())]
  # Round r: widths 10*pid + r (max from process 1), lengths 100 - pid - r (max from process 0), never mixed up.
  want = [[10 + r, 100 - r] for r in range(6)]
  assert results[0]["agreed"] == results[1]["agreed"] == want
  # Without the key-value store's client the device all-gather agrees on the same values.
  assert results[0]["fallback"] == results[1]["fallback"] == [10 + r for r in range(3)]
  assert results[0]["gathered"] == results[1]["gathered"] == [{"process": 0, "batches": [0]},
                                                              {"process": 1, "batches": [1, 1]}]
  # Different values are refused on every process, not only on the one that differs.
  for result in results:
    assert result["disagreement"].startswith("the test's batches: processes [1] hold a different value")


@pytest.mark.parametrize(("shape", "held"), [((1, 8, 1), 8), ((2, 2, 2), 8), ((1, 1, 8), 16), ((2, 1, 4), 8)])
def test_rows_each_process_holds_show_whether_the_batch_axes_span_the_processes(shape, held):
  # Devices 0-3 as process 0 and 4-7 as process 1 (the real thing needs two hosts). A tensor axis over all 8
  # devices replicates the rows: process 0 would hold all 16, not its own 8, and must be refused.
  mesh = parallel.make_mesh(shape)
  process_of = lambda device: device.id // 4
  assert [distributed.rows_held(mesh, 16, p, process_of) for p in (0, 1)] == [held, held]


# Explore then evaluate with an in-process policy (a HF dir) on the global mesh, as one process of a launch;
# argv: port, process count, process id, the HF dir, the workdir[, tasks, "explore" to explore only].
_EXPLORE_EVAL_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, ml_collections
    from leafe_jax.eval import stage as eval_stage
    from leafe_jax.explore import stage as explore_stage
    from leafe_jax.parallel import distributed

    port, nproc, pid, hf_dir, workdir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6]
    tasks, stages = (int(sys.argv[6]), sys.argv[7]) if len(sys.argv) > 6 else (2, "explore,eval")
    config = ml_collections.ConfigDict({"explore": explore_stage.default_config(),
                                        "eval": eval_stage.default_config(),
                                        "train": {"distributed": distributed.default_config()}})
    if nproc > 1:
      config.train.distributed.update(mode="explicit", coordinator_address=f"localhost:{port}",
                                      num_processes=nproc, process_id=pid)
    # The compact prompt fits the 512-token cache (the full one does not: every rollout would end PROMPT_TOO_LONG
    # before the sampler ran).
    env_config = {"dim": (6, 6), "num_boxes": 1, "max_steps": 3, "compact_prompt": True}
    for section in (config.explore, config.eval):
      section.update(policy=hf_dir, policy_mesh=(-1, 1, 1), num_tasks=tasks, max_steps=3, max_new_tokens=12,
                     max_cache_len=512)
      section.env_config = env_config
    config.explore.update(max_attempts=2, reflect_every=2, reflection_max_new_tokens=12, concurrency=1)
    config.eval.update(num_samples=2, ks=(1, 2), temperature=1.0)
    explore_stage.run(config, workdir, workdir + "/explore")
    if "eval" in stages:
      eval_stage.run(config, workdir, workdir + "/eval")
    assert jax.process_count() == nproc, jax.process_count()
    """
)


def _tiny_policy_dir(path):
  """A HF directory (tiny random Llama and BPE tokenizer) for the in-process policy."""
  import torch
  import transformers

  from leafe_jax.baselines.tiny_tokenizer import train_tokenizer

  train_tokenizer(["<action>up</action> <action>left</action> # _ P X O rollback_step experience"] * 20,
                  vocab_size=300, out_dir=str(path), model_max_length=512)
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
  transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
  return path


@pytest.mark.slow  # ~70 s (three processes); the default suite had reached 593-650 s of its 600 s on 2 cores
def test_two_processes_explore_and_evaluate_as_one_process_on_the_same_global_mesh(tmp_path):
  from leafe_jax.explore.tree import load_trees

  hf_dir = _tiny_policy_dir(tmp_path / "policy")
  script = tmp_path / "explore_eval.py"
  script.write_text(_EXPLORE_EVAL_SCRIPT)
  runs = {"two": _launch_with(str(script), 2, _free_port(), devices=2, args=(str(hf_dir), str(tmp_path / "two"))),
          "one": _launch_with(str(script), 1, _free_port(), devices=4, args=(str(hf_dir), str(tmp_path / "one")))}
  for procs in runs.values():
    for proc in procs:
      _result_of(proc)
  trees = {run: [t.to_json() for t in load_trees(tmp_path / run / "explore" / "trees" / "shard-0-of-1.jsonl")]
           for run in runs}
  assert len(trees["one"]) == 2 and trees["two"] == trees["one"]  # each tree once: process 0 alone wrote them
  ledgers = {run: json.loads((tmp_path / run / "explore" / "ledger.json").read_text()) for run in runs}
  assert ledgers["two"] == ledgers["one"]
  total = ledgers["one"]["total"]  # the global-mesh sampler ran: tokens generated, actions taken, nothing cut
  assert total["generated_tokens"] > 0 and total["env_steps"] > 0 and total["prompts_too_long"] == 0, total
  outcomes = {run: (tmp_path / run / "eval" / "outcomes.jsonl").read_text().splitlines() for run in runs}
  assert len(outcomes["one"]) == 2 and outcomes["two"] == outcomes["one"]
  assert all(min(json.loads(line)["steps"]) > 0 and not json.loads(line)["prompts_too_long"]
             for line in outcomes["one"])
  results = {run: json.loads((tmp_path / run / "eval" / "results.json").read_text()) for run in runs}
  assert results["two"] == results["one"]


@pytest.mark.slow  # ~25 s alone: five processes in three launches
def test_two_processes_killed_mid_explore_resume_to_the_trees_of_an_uninterrupted_run(tmp_path):
  import signal
  import time

  from leafe_jax.explore.tree import load_trees

  hf_dir = _tiny_policy_dir(tmp_path / "policy")
  script = tmp_path / "explore.py"
  script.write_text(_EXPLORE_EVAL_SCRIPT)
  tasks = 24  # a task takes milliseconds here: enough of them that the kill lands mid-run
  launch = lambda run, nproc, devices: _launch_with(str(script), nproc, _free_port(), devices=devices,
                                                    args=(str(hf_dir), str(tmp_path / run), str(tasks), "explore"))
  reference = launch("one", 1, 4)
  killed = launch("two", 2, 2)
  trees = tmp_path / "two" / "explore" / "trees" / "shard-0-of-1.jsonl"
  deadline = time.time() + 240
  while not (trees.exists() and trees.read_text().count("\n") >= 2) and time.time() < deadline:
    assert all(p.poll() is None for p in killed), "the run ended before it was killed"
    time.sleep(0.01)
  for proc in killed:  # both processes at once, as a preempted slice loses them
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  kept = trees.read_text().count("\n")
  assert 2 <= kept < tasks
  for proc in [*launch("two", 2, 2), *reference]:
    _result_of(proc)
  got = [t.to_json() for t in load_trees(trees)]
  want = [t.to_json() for t in load_trees(tmp_path / "one" / "explore" / "trees" / "shard-0-of-1.jsonl")]
  assert len(got) == tasks  # no task lost, none written twice
  assert all(node["turns"] for tree in want for node in tree["nodes"])  # every rollout sampled actions
  assert sorted(got, key=lambda t: t["task_id"]) == sorted(want, key=lambda t: t["task_id"])
