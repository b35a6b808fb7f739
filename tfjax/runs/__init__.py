"""Working with many runs: sweeps (grid, random, Optuna studies, SLURM job arrays) and plots of their curves.

- :mod:`~tfjax.runs.sweep`: expand ``--sweep KEY=V1,V2`` / ``--range KEY=LO:HI:log`` into runs, each one
  ``./launch.sh train`` command in its own workdir; run them in parallel, resume, report.
- :mod:`~tfjax.runs.optuna_sweep`: an Optuna study whose workers share one storage; bad runs pruned.
- :mod:`~tfjax.runs.slurm`: the same runs as a SLURM job array.
- :mod:`~tfjax.runs.plots`: loss curves of workdirs to a PNG.

None of this is training: each run is an ordinary training command, so any run of a sweep can be relaunched,
resumed, plotted or explained on its own.
"""
