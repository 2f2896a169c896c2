"""Finishing steps, one per search space: what a run writes after the search."""
