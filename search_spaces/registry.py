"""Config names -> search-space classes (``space.type``)."""

from __future__ import annotations

from blackbox.registry import Registry
from blackbox.search_spaces.base import SearchSpace
from blackbox.search_spaces.soft_prompt import SoftPromptSpace
from blackbox.search_spaces.steering import SteeringSpace
from blackbox.search_spaces.tokens import TokenSpace

SPACES: Registry[SearchSpace] = Registry("space", required=("from_config",))
SPACES.add(SteeringSpace, "steering")
SPACES.add(TokenSpace, "tokens")
SPACES.add(SoftPromptSpace, "soft_prompt")
