"""Sandbox throughput: judged trivial programs per second, isolated vs bare `python -c` subprocesses.

Both sides run the same program with the same interpreter and flags on the same number of threads; the reference
is a plain `subprocess.run` (no namespaces, no uid change, no limits, no temporary directory). Run alone with
`python -m leafe_jax.envs.coding.bench [--n 50] [--workers 4]`; `benchmarks/envs.py` imports `measure_sandbox`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import time

from leafe_jax.envs.coding import sandbox as sandbox_lib

TRIVIAL_PROGRAM = "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n"
TRIVIAL_INPUT = "1 2 3 4\n"
TRIVIAL_OUTPUT = "10"
DEFAULT_WORKERS = 4


def _bare(python_argv: list[str]) -> bool:
  out = subprocess.run([*python_argv, "-c", TRIVIAL_PROGRAM], input=TRIVIAL_INPUT, capture_output=True, text=True,
                       check=False)
  return out.stdout.strip() == TRIVIAL_OUTPUT


def measure_sandbox(n: int = 50, num_workers: int = DEFAULT_WORKERS, rounds: int = 5,
                    sandbox: sandbox_lib.Sandbox | None = None) -> dict:
  """Programs/s through the sandbox (run_many) and through bare subprocesses, same parallelism.

  The two sides alternate in `rounds` rounds of about n / rounds programs each, so that load changes on a
  shared machine hit both alike; one warm-up round each first.
  """
  sandbox = sandbox or sandbox_lib.default_sandbox()
  limits = sandbox_lib.Limits(wall_time_s=10.0)
  argv = sandbox.python_argv()
  per_round = max(1, n // rounds)
  ours_s = reference_s = 0.0
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    for r in range(rounds + 1):  # round 0 is the warm-up
      jobs = [sandbox_lib.Job(source=TRIVIAL_PROGRAM, stdin=TRIVIAL_INPUT) for _ in range(per_round)]
      start = time.perf_counter()
      results = sandbox.run_many(jobs, limits, num_workers)
      elapsed = time.perf_counter() - start
      bad = [x for x in results if x is None or not x.ok or x.stdout.strip() != TRIVIAL_OUTPUT]
      if bad:
        raise RuntimeError(f"sandboxed trivial program failed: {bad[0]}")
      ours_s += elapsed if r else 0.0
      start = time.perf_counter()
      ok = list(pool.map(lambda _: _bare(argv), range(per_round)))
      elapsed = time.perf_counter() - start
      if not all(ok):
        raise RuntimeError("bare trivial program failed")
      reference_s += elapsed if r else 0.0
  total = per_round * rounds
  ours, reference = total / ours_s, total / reference_s
  return {"ours": round(ours, 2), "reference": round(reference, 2), "unit": "programs/s",
          "ratio": round(ours / reference, 3), "n": total, "workers": num_workers, "isolation": sandbox.isolation}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--n", type=int, default=50, help="programs per side")
  parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="programs run in parallel")
  parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per side")
  args = parser.parse_args()
  result = measure_sandbox(args.n, args.workers, args.rounds)
  print(f"| what ({result['n']} programs, {args.workers} threads, {os.cpu_count()} cores) | programs/s |")
  print("|---|---|")
  print(f"| sandbox ({result['isolation']} isolation, judged) | {result['ours']:.1f} |")
  print(f"| bare `python -c` subprocess | {result['reference']:.1f} |")
  print(f"| ratio | {result['ratio']:.2f} |")
  print(json.dumps({"name": "coding_sandbox", **result}))


if __name__ == "__main__":
  main()
