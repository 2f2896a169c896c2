"""The steering space (``space.type: steering``): per steering vector a layer and a coefficient,
added to the residual stream by forward hooks.

- :mod:`.config`: its config section (``SteeringSpaceConfig``, ``VectorConfig``);
- :mod:`.space`: the space (``SteeringSpace``);
- :mod:`.vectors`: steering vectors from contrastive prompts, files or the unembedding;
- :mod:`.vector_files`: lm-eval ``steered`` and repeng control-vector files, read and written;
- :mod:`.finishing`: what a run writes after its search (the best candidate as a ``steered``
  .pt, or a control vector).
"""
