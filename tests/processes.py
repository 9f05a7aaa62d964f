"""Subprocesses of the tests with their output in a file, not a pipe.

A pipe nobody reads while the test waits (for a checkpoint, for the other process of a collective) fills up at
64 KiB (orbax and JAX_LOG_COMPILES write a lot) and blocks the very run the test is waiting for.
"""

import subprocess
import tempfile


def popen_logged(cmd, env, cwd=None, new_session=False) -> subprocess.Popen:
  """`cmd` started with stdout and stderr going to a temporary file that `output` reads."""
  log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (read and closed with the process: `output`)
  proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True,
                          start_new_session=new_session)
  proc.log = log
  return proc


def output(proc: subprocess.Popen, timeout: float = 300) -> str:
  """Everything `proc` wrote, once it has ended (within `timeout` seconds)."""
  proc.wait(timeout=timeout)
  proc.log.seek(0)
  text = proc.log.read()
  proc.log.close()
  return text
