"""Many workers on one study: ``blackbox worker`` (:mod:`.worker_cli`), the ask-and-tell
worker on a study's own sampler (:mod:`.worker`), the coordinator that queues a strategy's
generations (:mod:`.remote`) and the worker that scores them (:mod:`.remote_worker`).

Heartbeats, stale-trial retries and claiming a queued trial need Optuna's storage layer,
which Optuna does not expose publicly: every private name used is in
:mod:`blackbox.optuna_internals`, and pyproject pins the Optuna range it was tested on.
"""
