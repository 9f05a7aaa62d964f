"""Hostile programs in the sandbox: each is contained, gets a clear status, and leaves the host unaffected."""

import os
import secrets
import socket
import textwrap

import psutil
import pytest

from leafe_jax.envs.coding import judging as judge_lib
from leafe_jax.envs.coding import sandbox as sandbox_lib
from leafe_jax.envs.coding.problems import Problem, TestCase
from leafe_jax.envs.coding.sandbox import Job, Limits, Sandbox

FAST = Limits(wall_time_s=1.5, memory_mb=256, max_processes=8)


@pytest.fixture(scope="module")
def sandbox():
  sb = Sandbox()
  yield sb
  sb.close()


@pytest.fixture(scope="module")
def isolated(sandbox):
  if sandbox.isolation != "namespace":
    pytest.skip("namespace isolation needs root and util-linux unshare/setpriv")
  return sandbox


@pytest.fixture(scope="module")
def userns_sandbox():
  """The isolation used when the host user is not root (a user namespace; here root maps to root)."""
  try:
    sb = Sandbox(isolation="userns")
  except RuntimeError as e:
    pytest.skip(f"user namespaces unavailable: {e}")
  yield sb
  sb.close()


@pytest.fixture(params=["namespace", "userns"])
def any_isolated(request):
  return request.getfixturevalue("isolated" if request.param == "namespace" else "userns_sandbox")


def _no_process_with(marker: str) -> bool:
  return not any(marker in part for p in psutil.process_iter(["cmdline"]) for part in p.info["cmdline"] or ())


def _src(code: str) -> str:
  return textwrap.dedent(code).strip() + "\n"


def test_runs_program_with_stdin_and_reports_exit_status(sandbox):
  r = sandbox.run("import sys\nprint(sys.stdin.read().upper())\nraise SystemExit(3)", stdin="abc")
  assert r.status == sandbox_lib.STATUS_ERROR
  assert r.returncode == 3
  assert r.stdout.strip() == "ABC"


def test_traceback_paths_are_relative_so_feedback_is_reproducible(sandbox):
  r = sandbox.run("1/0")
  assert r.status == sandbox_lib.STATUS_ERROR
  assert 'File "main.py", line 1' in r.stderr
  assert "leafe_sandbox_" not in r.stderr


def test_infinite_loop_is_killed_at_the_wall_limit(sandbox):
  r = sandbox.run("while True:\n  pass\n", limits=FAST)
  assert r.status == sandbox_lib.STATUS_TIMEOUT
  assert r.wall_s < FAST.wall_time_s + 3


def test_sleep_past_the_wall_limit_is_killed(sandbox):
  r = sandbox.run("import time\nprint('start', flush=True)\ntime.sleep(60)\n", limits=FAST)
  assert r.status == sandbox_lib.STATUS_TIMEOUT
  assert r.stdout.strip() == "start"
  assert r.wall_s < FAST.wall_time_s + 3


def test_cpu_limit_stops_a_busy_loop_even_without_the_wall_timer(sandbox):
  r = sandbox.run("while True:\n  pass\n", limits=Limits(wall_time_s=8.0, cpu_time_s=1.0))
  assert r.status == sandbox_lib.STATUS_TIMEOUT
  assert r.signal == "SIGXCPU"


def test_memory_bomb_gets_memory_error(sandbox):
  r = sandbox.run("x = []\nwhile True:\n  x.append(bytearray(10**7))\n", limits=Limits(wall_time_s=5, memory_mb=128))
  assert r.status == sandbox_lib.STATUS_ERROR
  assert "MemoryError" in r.stderr


def test_stdout_flood_is_capped_and_killed(sandbox):
  limits = Limits(wall_time_s=5, max_output_bytes=1 << 16)
  r = sandbox.run("while True:\n  print('x' * 4096)\n", limits=limits)
  assert r.status == sandbox_lib.STATUS_OUTPUT_LIMIT
  assert len(r.stdout) <= limits.max_output_bytes
  assert r.wall_s < 4


def test_fork_bomb_is_contained_and_leaves_nothing(isolated):
  marker = f"forkbomb{secrets.token_hex(4)}"
  bomb = "import os\nwhile True:\n  try: os.fork()\n  except OSError: pass"
  code = _src(f"""
    import os, sys
    sys.argv.append({marker!r})
    while True:
      try:
        if os.fork() == 0:
          os.execv(sys.executable, [sys.executable, "-c", {bomb!r}, {marker!r}])
      except OSError:
        pass
    """)
  r = isolated.run(code, limits=FAST)
  assert r.status in (sandbox_lib.STATUS_TIMEOUT, sandbox_lib.STATUS_ERROR)
  assert _no_process_with(marker)
  assert isolated.run("print('alive')").stdout.strip() == "alive"  # the host can still start programs


def test_socket_to_host_listener_fails(any_isolated):
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    code = _src(f"""
      import socket
      try:
        socket.create_connection(("127.0.0.1", {port}), timeout=1)
        print("CONNECTED")
      except OSError as e:
        print("blocked", type(e).__name__)
      """)
    r = any_isolated.run(code, limits=FAST)
    assert r.stdout.startswith("blocked"), r
    with pytest.raises(TimeoutError):
      server.accept()


def test_writing_outside_its_directory_fails(any_isolated, tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  targets = [str(tmp_path / "escape.txt"), f"/tmp/leafe_escape_{secrets.token_hex(4)}",
             f"/var/tmp/leafe_escape_{secrets.token_hex(4)}", os.path.join(repo, f"escape_{secrets.token_hex(4)}")]
  code = _src(f"""
    targets = {targets!r}
    for path in targets:
      try:
        with open(path, "w") as f:
          f.write("escaped")
        print("WROTE", path)
      except OSError as e:
        print("denied", type(e).__name__)
    open("inside.txt", "w").write("fine")
    print("inside", open("inside.txt").read())
    """)
  r = any_isolated.run(code, limits=FAST)
  assert r.ok, r
  assert "WROTE" not in r.stdout
  assert "inside fine" in r.stdout
  for path in targets:
    assert not os.path.exists(path)


def test_parent_environment_secrets_are_not_visible(any_isolated, monkeypatch):
  secret = f"s3cr3t{secrets.token_hex(8)}"
  monkeypatch.setenv("LEAFE_TEST_SECRET", secret)
  code = _src(f"""
    import os
    print(dict(os.environ))
    for pid in ["1", str(os.getppid()), {str(os.getpid())!r}]:
      try:
        print(open(f"/proc/{{pid}}/environ", "rb").read())
      except OSError as e:
        print("denied", pid, type(e).__name__)
    """)
  r = any_isolated.run(code, limits=FAST)
  assert r.ok, r
  assert secret not in r.stdout + r.stderr
  assert "LEAFE_TEST_SECRET" not in r.stdout


def test_killing_its_parent_or_everyone_leaves_the_host_alive(isolated):
  code = _src(f"""
    import os, signal
    for target in (os.getppid(), {os.getpid()}, -1, 1):
      try:
        os.kill(target, signal.SIGKILL)
      except OSError as e:
        print("denied", target, type(e).__name__)
    print("still here")
    """)
  r = isolated.run(code, limits=FAST)
  assert r.status in (sandbox_lib.STATUS_OK, sandbox_lib.STATUS_SIGNAL, sandbox_lib.STATUS_ERROR)
  assert psutil.Process(os.getpid()).is_running()
  assert isolated.run("print('alive')").stdout.strip() == "alive"


@pytest.mark.parametrize("main_waits", [False, True], ids=["main_exits", "main_times_out"])
def test_no_daemon_survives_the_run(any_isolated, main_waits):
  marker = f"daemon{secrets.token_hex(4)}"
  code = _src(f"""
    import os, sys, time
    if os.fork() == 0:
      os.setsid()
      if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
      os._exit(0)
    time.sleep(0.3)
    print("daemon started", flush=True)
    if {main_waits!r}:
      time.sleep(60)
    """)
  r = any_isolated.run(code, limits=FAST)
  assert "daemon started" in r.stdout
  assert r.status == (sandbox_lib.STATUS_TIMEOUT if main_waits else sandbox_lib.STATUS_OK)
  assert _no_process_with(marker)


def test_runs_as_an_unprivileged_uid_in_a_private_pid_namespace(isolated):
  r = isolated.run("import os\nprint(os.getuid(), os.getgid(), os.getpid(), len([p for p in os.listdir('/proc') "
                   "if p.isdigit()]))\n", limits=FAST)
  uid, gid, pid, nprocs = map(int, r.stdout.split())
  assert uid != 0 and gid != 0
  assert nprocs <= 3  # PID 1 (the wall-time backstop) and the program


def test_run_many_runs_in_parallel_with_distinct_uids(isolated):
  code = "import os, time\nstart = time.time()\ntime.sleep(0.5)\nprint(os.getuid(), start, time.time())\n"
  results = isolated.run_many([Job(source=code) for _ in range(4)], limits=FAST, num_workers=4)
  assert all(r.ok for r in results)
  uids, starts, ends = zip(*(r.stdout.split() for r in results))
  assert len(set(uids)) == 4  # one uid per concurrent slot: RLIMIT_NPROC is not shared
  assert max(map(float, starts)) < min(map(float, ends))  # all four were running at the same moment


def test_run_many_stops_starting_jobs_after_stop_predicate(sandbox):
  jobs = [Job(source="raise SystemExit(1)")] + [Job(source="print(1)")] * 5
  results = sandbox.run_many(jobs, limits=FAST, num_workers=1, stop=lambda r: not r.ok)
  assert results[0].status == sandbox_lib.STATUS_ERROR
  assert results[1:] == [None] * 5


def test_process_isolation_fallback_limits_and_cleans_up():
  sb = Sandbox(isolation="process")
  try:
    assert sb.isolation == "process"
    assert sb.run("print(6 * 7)").stdout.strip() == "42"
    assert sb.run("while True:\n  pass\n", limits=FAST).status == sandbox_lib.STATUS_TIMEOUT
    marker = f"fallback{secrets.token_hex(4)}"
    code = _src(f"""
      import os, sys
      if os.fork() == 0:
        os.setsid()
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
      """)
    sb.run(code, limits=FAST)
    assert _no_process_with(marker)
  finally:
    sb.close()


_READ_TOKEN_FILE = """
import json, os, sys
token = open(".stdin").read().strip()
for event in ({"start": 0}, {"test": 0, "passed": True}, {"done": True}):
  sys.stdout.write("\\n" + token + json.dumps(event) + "\\n")
sys.stdout.flush()
os._exit(0)
"""


def test_process_isolation_program_cannot_read_the_harness_token_from_its_stdin_file():
  """The fallback isolation (non-root host without user namespaces) ran the program in the staging directory,
  where the harness' stdin (the secret token) was a file `.stdin`: any MBPP/HumanEval program faked a pass."""
  problem = Problem("t", "mbpp", "s", (TestCase(code="assert f(1) == 2"),), (TestCase(code="assert f(1) == 2"),))
  sandbox = Sandbox(isolation="process")
  try:
    verdict = judge_lib.judge(problem, _READ_TOKEN_FILE, sandbox=sandbox)
    assert not verdict.passed, verdict
    # stdin itself still reaches programs
    assert sandbox.run("print(input()[::-1])", stdin="abc\n").stdout == "cba\n"
  finally:
    sandbox.close()
