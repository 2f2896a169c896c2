"""The token space (``space.type: tokens``): a sequence of token ids from an allowed vocabulary,
placed in each of the objective's documents.

- :mod:`.config`: its config section (``TokenSpaceConfig``);
- :mod:`.space`: the space (``TokenSpace``, ``TokenPrompt``);
- :mod:`.attribution`: per-token attribution of a prompt (drop or swap one token);
- :mod:`.finishing`: what a run writes after its search (the best prompt's text, its
  attribution, the fluency Pareto front).
"""
