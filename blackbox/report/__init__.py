"""Reports: plots and tables of a run or a comparison, rebuilt from its storage."""
