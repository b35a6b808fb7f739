"""``./launch.sh multihost N CONFIG [--workdir=DIR] [--config.KEY=VALUE ...]``: N processes of
``experiments/train.py`` on this machine, joined by ``jax.distributed.initialize`` (coordinator on 127.0.0.1 at a
free port). Each process loads only its block of each global batch; checkpoints are written by all of them together.
Process 0's output is shown; the others' go to ``WORKDIR/process_<i>.log``. On a real cluster start
``experiments/train.py`` once per host with ``TFJAX_DISTRIBUTED=1`` instead (see the README)."""

import os
import signal
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(num_processes: int, train_args: list[str], env: dict | None = None, log_dir: str | None = None) -> int:
  """Starts the processes, waits for all; returns the first non-zero exit code (0 if all succeeded). If one fails
  the others are stopped (a collective would otherwise wait for it forever)."""
  env = dict(os.environ if env is None else env)
  env.update(TFJAX_COORDINATOR=f"127.0.0.1:{free_port()}", TFJAX_NUM_PROCESSES=str(num_processes))
  procs, logs = [], []
  for i in range(num_processes):
    out = None
    if i > 0 and log_dir:
      os.makedirs(log_dir, exist_ok=True)
      out = open(os.path.join(log_dir, f"process_{i}.log"), "w")  # pylint: disable=consider-using-with
      logs.append(out)
    procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "experiments", "train.py"), *train_args],
                                  env={**env, "TFJAX_PROCESS_ID": str(i)}, stdout=out,
                                  stderr=subprocess.STDOUT if out else None,
                                  start_new_session=True))  # Ctrl-C reaches only us; we send SIGTERM to all
  code = 0
  try:
    pending = list(procs)
    while pending:
      for p in list(pending):
        try:
          rc = p.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
          continue
        pending.remove(p)
        if rc and not code:
          code = rc
          for q in pending:
            q.terminate()
  except KeyboardInterrupt:
    for p in procs:
      p.send_signal(signal.SIGTERM)  # every process saves the checkpoint together, then exits
    for p in procs:
      p.wait()
    code = 130
  for f in logs:
    f.close()
  return code


def main(argv) -> int:
  if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
    print("usage: multihost.py N --config=CONFIG --workdir=DIR [--config.KEY=VALUE ...] (N >= 1 processes)",
          file=sys.stderr)
    return 2
  n = int(argv[0])
  workdir = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--workdir=")), None)
  return launch(n, argv[1:], log_dir=workdir)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
