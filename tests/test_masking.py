"""Every form of a storage password is masked, and nothing else is touched."""

from __future__ import annotations

import pytest

from blackbox.masking import mask_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://bb:hunter2@127.0.0.1:5432/db", "postgresql://bb:***@127.0.0.1:5432/db"),
        ("postgresql://bb:hun@ter2@host/db", "postgresql://bb:***@host/db"),  # '@' in it
        ("postgresql://bb:hun%40ter2@host/db", "postgresql://bb:***@host/db"),  # encoded
        ("postgresql+psycopg2://bb:hunter2@host/db", "postgresql+psycopg2://bb:***@host/db"),
        ("postgresql://bb@host/db?password=hunter2", "postgresql://bb@host/db?password=***"),
        (
            "postgresql://host/db?sslmode=require&sslpassword=hunter2&x=1",
            "postgresql://host/db?sslmode=require&sslpassword=***&x=1",
        ),
        (
            'failed: "postgresql://u:hunter2@h/db" refused',
            'failed: "postgresql://u:***@h/db" refused',
        ),
        ("postgresql://bb@host/db", "postgresql://bb@host/db"),  # no password: unchanged
        ("sqlite:////tmp/a@b/study.db", "sqlite:////tmp/a@b/study.db"),  # '@' in a path
        ("journal:///tmp/j.log", "journal:///tmp/j.log"),
        ("postgresql://bb:${PGPASSWORD}@h/db", "postgresql://bb:${PGPASSWORD}@h/db"),  # a reference
    ],
)
def test_every_form_of_password_is_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert "hunter2" not in mask_url(url) and "ter2" not in mask_url(url)


def test_nested_storage_sections_are_masked() -> None:
    from blackbox.masking import masked

    cfg = {"study": {"storage": "postgresql://a:hunter2@h/d", "seed": 0}, "storage": None}
    assert masked(cfg) == {
        "study": {"storage": "postgresql://a:***@h/d", "seed": 0},
        "storage": None,
    }
    assert cfg["study"]["storage"].endswith("hunter2@h/d")  # the input is left alone


def test_a_bounded_repr_never_expands_a_huge_value() -> None:
    from blackbox.masking import short_repr

    level = ["x"] * 10
    for _ in range(8):  # 10^9 leaves, shared references (what a YAML anchor bomb builds)
        level = [level] * 10
    text = short_repr(level)
    assert len(text) < 200 and text.startswith("[[[")
