"""The experiment: configuration -> plan -> data, M, K -> attacked predictions -> metrics -> reports.

``plan`` turns the configuration into the components' options (the one place that reads its
fields), ``stages`` computes (data, models, predictions), ``outputs`` writes the run's files,
``run`` orchestrates a run and the grid.
"""

from unmask.experiment.plan import Plan, build_plan
from unmask.experiment.run import grid_report, run_experiment, run_grid

__all__ = ["Plan", "build_plan", "grid_report", "run_experiment", "run_grid"]
