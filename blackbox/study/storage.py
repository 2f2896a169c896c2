"""Every evaluation is an Optuna trial: one storage format for every strategy.

Trials are added complete (``study.add_trial``) once their batch is scored, so an interrupted
run never leaves a half-written trial.  Each trial carries the box row as params, the score as
its value (NaN/inf -> a FAILED trial), and user attributes: ``kind`` (baseline, search,
heldout), ``generation``, ``index``, the decoded candidate, every metric, the cost and whether
it came from the repeat cache.

The study named in the config holds the search trials only, so ``study.best_trial`` and
optuna-dashboard's "best" are search scores; baseline and held-out records go to a sibling
study ``NAME:eval`` in the same storage (:func:`open_eval_study`; :func:`records` reads both).
A held-out score among the search trials would invite selecting on the held-out split.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
import optuna
import sqlalchemy.exc
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from blackbox.errors import UserError
from blackbox.masking import PLACEHOLDER, mask_url
from blackbox.optuna_internals import storage_of

if TYPE_CHECKING:  # the strategies package imports torch: keep `blackbox report` light
    from blackbox.strategies.base import Box

optuna.logging.set_verbosity(optuna.logging.WARNING)

JOURNAL_PREFIX = "journal://"


class StorageError(UserError):
    """The storage cannot be reached or holds an incompatible study (one-line message)."""


def distributions(box: Box) -> dict[str, Any]:
    """Optuna distributions of the box's dimensions (ints for integer dims)."""
    out: dict[str, Any] = {}
    for name, lo, hi, is_int in zip(box.names, box.lower, box.upper, box.integer):
        out[name] = (
            IntDistribution(int(lo), int(hi)) if is_int else FloatDistribution(float(lo), float(hi))
        )
    return out


def space_signature(box: Box) -> str:
    """A text that identifies a search box (names, bounds, integer mask)."""
    parts = [
        f"{n}:{'int' if i else 'float'}[{lo:g},{hi:g}]"
        for n, lo, hi, i in zip(box.names, box.lower, box.upper, box.integer)
    ]
    return ";".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _unusable(shown: str, how: str, exc: BaseException) -> StorageError:
    """``storage 'URL': cannot be <how> (<the driver's first line>)``, passwords masked."""
    return StorageError(
        f"storage {mask_url(shown)!r}: cannot be {how} ({mask_url(_first_line(exc))})"
    )


def _another_config(name: str, shown: str) -> StorageError:
    """The study exists, made with another config (fingerprint)."""
    return StorageError(
        f"study {name!r} in {mask_url(shown)!r} was made with another config ({ANOTHER_CONFIG}); "
        "use another study name or --out"
    )


def _with_driver(url: str) -> str:
    """``postgresql://`` and ``mysql://`` with the installed driver: SQLAlchemy 2.1 defaults to
    psycopg 3 (the ``postgres`` extra) and to mysqlclient (``MySQLdb``); psycopg2 and PyMySQL
    serve when those are missing."""
    for scheme, default, other in (
        ("postgresql://", "psycopg", "psycopg2"),
        ("mysql://", "MySQLdb", "pymysql"),
    ):
        if url.startswith(scheme) and importlib.util.find_spec(default) is None:
            if importlib.util.find_spec(other) is not None:
                return f"{scheme[:-3]}+{other}://" + url[len(scheme) :]
    return url


DRIVER_PACKAGES: dict[str, str] = {
    "mysqldb": "mysqlclient (or pymysql, with mysql+pymysql://)",
    "pymysql": "pymysql",
    "mysqlconnector": "mysql-connector-python",
    "mariadbconnector": "mariadb",
    "psycopg": "'psycopg[binary]' (pip install 'blackbox[postgres]')",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
}
"""The pip package of each SQLAlchemy driver a storage URL may name."""


def check_driver(url: str) -> None:
    """A one-line :class:`StorageError` naming the package to install when the database driver
    of ``url`` (``mysql://`` needs ``MySQLdb``, ...) cannot be imported; SQLite and journal
    files need none."""
    from sqlalchemy.engine import make_url

    full = _with_driver(expand_secrets(url))
    if full.startswith((JOURNAL_PREFIX, "sqlite:")):
        return
    try:
        dialect = make_url(full).get_dialect()
    except Exception as exc:  # malformed URL, unknown dialect or driver
        raise StorageError(
            f"storage {mask_url(url)!r}: not a usable storage URL ({mask_url(_first_line(exc))}); "
            "allowed: postgresql://..., mysql://..., sqlite:///FILE, journal:///FILE"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        package = DRIVER_PACKAGES.get(dialect.driver, f"the {dialect.driver!r} driver")
        raise StorageError(
            f"storage {mask_url(url)!r}: its {dialect.name} driver is not installed "
            f"({_first_line(exc)}); install it: pip install {package}"
        ) from None


def expand_secrets(url: str) -> str:
    """``${VAR}`` in a storage URL, read from the environment when the storage opens, so a
    password need never be in a config: ``postgresql://bb:${PGPASSWORD}@host/db`` (config.yaml
    and result.json keep the placeholder).  An unset variable is a one-line error."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise StorageError(f"storage {mask_url(url)!r}: environment variable {name} is not set")
        whole = m.start() == 0 and m.end() == len(url)  # the whole URL: taken as it is
        return os.environ[name] if whole else quote(os.environ[name], safe="")

    return PLACEHOLDER.sub(value, url)


def checked_option(url: str, option: str = "--storage") -> str:
    """A storage URL given on the command line, checked like a config's ``storage`` (scheme,
    unencoded ``@``) and reachable; a one-line :class:`StorageError` names ``option``."""
    from blackbox.sections import check_storage_url

    try:
        check_storage_url(url)
    except ValueError as exc:
        raise StorageError(f"{option}: {exc} (got {mask_url(url)!r})") from None
    probe_storage(url)
    return url


def probe_storage(url: str, timeout: int = 5) -> None:
    """Check ``url`` can be opened, without creating or writing anything (run before the model
    loads, so a wrong host, password, driver or missing ``${VAR}`` costs seconds).

    Journal and SQLite files: their directory must exist.  Server URLs: one connection is made
    and closed (``timeout`` seconds to connect).  Raises a one-line :class:`StorageError`.
    """
    full = expand_secrets(url)
    if full.startswith(JOURNAL_PREFIX) or full.startswith("sqlite:"):
        path = full[len(JOURNAL_PREFIX) :] if full.startswith(JOURNAL_PREFIX) else ""
        if full.startswith("sqlite:"):
            path = full.split(":///", 1)[1] if ":///" in full else ""
            if not path or path == ":memory:":
                return
        if not path or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise StorageError(f"storage {mask_url(url)!r}: the file's directory does not exist")
        return
    check_driver(url)
    try:
        engine = sqlalchemy.create_engine(
            _with_driver(full),
            connect_args={"connect_timeout": timeout} if full.startswith("postgresql") else {},
        )
    except Exception as exc:  # unknown dialect, driver missing, malformed URL
        raise StorageError(
            f"storage {mask_url(url)!r}: not a usable storage URL ({mask_url(_first_line(exc))}); "
            "allowed: postgresql://..., mysql://..., sqlite:///FILE, journal:///FILE"
        ) from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise _unusable(url, "reached", exc) from None
    finally:
        engine.dispose()


def make_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_callback: Any = None,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``, its tables created (one-line :class:`StorageError`).

    ``journal:///abs/file.log`` (or ``journal://relative.log``) is a journal file
    (``JournalFileBackend``, single host, no server; its directory must exist); anything else
    is an SQLAlchemy URL for ``RDBStorage`` (``sqlite:///...``, ``postgresql://...``), with
    Optuna's heartbeat (``heartbeat_interval``/``grace_period`` seconds) and the callback run
    on a trial whose heartbeat went stale, when given.
    """
    url = expand_secrets(url)
    try:
        if url.startswith(JOURNAL_PREFIX):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = url[len(JOURNAL_PREFIX) :]
            if not path or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise StorageError(
                    f"storage {mask_url(url)!r}: the journal file's directory does not exist"
                )
            return JournalStorage(JournalFileBackend(path))
        check_driver(url)
        for attempt in range(6):
            try:
                with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        _with_driver(url),
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period,
                        heartbeat_stale_trial_callback=stale_callback,
                    )
            except (
                sqlalchemy.exc.IntegrityError,
                sqlalchemy.exc.ProgrammingError,
                sqlalchemy.exc.OperationalError,
            ) as exc:
                # processes creating the tables of a fresh database at once (workers, or a run
                # and a reader such as optuna-dashboard): one wins, retry; SQLite says
                # "table ... already exists" as an OperationalError
                racing = not isinstance(exc, sqlalchemy.exc.OperationalError) or (
                    "already exists" in str(exc)
                )
                if attempt == 5 or not racing:
                    raise
                time.sleep(0.2 + random.random())
    except StorageError:
        raise
    except Exception as exc:  # sqlalchemy / driver errors: keep one line
        raise _unusable(url, "opened", exc) from None


def open_study(
    storage: str | optuna.storages.BaseStorage,
    name: str,
    box: Box,
    fingerprint: str,
    label: str | None = None,
    objectives: Any = None,
) -> optuna.Study:
    """Create or load a maximising study, checking it belongs to this search space and config.

    Args:
        storage: a storage URL (see :func:`make_storage`) or a storage object.
        name: the study name.
        box: the search box (its signature is stored with the study).
        fingerprint: the config fingerprint (stored with the study).
        label: the URL shown in messages when ``storage`` is an object (masked here).
        objectives: a :class:`~blackbox.multiobjective.ObjectiveSpec` (side effects): the
            study gets its directions and metric names (optuna-dashboard then draws the Pareto
            front), and every trial its side values and constraints (see :func:`add_record`).

    Raises:
        StorageError: unreachable storage, or an existing study with another space/config.
    """
    shown = mask_url(storage if isinstance(storage, str) else (label or "storage"))
    if isinstance(storage, str):
        storage = make_storage(storage)
    try:
        directions = objectives.directions if objectives is not None else ["maximize"]
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, load_if_exists=True
        )
    except Exception as exc:  # sqlalchemy / driver errors: keep one line
        raise _unusable(shown, "opened", exc) from None
    sig = space_signature(box)
    attrs = study.user_attrs
    if objectives is not None:
        _SPECS[id(study)] = objectives
    if "space_signature" not in attrs:
        # fingerprint first: a worker joining meanwhile that sees the signature sees both
        study.set_user_attr("fingerprint", fingerprint)
        if objectives is not None and len(objectives.directions) > 1:
            with warnings.catch_warnings():  # set_metric_names is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(objectives.names)
        study.set_user_attr("space_signature", sig)
    elif attrs["space_signature"] != sig:
        raise StorageError(
            f"study {name!r} in {shown!r} was made for another search space "
            f"({attrs['space_signature'][:80]}...); use another study name or --out"
        )
    elif attrs.get("fingerprint") != fingerprint:
        raise _another_config(name, shown)
    return study


ANOTHER_CONFIG = (
    "model, task, space, strategy or seed differ; a worker needs the coordinator's config file "
    "and the same --set overrides"
)


EVAL_SUFFIX = ":eval"
"""A run's baseline and held-out records live in the study ``NAME:eval`` (config names cannot
hold ``:``, so it never meets a user's study)."""


def open_eval_study(study: optuna.Study) -> optuna.Study:
    """The sibling study ``NAME:eval`` holding ``study``'s baseline and held-out records (made
    on first use, with the same directions and metric names; its user attribute
    ``search_study`` names ``study``, and ``study``'s ``eval_study`` names it)."""
    name = study.study_name + EVAL_SUFFIX
    try:
        ev = optuna.create_study(
            storage=storage_of(study),
            study_name=name,
            directions=study.directions,
            load_if_exists=True,
        )
    except Exception as exc:  # sqlalchemy / driver errors: keep one line
        raise _unusable("storage", "opened", exc) from None
    if id(study) in _SPECS:
        _SPECS[id(ev)] = _SPECS[id(study)]
    if "search_study" not in ev.user_attrs:
        if len(study.directions) > 1 and study.metric_names:
            with warnings.catch_warnings():  # set_metric_names is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ev.set_metric_names(study.metric_names)
        ev.set_user_attr("kind", "eval")
        ev.set_user_attr("search_study", study.study_name)
    if study.user_attrs.get("eval_study") != name:
        study.set_user_attr("eval_study", name)
    return ev


def eval_study(study: optuna.Study) -> optuna.Study | None:
    """``study``'s sibling ``NAME:eval`` if the storage holds it (nothing is created)."""
    name = study.study_name + EVAL_SUFFIX
    try:
        storage_of(study).get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=storage_of(study))


def records(
    study: optuna.Study, states: tuple[TrialState, ...] | None = None
) -> list[optuna.trial.FrozenTrial]:
    """Every record of a run: ``study``'s trials (search; baselines and held-out records too in
    studies made before the split) and those of its ``NAME:eval`` sibling."""
    out = list(study.get_trials(deepcopy=False, states=states))
    ev = eval_study(study)
    if ev is not None:
        out += ev.get_trials(deepcopy=False, states=states)
    return out


def stored_fingerprint(storage: Any, name: str, label: str) -> str | None:
    """The config fingerprint stored with study ``name`` (``None``: no such study, or none)."""
    try:
        sid = storage.get_study_id_from_name(name)
    except KeyError:
        return None
    except Exception as exc:  # sqlalchemy / driver errors: keep one line
        raise _unusable(label, "read", exc) from None
    return storage.get_study_user_attrs(sid).get("fingerprint")


def check_existing_study(storage: Any, name: str, fingerprint: str, label: str) -> None:
    """Refuse, before the model loads, to join an existing study made with another config (a
    study not made yet is fine: :func:`open_study` makes it)."""
    if stored_fingerprint(storage, name, label) not in (None, fingerprint):
        raise _another_config(name, label)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


_SPECS: dict[int, Any] = {}
"""``id(study)`` -> the objective spec it was opened with (side effects)."""


def primary_value(t: optuna.trial.FrozenTrial) -> float | None:
    """The primary value of a trial of a single- or multi-objective study (``None``: none)."""
    return None if not t.values else float(t.values[0])


def _side_record(
    study: optuna.Study, value: float, attrs: dict[str, Any]
) -> tuple[list[float] | None, dict[str, float]]:
    """A side-effect study's values ``[value, side columns...]`` (``None`` if one is not
    finite: the trial fails) and constraints ``{"constraints:<column>": column - bound}``
    (optuna-dashboard's feasibility), from the record's ``extra``."""
    spec = _SPECS[id(study)]
    extra = attrs.get("extra") or {}
    row = np.array([[float(extra.get(c.name, np.nan)) for c in spec.columns]])
    values = [float(v) for v in spec.objectives(np.array([value]), row)[0]]
    cons = {
        f"constraints:{c.name}": float(v)
        for c, v in zip(spec.bounded, spec.constraints(row)[0])
        if math.isfinite(v)
    }
    return (values if all(math.isfinite(v) for v in values) else None), cons


MAX_PARAMS = 256
"""Boxes with more dimensions (full soft prompts: n x d) store the row as one user attribute
``x`` instead of one Optuna parameter per dimension (2,304 parameters cost ~2 s a trial)."""


REJECTED = (
    "rejected: the token prompt does not survive retokenisation or holds a banned string "
    "(not scored)"
)


def fail_reason(attrs: dict[str, Any]) -> str:
    """Why a record is a FAIL trial, for anyone reading the storage (Optuna, the dashboard)."""
    if (attrs.get("metrics") or {}).get("rejected"):
        return REJECTED
    return "the objective returned a non-finite value (NaN or inf)"


def add_record(
    study: optuna.Study,
    box: Box,
    x: np.ndarray | None,
    value: float,
    attrs: dict[str, Any],
    pruned_at: int | None = None,
) -> optuna.trial.FrozenTrial:
    """Add one complete (or failed, if ``value`` is not finite) trial (``x`` ``None``: a
    candidate that is not a box point, such as a hand-written baseline: no params).

    ``pruned_at``: racing stopped the candidate after that many documents: a ``PRUNED``
    trial whose intermediate value at that step is ``value`` (the partial estimate)."""
    finite = value is not None and math.isfinite(value)
    if x is None:
        params: dict[str, Any] = {}
    elif box.dim > MAX_PARAMS:
        params = {}
        attrs = {**attrs, "x": [float(v) for v in x]}
    else:
        params = {
            n: (int(round(v)) if i else float(v)) for n, v, i in zip(box.names, x, box.integer)
        }
    state = TrialState.COMPLETE if finite else TrialState.FAIL
    if not finite:  # a FAIL trial says why: a refused candidate is not a crash
        attrs = {**attrs, "fail_reason": fail_reason(attrs)}
    if pruned_at is not None and finite:
        state = TrialState.PRUNED
    values: list[float] | None = [float(value)] if state == TrialState.COMPLETE else None
    system: dict[str, float] = {}
    if values is not None and id(study) in _SPECS:  # side effects: all values, constraints
        values, system = _side_record(study, float(value), attrs)
        state = TrialState.COMPLETE if values is not None else TrialState.FAIL
    trial = optuna.trial.create_trial(
        params=params,
        distributions=distributions(box) if params else {},
        values=values,
        state=state,
        user_attrs={k: _jsonable(v) for k, v in attrs.items()},
        system_attrs=system,
        intermediate_values={int(pruned_at): float(value)} if state == TrialState.PRUNED else None,
    )
    study.add_trial(trial)
    return trial


def trial_x(t: optuna.trial.FrozenTrial, names: tuple[str, ...]) -> np.ndarray | None:
    """The box row of a recorded trial (from its params, or its ``x`` attribute for boxes of
    more than :data:`MAX_PARAMS` dimensions); ``None`` if it does not fit ``names``."""
    if not t.params and "x" in t.user_attrs:
        x = np.asarray(t.user_attrs["x"], dtype=float)
        return x if x.shape == (len(names),) else None
    if set(t.params) != set(names):
        return None
    return np.array([t.params[n] for n in names], dtype=float)


@dataclass
class Memo:
    """Recorded evaluations of a study, for resuming by deterministic replay."""

    by_key: dict[tuple[str, int, int], optuna.trial.FrozenTrial]

    @classmethod
    def load(cls, study: optuna.Study) -> Memo:
        """The records of ``study`` and of its ``NAME:eval`` sibling, by (kind, generation,
        index)."""
        by_key = {}
        states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        for t in records(study, states):
            a = t.user_attrs
            if "kind" in a:
                by_key[(a["kind"], int(a.get("generation", -1)), int(a.get("index", 0)))] = t
        return cls(by_key)

    def get(
        self,
        kind: str,
        generation: int,
        index: int,
        x: np.ndarray | None = None,
        names: tuple[str, ...] = (),
        label: str | None = None,
    ) -> optuna.trial.FrozenTrial | None:
        """The recorded trial at that place, if its params equal ``x`` and its ``label``
        attribute equals ``label`` (each when given)."""
        t = self.by_key.get((kind, generation, index))
        if t is not None and label is not None and t.user_attrs.get("label") != label:
            return None
        if t is None or x is None:
            return t
        got = trial_x(t, names)
        if got is None:
            return None
        return t if got.shape == x.shape and np.allclose(got, x, atol=1e-9) else None

    @staticmethod
    def value(t: optuna.trial.FrozenTrial) -> float:
        """A record's value: its value, a raced trial's partial estimate, else NaN."""
        if t.state == TrialState.PRUNED and "raced" in t.user_attrs:
            return float(t.user_attrs["raced"]["estimate"])
        return float(t.values[0]) if t.state == TrialState.COMPLETE and t.values else float("nan")
