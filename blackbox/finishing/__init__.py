"""What every run writes after its search, whatever its space: provenance and statistics
(:mod:`.provenance`), the lm-eval task variant a finished run is re-scored with
(:mod:`.lm_eval_variant`) and the run's plots (:mod:`.plots`).

A space's own finishing step (its files: a ``steered`` .pt, a prompt's text, a soft prompt and
its projection) lives in the space's folder as its ``finisher``
(:mod:`blackbox.search_spaces.finishing`); ``blackbox export RUN_DIR`` re-runs its
:meth:`~blackbox.search_spaces.finishing.Finisher.export` on a finished run.
"""
