"""The train stage end to end on CPU: resume after SIGKILL is bit-identical; bad input fails clearly and early."""

import os
import signal
import sys
import time

import numpy as np
import processes
import pytest
import transformers

from leafe_jax.baselines import tiny_tokenizer
from leafe_jax.data import records
from leafe_jax.train import stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "sft_tiny.py")
_CORPUS = ["go north", "push the box left", "you see a wall", "def solve(x): return x + 1", "the goal is near"] * 20


def _tokenizer(path, vocab_size=300):
  tiny_tokenizer.train_tokenizer(_CORPUS, vocab_size=vocab_size, out_dir=str(path), model_max_length=128)
  return records.tokenizer_fingerprint(transformers.AutoTokenizer.from_pretrained(str(path)))


def _write_records(folder, fingerprint, n=48, seed=0, shard_size=16):
  rng = np.random.default_rng(seed)
  with records.RecordWriter(str(folder), tokenizer_fingerprint=fingerprint, shard_size=shard_size) as writer:
    for i in range(n):
      length = int(rng.integers(8, 40))
      mask = [0] * (length // 2) + [1] * (length - length // 2)
      kind = "cf" if i % 3 else "reh"
      writer.write(records.CorrectionRecord(
          input_ids=[int(t) for t in rng.integers(4, 290, length)], loss_mask=mask, kind=kind,
          weight=1.0 if kind == "cf" else 0.5, task_id=f"t{i}", tokenizer=fingerprint))


@pytest.fixture
def workdir(tmp_path):
  fingerprint = _tokenizer(tmp_path / "tokenizer")
  _write_records(tmp_path / "records", fingerprint)
  return tmp_path


def _main(workdir, *overrides, new_session=False):
  pythonpath = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  # JAX_LOG_COMPILES: persistent compilation cache hits are logged too.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=pythonpath,
             JAX_LOG_COMPILES="1")
  cmd = [sys.executable, "-m", "leafe_jax.main", f"--config={CONFIG}", f"--workdir={workdir}", *overrides]
  return processes.popen_logged(cmd, env, cwd=REPO, new_session=new_session)


def _finish(proc):
  out = processes.output(proc)
  assert proc.returncode == 0, out[-5000:]
  return out


def _exported(workdir):
  from safetensors.numpy import load_file

  hf = os.path.join(workdir, "train", "hf")
  tensors = {}
  for name in sorted(os.listdir(hf)):
    if name.endswith(".safetensors"):
      tensors.update(load_file(os.path.join(hf, name)))
  return tensors


def _main_in_group(workdir, *overrides):
  return _main(workdir, *overrides, new_session=True)


def _launch_two(workdir, *overrides):
  """launch/local_multiprocess.sh: two processes of two CPU devices each, in a process group of their own."""
  env = dict(os.environ, PY=sys.executable,
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  cmd = ["bash", os.path.join(REPO, "launch", "local_multiprocess.sh"), "2", CONFIG, str(workdir), *overrides]
  return processes.popen_logged(cmd, env, cwd=REPO, new_session=True)


def _kill_and_resume(tmp_path, workdir, launch, steps, every, between=None):
  """An uninterrupted run and one SIGKILLed (its whole process group) after its first checkpoint, then rerun.

  `between(workdir)` runs after the kill, before the rerun. Returns the rerun's log, once both runs have ended.
  """
  reference = tmp_path / "uninterrupted"
  os.makedirs(reference)
  for name in ("tokenizer", "records"):
    os.symlink(workdir / name, reference / name)
  first = launch(reference, steps, every)

  killed = launch(workdir, steps, every)
  first_ckpt = workdir / "train" / "checkpoints" / every.rpartition("=")[2]
  deadline = time.time() + 240
  while not first_ckpt.is_dir() and killed.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert killed.poll() is None, "the run ended before its first checkpoint was written:\n" + processes.output(killed)
  os.killpg(killed.pid, signal.SIGKILL)
  killed.wait()
  assert not (workdir / "train" / "hf").exists()
  if between is not None:
    between(workdir)

  resumed_log = _finish(launch(workdir, steps, every))
  assert "checkpoint: restored step" in resumed_log
  _finish(first)
  want, got = _exported(reference), _exported(workdir)
  assert sorted(want) == sorted(got)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  return resumed_log


def test_sigkill_then_rerun_gives_bit_identical_params(tmp_path, workdir):
  resumed_log = _kill_and_resume(tmp_path, workdir, _main_in_group, "--config.train.num_steps=60",
                                 "--config.train.checkpoint_every=20")
  # The rerun loads the train step the killed run compiled into <workdir>/compilation_cache.
  assert "Persistent compilation cache hit for 'jit_train_step'" in resumed_log
  # The export is a complete HF directory: config, weights and tokenizer files.
  hf = workdir / "train" / "hf"
  assert (hf / "config.json").exists() and (hf / "tokenizer.json").exists()
  transformers.AutoTokenizer.from_pretrained(str(hf))


@pytest.mark.slow  # ~170 s on 2 cores (7 launches); the default suite keeps the 1-process kill and 2-process loss
def test_two_process_run_resumes_after_sigkill_bit_identical(tmp_path, workdir):
  # Each process reads its own shards: the checkpoint must hold both data positions, not process 0's only.
  steps, every = "--config.train.num_steps=80", "--config.train.checkpoint_every=20"

  def one_process_refuses(killed_dir):
    # One process cannot take over the data positions of two: a clear error, not a silent reshuffle.
    single = _main(killed_dir, steps, every)
    out = processes.output(single)
    assert single.returncode != 0 and "resume with the same number of processes" in out, out[-3000:]

  _kill_and_resume(tmp_path, workdir, _launch_two, steps, every, between=one_process_refuses)


def _config(**fields):
  import importlib.util

  spec = importlib.util.spec_from_file_location("sft_tiny", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.train.update(fields)
  return config


def test_corrupt_shard_names_file_and_record(workdir):
  shard = sorted(p for p in os.listdir(workdir / "records") if p.endswith(".tfrecord"))[1]
  path = workdir / "records" / shard
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(records.CorruptShardError, match=shard) as info:
    stage.run(_config(), str(workdir), str(workdir / "train"))
  assert "record #" in str(info.value)
  assert not (workdir / "train" / "checkpoints").exists()


def test_records_from_another_tokenizer_are_refused_with_both_fingerprints(tmp_path, workdir):
  other = _tokenizer(tmp_path / "other_tokenizer", vocab_size=280)
  ours = records.tokenizer_fingerprint(transformers.AutoTokenizer.from_pretrained(str(workdir / "tokenizer")))
  assert other != ours
  _write_records(tmp_path / "other_records", other)
  with pytest.raises(records.TokenizerMismatchError) as info:
    stage.run(_config(records=("other_records",)), str(workdir), str(workdir / "train"))
  assert other in str(info.value) and ours in str(info.value)


def test_empty_records_folder_is_a_clear_error(workdir):
  os.makedirs(workdir / "empty")
  with pytest.raises(records.EmptyRecordsError, match="empty"):
    stage.run(_config(records=("empty",)), str(workdir), str(workdir / "train"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"loss_normalization": "sequence"}, "train.loss_normalization"),
     ({"micro_batches": 3}, "train.micro_batches"),
     ({"kinds": ("cf", "rl")}, "train.kinds"),
     ({"init": "hf"}, "train.init_path"),
     ({"attention_impl": "flash"}, "train.attention_impl"),
     ({"remat_policy": "all"}, "train.remat_policy")],
)
def test_bad_values_fail_before_any_work(tmp_path, fields, message):
  with pytest.raises(ValueError, match=message):
    stage.run(_config(**fields), str(tmp_path), str(tmp_path / "train"))
  assert not (tmp_path / "train").exists()


@pytest.mark.parametrize("case", ["qwen2", "qwen3"])
def test_abstract_params_of_an_hf_init_match_the_loaded_ones_without_loading(tmp_path, case):
  # A resumed run takes its params from its own checkpoint: the HF checkpoint only gives their shapes then.
  import jax
  from test_models import save_tiny_hf

  from leafe_jax import parallel

  _, path = save_tiny_hf(tmp_path, case)
  cfg = _config(init="hf", init_path=path, dtype="float32", param_dtype="float32").train
  mesh = parallel.make_mesh((2, 1, 1), devices=jax.devices()[:2])
  _, loaded, _ = stage.model_and_params(cfg, str(tmp_path), mesh, jax.random.PRNGKey(0))
  _, shapes, _ = stage.model_and_params(cfg, str(tmp_path), mesh, jax.random.PRNGKey(0), abstract=True)
  assert jax.tree.structure(shapes) == jax.tree.structure(loaded)
  for want, got in zip(jax.tree.leaves(loaded), jax.tree.leaves(shapes)):
    assert isinstance(got, jax.ShapeDtypeStruct)
    assert (got.shape, got.dtype, got.sharding) == (want.shape, want.dtype, want.sharding)
