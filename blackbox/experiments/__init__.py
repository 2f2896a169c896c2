"""Experiments over many runs: strategy comparisons and hyperparameter tuning."""
