"""The launch scripts (launch/*): what they hand to leafe_jax.main on each worker, run with stand-in gcloud and srun."""

import json
import os
import re
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _executable(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


_RECORD_ARGV = ("#!/usr/bin/env python3\nimport json, os, sys\n"
                "with open(os.environ['ARGV_OUT'], 'w') as f:\n  json.dump(sys.argv[1:], f)\n")


def _tpu_pod_remote_argv(tmp_path, script_args, local_env, remote_env):
  """Runs launch/tpu_pod.sh with a stand-in gcloud, then the command it would send the workers under bash with
  `remote_env`; returns the argv the workers' `.venv/bin/python` got (None if it never ran)."""
  bin_dir = tmp_path / "bin"
  _executable(bin_dir / "gcloud", '#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in --command=*) '
              'printf %s "${a#--command=}" > "$GCLOUD_OUT";; esac; done\n')
  sent = tmp_path / "command.txt"
  env = {k: v for k, v in os.environ.items() if k != "REPO_DIR"}
  env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", GCLOUD_OUT=str(sent), **local_env)
  subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_pod.sh"), *script_args], env=env, check=True)
  argv_out = tmp_path / "argv.json"
  subprocess.run(["bash", "-c", sent.read_text()], env={**os.environ, "ARGV_OUT": str(argv_out), **remote_env})
  return json.loads(argv_out.read_text()) if argv_out.exists() else None


def test_tpu_pod_without_extra_flags_passes_no_empty_argument(tmp_path):
  # `launch/tpu_pod.sh NAME ZONE CONFIG WORKDIR` (no overrides) used to send `... mode=cluster ''`: main then
  # stops with "unexpected arguments: ['']" on every worker.
  repo = tmp_path / "checkout"
  _executable(repo / ".venv" / "bin" / "python", _RECORD_ARGV)
  argv = _tpu_pod_remote_argv(tmp_path, ["tpu", "zone", "configs/sft_tiny.py", "/mnt/w"],
                              {"REPO_DIR": str(repo)}, {})
  assert argv == ["-m", "leafe_jax.main", "--config=configs/sft_tiny.py", "--workdir=/mnt/w",
                  "--config.train.distributed.mode=cluster"]
  # Overrides still arrive as one argument each.
  argv = _tpu_pod_remote_argv(tmp_path, ["tpu", "zone", "c.py", "/mnt/w", "--config.stages=(\"train@leafe\",)"],
                              {"REPO_DIR": str(repo)}, {})
  assert argv[-1] == '--config.stages=("train@leafe",)'


def test_tpu_pod_default_repo_dir_is_the_workers_home(tmp_path):
  # The default ~/leafe_jax means the workers' home ("Set REPO_DIR if the checkout is not in ~/leafe_jax on the
  # workers"); it used to be expanded on the launching machine (e.g. /Users/me/leafe_jax from a laptop).
  worker_home = tmp_path / "worker_home"
  _executable(worker_home / "leafe_jax" / ".venv" / "bin" / "python", _RECORD_ARGV)
  argv = _tpu_pod_remote_argv(tmp_path, ["tpu", "zone", "c.py", "/mnt/w", "--config.train.lr=2e-6"],
                              {"HOME": str(tmp_path / "laptop_home")}, {"HOME": str(worker_home)})
  assert argv is not None, "the workers' command did not cd into ~/leafe_jax of the worker"
  assert argv[-1] == "--config.train.lr=2e-6"


def _sbatch_directive(text, name):
  return int(re.search(rf"^#SBATCH --{name}=(\d+)", text, re.M).group(1))


def test_slurm_tasks_see_the_gpu_jax_picks_for_them(tmp_path):
  # jax.distributed.initialize() on SLURM (mode cluster) sets local_device_ids=[SLURM_LOCALID]: the i-th task of a
  # node drives CUDA ordinal i, so every task must see all the node's GPUs (JAX issues #28194, #23452). With
  # `srun --gpus-per-task=1` SLURM binds each task to one GPU (CUDA_VISIBLE_DEVICES=<its GPU>, ordinal 0 only):
  # every task but the first fails with CUDA_ERROR_INVALID_DEVICE.
  from jax._src import clusters

  script = os.path.join(REPO, "launch", "slurm.sbatch")
  with open(script) as f:
    text = f.read()
  gpus, tasks = _sbatch_directive(text, "gpus-per-node"), _sbatch_directive(text, "ntasks-per-node")
  bin_dir, srun_out = tmp_path / "bin", tmp_path / "srun.json"
  _executable(bin_dir / "srun", _RECORD_ARGV)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGV_OUT": str(srun_out), "REPO_DIR": REPO}
  subprocess.run(["bash", script, "configs/sft_tiny.py", str(tmp_path / "w")], env=env, check=True)
  srun_args = json.loads(srun_out.read_text())
  per_task = next((a.split("=", 1)[1] for a in srun_args if a.startswith("--gpus-per-task=")), None)
  bound = per_task is not None and not any(a == "--gpu-bind=none" for a in srun_args)
  for local_id in range(tasks):
    visible = int(per_task) if bound else gpus  # CUDA ordinals the task sees
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_NTASKS": str(2 * tasks),
             "SLURM_PROCID": str(local_id), "SLURM_LOCALID": str(local_id), "SLURM_STEP_NUM_NODES": "2"}
    with pytest.MonkeyPatch.context() as mp:
      for k, v in slurm.items():
        mp.setenv(k, v)
      *_, local_device_ids = clusters.ClusterEnv.auto_detect_unset_distributed_params(
          "node1:1234", None, None, None, "slurm", None)
    assert all(0 <= d < visible for d in local_device_ids), (
        f"task {local_id}: JAX drives CUDA device {local_device_ids}, the task sees {visible} GPU(s) "
        f"(srun {srun_args[:3]})")
