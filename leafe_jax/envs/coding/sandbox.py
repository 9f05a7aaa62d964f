"""A subprocess sandbox for untrusted Python programs (model-written code).

Every program runs as its own process tree:

  host thread -> `unshare --net --pid --fork --kill-child --mount-proc` (new network, PID and mount namespaces)
    -> `sh` (root inside the namespaces: covers writable and private directories with tmpfs mounts)
    -> `timeout -s KILL` (PID 1 of the namespace: wall-time backstop that holds even if the host dies)
    -> `prlimit` (RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_NOFILE, RLIMIT_FSIZE, RLIMIT_CORE=0)
    -> `setpriv` (a dedicated unprivileged uid/gid, no groups, no capabilities, no new privileges)
    -> `python -s -B main.py` in a fresh size-limited tmpfs working directory owned by that uid.

What is protected (isolation "namespace": the host runs as root; "userns": differences below):
- Network: an empty network namespace (loopback down): no connection to the host's services (127.0.0.1
  included) or to the outside.
- Processes: a private PID namespace. The program sees only its own processes (/proc is remounted), cannot
  signal the host's, and when the namespace's PID 1 ends the kernel kills every process in it, double-forked
  setsid() daemons included. On a wall-time overrun or an output flood the host kills PID 1 and waits for the
  namespace to be torn down, so no process outlives `run()`.
- Files: a uid of its own (one per concurrent slot, so RLIMIT_NPROC, which counts per uid, is not shared
  between parallel programs). /tmp, /var/tmp, /dev/shm, /run/lock are covered by empty read-only tmpfs mounts;
  a home directory that hides the interpreter (/root, mode 0700) is covered by a tmpfs showing only the
  interpreter's prefix (so root's files stay hidden). The rest of the file system is visible with normal Unix
  permissions, so the program can write only to its working directory (a tmpfs of `workdir_mb`, gone with it).
- Resources: CPU seconds (SIGXCPU), address space (MemoryError), processes/threads, open files, file size, no
  core dumps, stdout/stderr capped (flood => killed), wall time (killed).
- Environment: a fixed, clean environment (PATH, LANG, LC_ALL, HOME, PYTHONHASHSEED=0 for reproducible output);
  nothing of the host's is inherited; no user site-packages.

Isolation "userns" (the host user is not root; needs unprivileged user namespaces): the same namespaces inside a
new user namespace in which the host user is uid 0. The program keeps the host user's uid, so instead of a uid
change every mount is remounted read-only before it starts and it runs with an empty capability bounding set
(it cannot unmount or remount anything); it can still READ all the host user's files. RLIMIT_NPROC counts all
of the host user's processes, so the limit is set to their current number + `max_processes`.

What is NOT protected:
- World-readable files stay readable (the repository, /etc, system Python packages); in "userns" mode all the
  host user's files. Keep secrets out of readable files; the host's environment variables are not reachable.
- No seccomp filter: every system call is available to the unprivileged program, so a kernel vulnerability is an
  escape. This sandbox contains model mistakes and reward hacking, not a determined attacker; put the whole
  explorer in a VM or gVisor for that.
- No cgroup: memory is bounded per process (RLIMIT_AS) and by process count, not as a tree total; CPU sharing
  between parallel programs is left to the kernel scheduler.
- In-process tricks against the assert harness (MBPP / HumanEval tests run in the program's interpreter) are
  only partly covered: exiting early or rewriting the test files cannot fake a pass (the harness must print a
  per-run secret token after the tests, read before the program runs), but reading the token out of the
  harness' memory, or returning objects whose __eq__ is always true, could.

Isolation "process" (fallback when neither namespace mode works; a warning is logged once): a new session and
process group, rlimits, a clean environment, a fresh temporary directory; no network, PID or file-system
isolation, no uid change. Daemons that left the process group are found by a marker in their environment and
killed.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import re
import secrets
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

_LOG = logging.getLogger(__name__)

# Directories every user can write to; the sandbox covers each that exists with a tmpfs it cannot write.
WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# The environment of every sandboxed program (nothing is inherited from the host).
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
# First uid/gid of the sandbox slots (no passwd entry needed). Slots of one host process are base + k; host
# processes are spread by pid so that parallel judges (pytest-xdist, EnvPool workers) rarely share a uid.
UID_BASE = 2_000_000
UID_SPREAD = 4096
UID_SLOTS_PER_PROCESS = 256
# Seconds the in-namespace `timeout` waits beyond the host's own wall limit before it kills the program: it
# only matters when the host process died and cannot enforce the limit itself.
BACKSTOP_GRACE_S = 2.0
# Exit status the setup script uses for its own failures (distinct from the program's failures).
SETUP_FAILED_RC = 125
# Fallback isolation: sweeps of /proc for marked processes, and the pause between sweeps (a fork or exec in flight).
MARKER_SWEEPS = 50
MARKER_SWEEP_PAUSE_S = 0.01
# Seconds to wait for a killed namespace to be torn down before falling back to killing the process group.
KILL_WAIT_S = 5.0
SETUP_FAILED_MARK = "leafe_sandbox: setup failed"
_READ_CHUNK = 65536

ISOLATIONS = ("auto", "namespace", "userns", "process")

STATUS_OK = "ok"  # exited with status 0
STATUS_ERROR = "error"  # exited with a nonzero status
STATUS_SIGNAL = "signal"  # killed by a signal it caused (SIGSEGV, SIGXFSZ, ...)
STATUS_TIMEOUT = "timeout"  # wall time or CPU time exceeded
STATUS_OUTPUT_LIMIT = "output_limit"  # stdout or stderr exceeded the cap
STATUS_SANDBOX_ERROR = "sandbox_error"  # the sandbox itself failed; not the program's fault


@dataclasses.dataclass(frozen=True)
class Limits:
  """Resource limits of one sandboxed run."""

  wall_time_s: float = 4.0  # killed after this many seconds of wall time
  cpu_time_s: float | None = None  # RLIMIT_CPU; None = ceil(wall_time_s)
  memory_mb: int = 512  # RLIMIT_AS (address space; the interpreter itself takes ~25 MB of it)
  max_processes: int = 8  # RLIMIT_NPROC for the sandbox uid (processes + threads; RLIMIT_AS is per process)
  max_open_files: int = 64  # RLIMIT_NOFILE
  max_file_size_mb: int = 16  # RLIMIT_FSIZE (any single file written, SIGXFSZ beyond)
  workdir_mb: int = 32  # size of the tmpfs working directory (namespace isolation)
  max_output_bytes: int = 4 << 20  # per stream; more => killed with STATUS_OUTPUT_LIMIT

  def cpu_seconds(self) -> int:
    return max(1, int(-(-(self.cpu_time_s or self.wall_time_s) // 1)))


@dataclasses.dataclass(frozen=True)
class Job:
  """One program to run: `files` are written next to `main` (name -> text); `stdin` is fed to it."""

  source: str
  stdin: str = ""
  files: tuple[tuple[str, str], ...] = ()
  main: str = "main.py"
  limits: Limits | None = None  # None = the limits given to run_many


@dataclasses.dataclass(frozen=True)
class RunResult:
  """What one sandboxed run did."""

  status: str  # one of the STATUS_* constants
  returncode: int | None  # exit status; negative = killed by that signal number
  stdout: str
  stderr: str
  wall_s: float
  signal: str | None = None  # name of the terminating signal, where there was one
  detail: str = ""  # a human-readable reason for timeout / output_limit / sandbox_error

  @property
  def ok(self) -> bool:
    return self.status == STATUS_OK


def _slot_uid(slot: int) -> int:
  return UID_BASE + (os.getpid() % UID_SPREAD) * UID_SLOTS_PER_PROCESS + slot % UID_SLOTS_PER_PROCESS


def _hidden_ancestor(path: str) -> str | None:
  """The top-most ancestor of `path` that an unrelated uid cannot traverse (e.g. /root, mode 0700)."""
  parts = os.path.realpath(path).split(os.sep)[1:]
  current = ""
  for part in parts:
    current += os.sep + part
    try:
      mode = os.stat(current).st_mode
    except OSError:
      return None
    if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
      return current
  return None


def _world_writable(path: str) -> bool:
  try:
    st = os.stat(path)
  except OSError:
    return False
  return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_IWOTH)


def _children(pid: int) -> list[int]:
  """Direct children of `pid` (Linux /proc), empty when it is gone."""
  try:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
      return [int(x) for x in f.read().split()]
  except FileNotFoundError:
    if not os.path.exists(f"/proc/{pid}"):
      return []
  except (OSError, ValueError):
    return []
  # Kernels without CONFIG_PROC_CHILDREN: scan every process' parent id.
  children = []
  for name in os.listdir("/proc"):
    try:
      with open(f"/proc/{name}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      if name.isdigit() and int(fields[1]) == pid:
        children.append(int(name))
    except (OSError, IndexError, ValueError):
      continue
  return children


def _pids_with_marker(marker: bytes) -> list[int]:
  """Processes of this uid whose environment contains `marker` (used by the fallback isolation)."""
  found = []
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/environ", "rb") as f:
        if marker in f.read():
          found.append(int(name))
    except OSError:
      continue
  return found


def _unescape_mountinfo(path: str) -> str:
  return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _fstab_escape(field: str) -> str:
  return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in field)


def _readonly_remounts() -> list[tuple[str, str]]:
  """(mount point, options) that remount every current mount read-only, keeping its locked flags."""
  keep = ("nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime", "strictatime")
  remounts = []
  with open("/proc/self/mountinfo") as f:
    for line in f:
      fields = line.split()
      target, options = _unescape_mountinfo(fields[4]), fields[5].split(",")
      remounts.append((target, ",".join(["ro", *(o for o in options if o in keep)])))
  return remounts


def _count_user_processes() -> int:
  """Processes (and threads) of this uid: RLIMIT_NPROC counts them all when the program keeps our uid."""
  uid, count = os.getuid(), 0
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        if os.stat(f"/proc/{name}").st_uid == uid:
          count += len(os.listdir(f"/proc/{name}/task"))
      except OSError:
        continue
  return count


class Sandbox:
  """Runs Python programs isolated from the host and from each other; thread-safe.

  Args:
    python: interpreter for the programs; default the base interpreter of the running Python (a venv's
      site-packages are not visible to programs: they get the standard library only).
    isolation: "auto" (the first of namespace, userns, process that works), or one of them (raise when it
      does not work).
    max_parallel: number of uid slots, i.e. programs that may run at the same time.
  """

  def __init__(self, python: str | None = None, isolation: str = "auto", max_parallel: int = 64):
    if isolation not in ISOLATIONS:
      raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    if not 1 <= max_parallel <= UID_SLOTS_PER_PROCESS:
      raise ValueError(f"max_parallel must be in [1, {UID_SLOTS_PER_PROCESS}], got {max_parallel}")
    self.python = os.path.realpath(python or getattr(sys, "_base_executable", None) or sys.executable)
    self._prefix = os.path.dirname(os.path.dirname(self.python))
    self._slots: queue.Queue[int] = queue.Queue()
    for k in range(max_parallel):
      self._slots.put(k)
    self._tools = {t: shutil.which(t, path=CLEAN_PATH) for t in ("unshare", "timeout", "prlimit", "setpriv", "mount")}
    self._owner_pid = os.getpid()
    self._root = tempfile.mkdtemp(prefix="leafe_sandbox_")
    os.chmod(self._root, 0o700)
    self.isolation = self._choose_isolation(isolation)

  # ----------------------------------------------------------------------------------------------- setup

  def _choose_isolation(self, requested: str) -> str:
    if requested == "process":
      return "process"
    problems = []
    missing = [t for t, p in self._tools.items() if p is None]
    candidates = [requested] if requested in ("namespace", "userns") else ["namespace", "userns"]
    for mode in candidates:
      if missing:
        problems.append(f"{mode}: missing tools {missing}")
        continue
      if mode == "namespace" and os.geteuid() != 0:
        problems.append("namespace: not running as root (the uid change needs it)")
        continue
      self.isolation = mode
      probe = self.run("print('probe-ok')", limits=Limits(wall_time_s=10.0))
      if probe.status == STATUS_OK and probe.stdout.strip() == "probe-ok":
        return mode
      problems.append(f"{mode}: probe run failed: {probe.status} {probe.detail} {probe.stderr[-300:]}")
    if requested != "auto":
      raise RuntimeError(f"{requested} isolation unavailable: {'; '.join(problems)}")
    _warn_degraded("; ".join(problems))
    return "process"

  def close(self) -> None:
    """Removes the staging directory (only in the process that created it: forked copies share it)."""
    if getattr(self, "_owner_pid", None) == os.getpid():
      shutil.rmtree(self._root, ignore_errors=True)

  def __del__(self):
    self.close()

  # ----------------------------------------------------------------------------------------------- running

  def run(self, source: str, stdin: str = "", limits: Limits | None = None, files: Sequence[tuple[str, str]] = (),
          main: str = "main.py") -> RunResult:
    """Runs `source` as `main` with `stdin`; returns what happened (never raises for the program's faults)."""
    limits = limits or Limits()
    slot = self._slots.get()
    stage = tempfile.mkdtemp(prefix="run_", dir=self._root)
    try:
      for name, text in ((main, source), *files):
        if os.path.basename(name) != name or name.startswith("."):
          raise ValueError(f"sandbox file names must be plain names, got {name!r}")
        with open(os.path.join(stage, name), "w", encoding="utf-8", errors="replace") as f:
          f.write(text)
      stdin_path = os.path.join(stage, ".stdin")
      with open(stdin_path, "w", encoding="utf-8", errors="replace") as f:
        f.write(stdin)
      if self.isolation in ("namespace", "userns"):
        for name in os.listdir(stage):
          os.chmod(os.path.join(stage, name), 0o644)
        result = self._run_namespace(stage, main, stdin_path, limits, _slot_uid(slot))
      else:
        result = self._run_process(stage, main, stdin_path, limits)
      # Paths in tracebacks become relative: feedback must not depend on the random directory name.
      return dataclasses.replace(result, stdout=result.stdout.replace(stage + os.sep, ""),
                                 stderr=result.stderr.replace(stage + os.sep, ""))
    finally:
      shutil.rmtree(stage, ignore_errors=True)
      self._slots.put(slot)

  def run_many(self, jobs: Sequence[Job], limits: Limits | None = None, num_workers: int = 4,
               stop: Callable[[RunResult], bool] | None = None) -> list[RunResult | None]:
    """Runs `jobs` on `num_workers` threads; results in job order.

    If `stop(result)` is true for a finished job, jobs not yet started are skipped (their entry is None).
    """
    limits = limits or Limits()
    results: list[RunResult | None] = [None] * len(jobs)
    stopped = threading.Event()

    def one(i: int) -> None:
      if stopped.is_set():
        return
      job = jobs[i]
      results[i] = self.run(job.source, job.stdin, job.limits or limits, job.files, job.main)
      if stop is not None and stop(results[i]):
        stopped.set()

    workers = max(1, min(num_workers, len(jobs)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for future in [pool.submit(one, i) for i in range(len(jobs))]:
        future.result()
    return results

  def python_argv(self) -> list[str]:
    # -s: no user site-packages; -B: no .pyc files. Not -I: it would ignore PYTHONHASHSEED, and a fixed hash seed
    # makes set/dict orders, hence outputs and feedback, reproducible (replay must see equal observations). The
    # environment is ours alone anyway.
    return [self.python, "-s", "-B"]

  def _env(self, home: str, marker: str | None = None) -> dict[str, str]:
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home,
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0"}
    if marker:
      env["LEAFE_SANDBOX_RUN"] = marker
    return env

  def _setup_script(self, stage: str, main: str, limits: Limits, uid: int, userns: bool) -> str:
    """The shell script that runs as (namespace) root inside the new namespaces and execs the program.

    The mounts are listed in `<stage>/.fstab` and made by one `mount --all` (each `mount` exec costs ~3 ms).
    `userns`: the host user is not root, so the namespaces live in a new user namespace where that user is
    mapped to uid 0. The program then keeps the user's uid, so every visible mount is remounted read-only first,
    and the program runs with an empty capability bounding set (it cannot undo the mounts).
    """
    q = shlex.quote
    workdir = stage  # the program sees its tmpfs working directory at the staging path
    lines = ["umask 022", f"fail() {{ echo \"{SETUP_FAILED_MARK}: $1\" >&2; exit {SETUP_FAILED_RC}; }}"]
    if userns:
      lines += [f"mount -o remount,bind,{opts} {q(target)} 2>/dev/null" for target, opts in _readonly_remounts()]
    lines.append(f"exec 3<{q(stage)} || fail 'open stage'")
    fstab = []
    hidden_home = None if userns else _hidden_ancestor(self._prefix)
    hide_opts = "nosuid,nodev,size=64k,mode=0755"  # root-owned: the program's uid cannot write them
    if hidden_home:
      lines.append(f"exec 4<{q(self._prefix)} || fail 'open interpreter prefix'")
      fstab.append(("leafe_hide", hidden_home, "tmpfs", "nosuid,nodev,size=64k,mode=0755"))
      fstab.append(("/proc/self/fd/4", self._prefix, "none", "bind,X-mount.mkdir"))
    for d in WORLD_WRITABLE_DIRS:
      if _world_writable(d) and (d, "tmpfs") not in {(f[1], f[2]) for f in fstab}:
        fstab.append(("leafe_hide", d, "tmpfs", hide_opts))
    owner = 0 if userns else uid
    fstab.append(("leafe_work", workdir, "tmpfs",
                  f"nosuid,nodev,size={limits.workdir_mb}m,mode=0700,uid={owner},gid={owner},X-mount.mkdir"))
    fstab_path = os.path.join(stage, ".fstab")
    with open(fstab_path, "w") as f:
      f.writelines(" ".join(_fstab_escape(x) for x in entry) + " 0 0\n" for entry in fstab)
    # The copies stay root-owned (read-only for the program); the directory itself is the program's.
    lines += [
        f"mount --all --no-canonicalize --fstab {q(fstab_path)} || fail mounts",
        # userns: the program is uid 0 here, the owner of the covering tmpfs mounts: make them read-only.
        *(f"mount -o remount,bind,ro,nosuid,nodev {q(e[1])} || fail 'seal {e[1]}'" for e in fstab[:-1] if userns),
        f"cp /proc/self/fd/3/* {q(workdir)}/ && cd {q(workdir)} || fail 'copy to workdir'",
        "exec 3<&- 4<&-",
    ]
    backstop = limits.wall_time_s + BACKSTOP_GRACE_S
    nproc = limits.max_processes + (_count_user_processes() if userns else 0)
    user = [] if userns else [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    cmd = [
        self._tools["timeout"], "-s", "KILL", f"{backstop:.3f}",
        self._tools["prlimit"], *self._prlimit_args(limits, nproc), "--",
        self._tools["setpriv"], *user, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
        *self.python_argv(), main,
    ]
    lines.append("exec " + " ".join(q(c) for c in cmd))
    return "\n".join(lines)

  def _prlimit_args(self, limits: Limits, nproc: int | None = None) -> list[str]:
    cpu = limits.cpu_seconds()
    return [
        f"--cpu={cpu}:{cpu + 1}",
        f"--as={limits.memory_mb << 20}",
        f"--nproc={nproc or limits.max_processes}",
        f"--nofile={limits.max_open_files}",
        f"--fsize={limits.max_file_size_mb << 20}",
        "--core=0",
    ]

  def _run_namespace(self, stage: str, main: str, stdin_path: str, limits: Limits, uid: int) -> RunResult:
    userns = self.isolation == "userns"
    script = self._setup_script(stage, main, limits, uid, userns)
    argv = [self._tools["unshare"], *(["--user", "--map-root-user"] if userns else []), "--net", "--pid", "--fork",
            "--kill-child", "--mount-proc", "--propagation=private", "/bin/sh", "-c", script]
    return self._supervise(argv, stdin_path, limits, cwd=self._root, env=self._env(stage), marker=None)

  def _run_process(self, stage: str, main: str, stdin_path: str, limits: Limits) -> RunResult:
    marker = f"leafe-{secrets.token_hex(8)}"
    prlimit = self._tools["prlimit"]
    argv = [*self.python_argv(), main]
    if prlimit:
      argv = [prlimit, *self._prlimit_args(limits), "--", *argv]
    return self._supervise(argv, stdin_path, limits, cwd=stage, env=self._env(stage, marker), marker=marker)

  def _supervise(self, argv: list[str], stdin_path: str, limits: Limits, cwd: str, env: dict[str, str],
                 marker: str | None) -> RunResult:
    """Starts `argv`, collects capped output until exit, enforces wall time, and kills what is left."""
    start = time.monotonic()
    deadline = start + limits.wall_time_s
    try:
      with open(stdin_path, "rb") as stdin:
        # The program gets stdin as an open file only: a file left in its directory (the fallback isolation runs
        # it in the staging directory) would hand it the assert harness' secret token.
        os.unlink(stdin_path)
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                                env=env, start_new_session=True, close_fds=True)
    except OSError as e:
      return RunResult(STATUS_SANDBOX_ERROR, None, "", "", 0.0, detail=f"cannot start {argv[0]}: {e}")
    buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    killed_for = None
    with selectors.DefaultSelector() as sel:
      for stream in buffers:
        os.set_blocking(stream.fileno(), False)
        sel.register(stream, selectors.EVENT_READ)
      while sel.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          killed_for = (STATUS_TIMEOUT, f"wall time limit {limits.wall_time_s:g}s exceeded")
          break
        for key, _ in sel.select(timeout=remaining):
          chunk = key.fileobj.read(_READ_CHUNK)
          if not chunk:
            sel.unregister(key.fileobj)
            continue
          buf = buffers[key.fileobj]
          buf += chunk
          if len(buf) > limits.max_output_bytes:
            del buf[limits.max_output_bytes:]
            name = "stdout" if key.fileobj is proc.stdout else "stderr"
            killed_for = (STATUS_OUTPUT_LIMIT, f"{name} exceeded {limits.max_output_bytes} bytes")
            break
        if killed_for:
          break
    if killed_for:
      self._kill_tree(proc, marker)
    try:
      returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()) + BACKSTOP_GRACE_S)
    except subprocess.TimeoutExpired:
      killed_for = killed_for or (STATUS_TIMEOUT, f"wall time limit {limits.wall_time_s:g}s exceeded")
      self._kill_tree(proc, marker)
      returncode = proc.wait()
    wall_s = time.monotonic() - start
    if marker:  # fallback isolation: kill daemons that left the process group
      _kill_marked(marker)
    proc.stdout.close()
    proc.stderr.close()
    stdout = buffers[proc.stdout].decode("utf-8", errors="replace")
    stderr = buffers[proc.stderr].decode("utf-8", errors="replace")
    return _classify(returncode, stdout, stderr, wall_s, killed_for)

  def _kill_tree(self, proc: subprocess.Popen, marker: str | None) -> None:
    # Namespace isolation: kill PID 1 of the namespace (the child of `unshare`). The kernel then kills every
    # process in the namespace, setsid() daemons included, and PID 1 finishes exiting only once they are all gone;
    # `unshare` waits for it, so when `proc` has exited nothing of the program is left. (Killing `unshare`
    # itself would return before that teardown finished.)
    inits = _children(proc.pid) if self.isolation != "process" else []
    for pid in inits:
      _kill(pid)
    if inits:
      try:
        proc.wait(timeout=KILL_WAIT_S)
        return
      except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
      os.killpg(proc.pid, signal.SIGKILL)
    if marker:
      _kill_marked(marker)


def _kill_marked(marker: str) -> None:
  """Kills every process whose environment holds `marker`, until a sweep finds none.

  One sweep is not enough: a process in the middle of fork() or execve() can be missing from /proc or have an
  unreadable environ for a moment, so the sweep repeats (a pause between) until one after a pause finds nothing.
  """
  for _ in range(MARKER_SWEEPS):
    pids = _pids_with_marker(marker.encode())
    for pid in pids:
      _kill(pid)
    time.sleep(MARKER_SWEEP_PAUSE_S)
    if not pids and not _pids_with_marker(marker.encode()):
      return


def _kill(pid: int) -> None:
  with contextlib.suppress(ProcessLookupError, PermissionError):
    os.kill(pid, signal.SIGKILL)


def _signal_name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f"signal {signum}"


def _classify(returncode: int, stdout: str, stderr: str, wall_s: float,
              killed_for: tuple[str, str] | None) -> RunResult:
  if killed_for:
    return RunResult(killed_for[0], returncode, stdout, stderr, wall_s, detail=killed_for[1])
  if returncode == SETUP_FAILED_RC and SETUP_FAILED_MARK in stderr:
    return RunResult(STATUS_SANDBOX_ERROR, returncode, stdout, stderr, wall_s, detail=stderr.strip()[-500:])
  # A signal shows as a negative status (unshare re-raises it) or as 128+n (from PID 1, which cannot).
  signum = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else 0
  if signum:
    name = _signal_name(signum)
    if signum == signal.SIGXCPU or signum == signal.SIGKILL and "Traceback" not in stderr:
      # SIGKILL without a traceback: the CPU hard limit or the in-namespace wall backstop.
      return RunResult(STATUS_TIMEOUT, returncode, stdout, stderr, wall_s, name, detail=f"CPU time limit ({name})")
    return RunResult(STATUS_SIGNAL, returncode, stdout, stderr, wall_s, name, detail=f"killed by {name}")
  status = STATUS_OK if returncode == 0 else STATUS_ERROR
  return RunResult(status, returncode, stdout, stderr, wall_s)


@functools.cache
def _warn_degraded(problem: str) -> None:
  _LOG.warning("sandbox: falling back to process isolation (no network/PID/file-system isolation, no uid "
               "change): %s", problem)


_DEFAULT_LOCK = threading.Lock()
_DEFAULT: dict[int, Sandbox] = {}  # per process id: a forked worker (EnvPool) builds its own


def default_sandbox() -> Sandbox:
  """The process-wide sandbox (created on first use; its probe run costs ~0.1 s; removed at exit)."""
  with _DEFAULT_LOCK:
    pid = os.getpid()
    if pid not in _DEFAULT:
      _DEFAULT[pid] = Sandbox()
      atexit.register(_close_default, pid)
    return _DEFAULT[pid]


def _close_default(pid: int) -> None:
  if os.getpid() == pid and pid in _DEFAULT:
    _DEFAULT.pop(pid).close()
