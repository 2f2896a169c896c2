"""Finishing steps, one per search space: what a run writes after the search.

``FINISHERS`` (:mod:`.registry`) maps a space name to a :class:`~blackbox.finishing.base.Finisher`:

- ``steering`` (:mod:`.steering`): the best candidate as lm-eval's ``steered`` .pt;
- ``tokens`` (:mod:`.tokens`): the best prompt's text, per-token attribution, the fluency Pareto
  front over every evaluation;
- ``soft_prompt`` (:mod:`.soft`): the soft prompt as safetensors, its nearest-token projection,
  a beam and HotFlip repair, every stage scored on every split.

``blackbox export RUN_DIR`` re-runs a space's :meth:`~blackbox.finishing.base.Finisher.export`
on a finished run.
"""
