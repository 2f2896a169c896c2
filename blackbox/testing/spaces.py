"""Conformance suite every search space inherits.

Subclass :class:`SpaceConformance` in a ``Test*`` class of your tests and supply one fixture,
``space`` (a built search space):

    import pytest
    from blackbox.testing.spaces import SpaceConformance

    class TestMySpace(SpaceConformance):
        component = "my_space"  # its registry name (checked: ``space`` is that class)
        @pytest.fixture
        def space(self, tokenizer):
            return MySpace(tokenizer, n_tokens=3)

The suite checks what strategies, the runner and the objectives rely on: samples ``(n, dim)``
lie in the box (``bounds`` ``(dim, 2)``), ``decode(encode(c))`` returns ``c``, integer
dimensions are whole, the intervention matches the space's declared kind (``hooks``: one
``lowest_layer`` per candidate; ``prompt``: one ``embeds``/``ids``/``valid`` entry per
candidate) and keys identical candidates identically, and descriptions are JSON-friendly (they
are stored with every trial).  ``component`` (the registry name, or ``None`` for a space that
is not registered) is read by ``tests/test_conformance_coverage.py``.
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

from blackbox.api import HOOKS, PROMPT


class SpaceConformance:
    component: ClassVar[str | None] = None

    @pytest.fixture
    def space(self):
        raise NotImplementedError("a conformance subclass must supply `space`")

    def test_builds_the_registered_component(self, space) -> None:
        """``space`` is the class registered as ``component`` (when one is declared)."""
        if self.component is None:
            return
        from blackbox.search_spaces.registry import SPACES

        assert type(space) is SPACES.get(self.component), (type(space), self.component)

    def test_samples_lie_in_the_box_and_round_trip(self, space) -> None:
        rng = np.random.default_rng(0)
        x = space.box.sample(12, rng)
        assert np.all(x >= space.bounds[:, 0]) and np.all(x <= space.bounds[:, 1])
        assert np.all(x[:, space.box.integer] == np.rint(x[:, space.box.integer]))
        cands = space.decode(x)
        assert len(cands) == 12
        again = space.decode(space.encode(cands))
        np.testing.assert_allclose(space.encode(again), space.encode(cands), atol=1e-5)

    def test_decode_clips_into_the_box(self, space) -> None:
        far = np.full((1, space.dim), 1e9)
        x = space.encode(space.decode(far))
        assert np.all(x <= space.bounds[:, 1] + 1e-6)

    def test_intervention_matches_the_declared_kind(self, space) -> None:
        cands = space.sample(3, np.random.default_rng(1))
        iv = space.intervention(cands + cands[:1])
        assert iv.kind == space.traits.intervention and len(iv) == 4
        assert iv.keys[0] == iv.keys[3]
        if iv.kind == PROMPT:
            assert len(iv.embeds) == len(iv.ids) == len(iv.valid) == 4
        elif iv.kind == HOOKS:
            assert len(iv.lowest_layer) == 4
        assert space.traits.discrete == space.is_discrete

    def test_descriptions_and_baselines_are_json_friendly(self, space) -> None:
        cands = space.sample(2, np.random.default_rng(2))
        json.dumps([space.describe(c) for c in cands])
        for label, c in getattr(space, "baselines", dict)().items():
            assert isinstance(label, str)
            json.dumps(space.describe(c))
            assert len(space.intervention([c])) == 1
