"""Multi-controller setup: `jax.distributed` initialisation, global arrays from per-process or replicated host
data and back, and small host-side agreements between processes.

Every host runs the same program (DESIGN.md §4). `initialize` must run before anything touches a JAX backend.
Modes (config field `mode`):
  "auto":     explicit coordinator address given -> "explicit"; a SLURM job with several tasks or a multi-host
              Cloud TPU slice named by its environment variables -> "cluster"; on any other Cloud TPU VM, JAX's
              own detection (the GCE metadata server knows the slice's workers) with one process as the
              fallback; otherwise single process (no-op).
  "cluster":  `jax.distributed.initialize()` with no arguments: JAX reads the TPU metadata / SLURM variables.
  "explicit": coordinator_address, num_processes, process_id from the config (local multi-process runs).
  "off":      never initialise (one process).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

MODES = ("auto", "cluster", "explicit", "off")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {
          "mode": "auto",  # auto | cluster | explicit | off (see leafe_jax/parallel/distributed.py)
          "coordinator_address": "",  # host:port of process 0, for mode explicit (auto switches to it if set)
          "num_processes": 0,  # total processes, for mode explicit
          "process_id": -1,  # this process's index, for mode explicit
          "initialization_timeout_s": 300,  # how long processes wait for each other at start-up
      }
  )


def _slurm_multi_task(env: Mapping[str, str]) -> bool:
  return "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1


def _tpu_multi_host(env: Mapping[str, str]) -> bool:
  for name in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):  # GKE sets them; JAX reads them in this order
    if len([h for h in env.get(name, "").split(",") if h.strip()]) > 1:
      return True
  return "MEGASCALE_COORDINATOR_ADDRESS" in env


# TPU chips show up as these device files on Cloud TPU VMs (v2-v5e: accel, v5p/v6e: vfio); a cheap check that
# needs no JAX backend, which must not start before jax.distributed.initialize.
_TPU_DEVICE_GLOBS = ("/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def _on_tpu_vm() -> bool:
  return any(glob.glob(pattern) for pattern in _TPU_DEVICE_GLOBS)


def resolve_mode(config: ml_collections.ConfigDict, env: Mapping[str, str] | None = None) -> str:
  """The mode `initialize` will use, from the config and the environment (pure: no side effects)."""
  env = os.environ if env is None else env
  if config.mode not in MODES:
    raise ValueError(f"config field 'distributed.mode' must be one of {MODES}, got {config.mode!r}")
  if config.mode != "auto":
    return config.mode
  if config.coordinator_address:
    return "explicit"
  if _slurm_multi_task(env) or _tpu_multi_host(env):
    return "cluster"
  return "off"


def initialize(config: ml_collections.ConfigDict) -> None:
  """Initialises `jax.distributed` per `config` (a `default_config()` section); safe to call twice."""
  mode = resolve_mode(config)
  if jax.distributed.is_initialized():
    return
  if mode == "off" and config.mode == "auto" and _on_tpu_vm():
    # A slice created with `gcloud compute tpus tpu-vm create` sets no variables: its workers are known to the
    # metadata server, which JAX's own cluster detection asks. Without it (one host, no metadata): one process.
    try:
      jax.distributed.initialize(initialization_timeout=config.initialization_timeout_s)
    except ValueError as e:
      logging.info("jax.distributed (auto): TPU VM without a detected cluster (%s); one process", e)
      return
    mode = "cluster (detected by JAX on a TPU VM)"
  elif mode == "off":
    return
  elif mode == "cluster":
    jax.distributed.initialize(initialization_timeout=config.initialization_timeout_s)
  else:
    if not config.coordinator_address or config.num_processes < 1 or not 0 <= config.process_id < config.num_processes:
      raise ValueError(
          "distributed mode 'explicit' needs coordinator_address (host:port), num_processes >= 1 and "
          f"0 <= process_id < num_processes; got {config.coordinator_address!r}, {config.num_processes}, "
          f"{config.process_id}"
      )
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        initialization_timeout=config.initialization_timeout_s,
    )
  logging.info(
      "jax.distributed (%s): process %d of %d, %d local / %d global devices",
      mode,
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )


def rows_held(mesh: Mesh, global_rows: int, process_index: int, process_of=lambda device: device.process_index) -> int:
  """Distinct rows of a `global_rows` batch that process `process_index`'s devices hold under
  `parallel.batch_sharding(mesh)`."""
  from leafe_jax.parallel import batch_sharding

  index_map = batch_sharding(mesh).devices_indices_map((global_rows,))
  spans = {(s[0].start or 0, global_rows if s[0].stop is None else s[0].stop)
           for device, s in index_map.items() if process_of(device) == process_index}
  return sum(stop - start for start, stop in spans)


def check_batch_layout(mesh: Mesh, global_rows: int, field: str = "train.mesh") -> None:
  """Refuses a mesh whose batch axes ("data", "fsdp") do not split the rows across processes: each process
  feeds its own rows (`global_batch`), which such a mesh would treat as replicas of one another."""
  count, held = jax.process_count(), rows_held(mesh, global_rows, jax.process_index())
  if count > 1 and held != global_rows // count:
    raise ValueError(
        f"{field} {tuple(mesh.shape.values())}: on {count} processes the batch axes (data x fsdp = "
        f"{mesh.shape['data'] * mesh.shape['fsdp']}) leave process {jax.process_index()}'s devices holding "
        f"{held} of {global_rows} rows, not its own {global_rows // count}: each process feeds different rows, "
        "so the batch must be split across processes (e.g. fsdp or data over every process's devices)")


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded by `parallel.batch_sharding(mesh)`.

  Process p holds rows [p·b, (p+1)·b) of the global batch (b = local rows); all processes pass equal b.
  """
  from leafe_jax.parallel import batch_sharding

  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for key, value in
          local_batch.items()}


def join(config: ml_collections.ConfigDict) -> bool:
  """Joins jax.distributed with the train section's settings (`config.train.distributed`, which the launch
  scripts set; defaults where the config has no train section), for a stage that spans the processes of a
  multi-process launch. Returns whether this process writes the stage's own files (process 0). Call it before
  anything starts a JAX backend; it is a no-op once joined."""
  initialize(config.get("train", {}).get("distributed") or default_config())
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached this point (no-op on one process): e.g. for process 0's repair of a
  shared file before the others read it."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def global_from_host(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array of `value`, which every process holds whole (replicated host work, such as GRPO's rollouts
  on every process): each process places only the slices its own devices hold."""
  value = np.asarray(value)
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(array: jax.Array) -> np.ndarray:
  """The whole value of `array` on this host; for an array spread over several processes' devices this is a
  collective (every process must call it)."""
  if array.is_fully_addressable or array.is_fully_replicated:
    return np.asarray(array)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class ProcessesDisagreeError(RuntimeError):
  """Processes that must run the same replicated host work (same prompts, same batches) hold different values."""


def check_processes_agree(fingerprint: Callable[[], str], what: str) -> None:
  """Raises ProcessesDisagreeError, on every process, unless `fingerprint()` is the same on all (a collective;
  on one process a no-op that does not compute the fingerprint).

  Replicated host work stays in step only while every process computes the same thing; a process that drifted
  (a non-deterministic environment) would otherwise call the next collective with other shapes and hang.
  """
  if jax.process_count() == 1:
    return
  fingerprints = allgather_json(fingerprint())
  if len(set(fingerprints)) > 1:
    differ = [p for p, f in enumerate(fingerprints) if f != fingerprints[0]]
    raise ProcessesDisagreeError(
        f"{what}: processes {differ} hold a different value than process 0 (fingerprints {fingerprints}); every "
        "process must compute the same (is an environment or the data not deterministic across hosts?)")


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-serialisable `value`, in process order, on every process (a collective: all call it).

  For small host-side state such as a data iterator's position, which each process owns alone but one process
  writes into the checkpoint.
  """
  if jax.process_count() == 1:
    return [json.loads(json.dumps(value))]
  from jax.experimental import multihost_utils

  encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
  lengths_P = np.asarray(multihost_utils.process_allgather(np.asarray(encoded.size, np.int32))).reshape(-1)
  padded = np.zeros(int(lengths_P.max()), np.uint8)
  padded[: encoded.size] = encoded
  bytes_PxN = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes_PxN[p, :n].tobytes()) for p, n in enumerate(lengths_P)]


# Instances of HostMax in creation order: every process creates them in the same order, so the ids agree.
_HOST_MAX_IDS = itertools.count()


def _coordination_client():
  """The `jax.distributed` coordination-service client (what orbax and multihost_utils use too), or None where
  this JAX does not expose it: it is private API, so a JAX upgrade may move it."""
  try:
    from jax._src import distributed as jax_distributed
  except ImportError:
    return None
  client = getattr(getattr(jax_distributed, "global_state", None), "client", None)
  needed = ("key_value_set", "blocking_key_value_get", "key_value_delete")
  return client if client is not None and all(hasattr(client, m) for m in needed) else None


class HostMax:
  """The maximum of one integer per process, agreed on the hosts alone, once per call (a collective).

  Goes through the `jax.distributed` coordination service's key-value store, not a device collective: a device
  all-gather would queue behind the train step just dispatched and make the host wait for it every step
  (`multihost_utils.process_allgather` does), where this lets the host prepare the next batch meanwhile.
  Where the store's client is not reachable (see `_coordination_client`) it falls back to that all-gather: the
  same values, one host sync per call.
  """

  _warned = False  # the fallback is logged once per process

  def __init__(self, name: str, timeout_s: float = 600.0):
    self._prefix = f"leafe_jax/{name}/{next(_HOST_MAX_IDS)}"
    self._timeout_ms = int(timeout_s * 1000)
    self._round = 0

  def __call__(self, value: int) -> int:
    if jax.process_count() == 1:
      return int(value)
    client = _coordination_client()
    if client is None:
      from jax.experimental import multihost_utils

      if not HostMax._warned:
        HostMax._warned = True
        logging.warning("HostMax: no coordination-service client in this JAX; agreeing by a device all-gather")
      return int(np.max(multihost_utils.process_allgather(np.asarray(int(value)))))
    me, rnd = jax.process_index(), self._round
    self._round += 1
    client.key_value_set(f"{self._prefix}/{rnd}/{me}", str(int(value)))
    values = [int(client.blocking_key_value_get(f"{self._prefix}/{rnd}/{p}", self._timeout_ms))
              for p in range(jax.process_count())]
    # Every process has read round rnd-2: each posted its round rnd-1 value after reading rnd-2, and we have
    # seen all of those. So our key of rnd-2 can go (the store would otherwise grow by one key per step).
    if rnd >= 2:
      client.key_value_delete(f"{self._prefix}/{rnd - 2}/{me}")
    return max(values)
