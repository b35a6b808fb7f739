"""``./launch.sh report SWEEPDIR``: the summary table (``summary.md``, ``summary.csv``) and the loss curves of all
runs (``curves.png``, best highlighted) of a sweep directory, finished or not."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1 or argv[0].startswith("-"):
    print("usage: ./launch.sh report SWEEPDIR", file=sys.stderr)
    return 2
  if not os.path.isdir(argv[0]):
    print(f"report: {argv[0]} is not a directory", file=sys.stderr)
    return 2
  from tfjax.train import sweep
  sweep.report(argv[0])
  with open(os.path.join(argv[0], "summary.md")) as f:
    print(f.read())
  return 0


if __name__ == "__main__":
  sys.exit(main())
