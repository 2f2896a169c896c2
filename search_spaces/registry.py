"""Config names -> search-space classes (``space.type``): one line per space.

A space is registered by its config section (whose ``type`` literal is its name) and the path
of its class, imported when a study first asks for it; the class brings its finishing step
(``finisher``).  The study schema's ``space:`` is assembled from this registry
(:func:`blackbox.config.schema.study_schema`), so a config is validated before torch loads.  A
user's own space registers its class: ``SPACES.add(MySpace, "my_space")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blackbox.registry import Registry
from blackbox.search_spaces.soft_prompt.config import SoftPromptSpaceConfig
from blackbox.search_spaces.steering.config import SteeringSpaceConfig
from blackbox.search_spaces.tokens.config import TokenSpaceConfig

if TYPE_CHECKING:
    from blackbox.search_spaces.base import SearchSpace

SPACES: Registry[SearchSpace] = Registry("space", required=("from_config",), sections=True)
SPACES.add_lazy(SteeringSpaceConfig, "blackbox.search_spaces.steering.space:SteeringSpace")
SPACES.add_lazy(TokenSpaceConfig, "blackbox.search_spaces.tokens.space:TokenSpace")
SPACES.add_lazy(SoftPromptSpaceConfig, "blackbox.search_spaces.soft_prompt.space:SoftPromptSpace")
