"""SLURM job arrays from a sweep spec: one ``sbatch --array=0-(N-1)`` script whose task i runs the i-th setting of the
grid or random search (the settings :mod:`tfjax.runs.sweep` expands, the command :func:`~tfjax.runs.sweep.
train_command` builds), each in its own workdir ``SWEEPDIR/<settings>`` exactly as a local sweep would.

Every task is resumable: a task whose run finished (``results.json``) exits at once; otherwise ``experiments/train.py``
resumes from the workdir's last checkpoint. The script asks for ``--requeue`` (a preempted task is requeued and picks
up where it stopped) and for SIGTERM ``signal_s`` seconds before the time limit (``--signal=B:TERM@...``): the script
passes it to the run, which saves a checkpoint and exits, and the task requeues itself (``scontrol requeue``) to go on.
``sweep.json`` is written as for a local sweep, so ``./launch.sh report SWEEPDIR`` aggregates the array's runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from typing import Any

from tfjax.runs import sweep as sweep_lib

SCRIPT = "sweep.sbatch"


def sbatch_directives(slurm_args: str) -> list[str]:
  """``"--gpus-per-task=1 --time 2:00:00"`` -> ``["#SBATCH --gpus-per-task=1", "#SBATCH --time 2:00:00"]`` (a value
  given as a separate word stays with its option)."""
  lines: list[str] = []
  for word in shlex.split(slurm_args or ""):
    if word.startswith("-"):
      lines.append(f"#SBATCH {shlex.quote(word)}")
    elif lines:
      lines[-1] += f" {shlex.quote(word)}"
    else:
      raise sweep_lib.SweepError(f"--slurm_args must be sbatch options (--time=2:00:00 ...), got {slurm_args!r}")
  for line in lines:
    if re.match(r"#SBATCH (--array|-a\b)", line):
      raise sweep_lib.SweepError("--slurm_args must not set --array: the script's array is the sweep's runs")
  return lines


def write_script(config: str, settings: list[dict[str, Any]], sweepdir: str, extra_args: list[str] = (),
                 slurm_args: str = "", job_name: str | None = None, train_script: str | None = None,
                 python: str | None = None, signal_s: int = 120) -> str:
  """Writes ``SWEEPDIR/sweep.sbatch`` (and ``sweep.json``) for the runs of ``settings``; returns the script's path.
  ``slurm_args``: more ``sbatch`` options (resources, partition, time limit). Task output goes to
  ``SWEEPDIR/slurm/<job>_<task>.out``, each run's own log to ``WORKDIR/train.log``."""
  if not settings:
    raise sweep_lib.SweepError("the sweep has no runs")
  sweepdir = os.path.abspath(sweepdir)
  runs = sweep_lib.write_sweep_meta(config, settings, sweepdir, extra_args)
  directives = sbatch_directives(slurm_args)
  os.makedirs(os.path.join(sweepdir, "slurm"), exist_ok=True)
  name = job_name or f"tfjax_{os.path.basename(sweepdir)}"
  cases = []
  for i, r in enumerate(runs):
    cmd = sweep_lib.train_command(config, r["workdir"], r["settings"], extra_args, train_script, python)
    cases.append(f"  {i}) workdir={shlex.quote(r['workdir'])}\n"
                 f"     cmd=({' '.join(shlex.quote(c) for c in cmd)}) ;;")
  text = f"""#!/bin/bash
# A tfjax sweep as a SLURM job array: task i runs the i-th of {len(runs)} runs in its own workdir, resuming from its
# checkpoint when requeued. Submit with: sbatch {shlex.quote(os.path.join(sweepdir, SCRIPT))}
# Summary afterwards: ./launch.sh report {shlex.quote(sweepdir)}
#SBATCH --job-name={shlex.quote(name)}
#SBATCH --array=0-{len(runs) - 1}
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:TERM@{int(signal_s)}
#SBATCH --output={shlex.quote(os.path.join(sweepdir, "slurm", "%A_%a.out"))}
{chr(10).join(directives)}
set -uo pipefail
task="${{SLURM_ARRAY_TASK_ID:?submit with sbatch, or set SLURM_ARRAY_TASK_ID to 0..{len(runs) - 1}}}"
case "$task" in
{chr(10).join(cases)}
  *) echo "task $task: this array has tasks 0-{len(runs) - 1}" >&2; exit 2 ;;
esac
if [[ -f "$workdir/results.json" ]]; then
  echo "task $task: $workdir finished already (results.json)"; exit 0
fi
mkdir -p "$workdir"
echo "\\$ ${{cmd[*]}}" >> "$workdir/train.log"
echo "task $task on $(hostname): ${{cmd[*]}}"
"${{cmd[@]}}" >> "$workdir/train.log" 2>&1 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM  # preemption / time limit: the run saves a checkpoint and exits
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
if [[ $rc -eq 0 && ! -f "$workdir/results.json" && -n "${{SLURM_JOB_ID:-}}" ]]; then
  echo "task $task: stopped at a checkpoint before the end; requeueing"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $rc
"""
  path = os.path.join(sweepdir, SCRIPT)
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.chmod(path + ".tmp", 0o755)
  os.replace(path + ".tmp", path)
  return path


def submit(script: str, sbatch: str = "sbatch") -> str:
  """Submits ``script`` with ``sbatch``; returns the job id (also appended to ``slurm/jobs.txt`` beside it)."""
  exe = shutil.which(sbatch)
  if exe is None:
    raise sweep_lib.SweepError(f"--submit: '{sbatch}' is not on PATH (run this on a SLURM login node); the script is "
                               f"written: copy the sweep dir to the cluster and run `sbatch {script}`")
  out = subprocess.run([exe, "--parsable", script], capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise sweep_lib.SweepError(f"sbatch failed (exit code {out.returncode}): {out.stderr.strip() or out.stdout}")
  job = out.stdout.strip().split(";")[0]
  with open(os.path.join(os.path.dirname(script), "slurm", "jobs.txt"), "a") as f:
    f.write(job + "\n")
  return job
