"""Forward passes: population-batched scoring of interventions (hooks, spliced prompts,
packed rows, trunk reuse)."""
