"""Shared fixtures of the distributed tests: a throwaway PostgreSQL 15 server (one per session)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "s3cret-pw"  # trust auth ignores it: it is there to prove it is masked everywhere


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster (trust auth on 127.0.0.1), stopped and removed after.

    Fails (does not skip) when the binaries are missing: CI has them.
    """
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not (initdb.is_file() and pg_ctl.is_file()):
        pytest.fail(f"PostgreSQL 15 binaries not found in {PG_BIN} (apt install postgresql-15)")
    root = Path(tempfile.mkdtemp(prefix="bb-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    started = False
    try:
        subprocess.run(
            [*as_user, str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
        )
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*as_user, str(pg_ctl), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w"]
            + ["start"],
            check=True,
            capture_output=True,
        )
        started = True
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE blackbox")
        # trust auth ignores the password: it is there to prove it is masked everywhere
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/blackbox"
    finally:
        if started:
            subprocess.run(
                [*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)
