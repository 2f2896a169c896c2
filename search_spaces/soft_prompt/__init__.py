"""The soft-prompt space (``space.type: soft_prompt``): ``n`` embedding vectors ``p = A z + p0``
spliced into each of the objective's documents.

- :mod:`.config`: its config section (``SoftPromptSpaceConfig``, ``ProjectionConfig``);
- :mod:`.space`: the space (``SoftPromptSpace``, ``SoftPrompt``);
- :mod:`.projection`: soft prompt -> tokens (nearest-token beam, HotFlip repair);
- :mod:`.peft_export`: the soft prompt as a PEFT prompt-tuning adapter;
- :mod:`.finishing`: what a run writes after its search (safetensors, the projection and every
  stage's scores).
"""
