"""Studies: the pipeline (prepare, execute), the runner, Optuna storage, run directories and
workers."""
