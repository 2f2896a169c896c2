"""``blackbox worker``: join a shared study (see :mod:`blackbox.distributed.worker`).

    blackbox worker CONFIG --storage URL [--study NAME] [--set KEY=VALUE ...]
                    [--workers N] [--devices D,D,...] [--batch N] [--remote]
                    [--heartbeat S] [--grace S] [--max-retry N]

Two kinds of worker, chosen by the strategy: with ``strategy.name: optuna`` each worker asks
the study's own sampler (:class:`~blackbox.distributed.worker.Worker`); with any other strategy (or
``--remote``) a coordinator (``blackbox run CONFIG --storage URL --remote``) keeps the strategy
and the workers score the trials it enqueues, ``--batch`` at a time
(:class:`~blackbox.distributed.remote_worker.RemoteWorker`).  ``--devices cuda:0,cuda:1`` starts one
worker process per device (``--devices cpu,cpu`` works too); the device does not enter the
study's config fingerprint, so workers on other devices join the same study.

Run it on as many machines (one per GPU) as you like against one PostgreSQL URL, or with
``--workers N`` to start N worker processes here (they share this command's storage, passed to
them in ``BLACKBOX_STORAGE`` so no password shows in ``ps``).  The storage may also come from
``$BLACKBOX_STORAGE`` or the config's ``storage``; ``journal:///path/study.log`` is a
single-host journal file.  Re-running the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import zlib
from typing import Any

STORAGE_ENV = "BLACKBOX_STORAGE"


def register(subparsers: Any) -> None:
    """Add the ``worker`` subcommand to the ``blackbox`` parser."""
    p = subparsers.add_parser(
        "worker",
        help="join a shared study (Optuna storage) as one or N worker processes",
        description="Take trials from a study shared by many workers. strategy.name=optuna: ask "
        "the study's sampler, stop at budget.evaluations complete search trials. Any other "
        "strategy (or --remote): score the generations a coordinator (blackbox run --remote) "
        "enqueues, stop when it is done.",
    )
    p.add_argument("config", help="study YAML (see studies/)")
    p.add_argument(
        "--storage",
        help=f"Optuna storage URL (postgresql://..., sqlite:///..., journal:///file.log); "
        f"default: ${STORAGE_ENV}, else the config's storage",
    )
    p.add_argument("--study", help="study name (default: the config's name)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes to start here (default 1)"
    )
    p.add_argument(
        "--devices",
        help="comma-separated devices, one worker process each (cuda:0,cuda:1 or cpu,cpu); "
        "one device: every worker on it",
    )
    p.add_argument("--device", help=argparse.SUPPRESS)  # a spawned child's own device
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="trials scored per forward pass (default: 1 asking a sampler; an even share of "
        "each generation over every live worker, however started, taking a coordinator's)",
    )
    p.add_argument(
        "--remote",
        action="store_true",
        help="take the trials a coordinator enqueues (implied by any strategy but optuna)",
    )
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between heartbeats")
    p.add_argument(
        "--grace", type=int, default=60, help="seconds of silence after which a trial is stale"
    )
    p.add_argument("--max-retry", type=int, default=3, help="retries of a stale trial")
    p.set_defaults(handler=cmd_worker)


def _check(args: argparse.Namespace) -> tuple[Any, str]:
    """Validate the config and the options (cheap, before any model load)."""
    from blackbox.config import ConfigError, load_config

    cfg = load_config(args.config, args.overrides)
    url = args.storage or os.environ.get(STORAGE_ENV) or cfg.storage
    devices = [d.strip() for d in (args.devices or "").split(",") if d.strip()]
    if args.devices is not None and not devices:
        raise ConfigError("worker: --devices is empty; give e.g. cuda:0,cuda:1 or cpu,cpu")
    if args.workers is None:
        args.workers = max(1, len(devices))
    if len(devices) > 1 and len(devices) != args.workers:
        raise ConfigError(
            f"worker: --devices names {len(devices)} devices for --workers {args.workers}; "
            "give one per worker (or one for all)"
        )
    args.device_list = devices
    args.remote = bool(args.remote or cfg.strategy.name != "optuna")
    if args.batch is None and not args.remote:
        args.batch = 1  # remote: None, a fair share of each generation over the live workers
    if not url:
        raise ConfigError(
            f"worker: no storage; pass --storage URL (or set ${STORAGE_ENV} or storage: in the config)"
        )
    for name in ("workers", "batch", "heartbeat", "grace"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"worker: --{name} must be >= 1, got {getattr(args, name)}")
    if args.max_retry < 0:
        raise ConfigError(f"worker: --max-retry must be >= 0, got {args.max_retry}")
    if args.grace <= args.heartbeat:
        raise ConfigError(f"worker: --grace ({args.grace}) must exceed --heartbeat")
    if url != cfg.storage:
        from blackbox.study.storage import checked_option

        checked_option(url, "--storage" if args.storage else f"${STORAGE_ENV}")
    from blackbox.study.pipeline import check  # torch and transformers: after the cheap checks

    check(cfg)
    from blackbox.models.loading import check_source

    check_source(cfg.model.name)  # before the storage is made: a missing model creates nothing
    if args.remote:
        return cfg, url
    if cfg.budget.evaluations is None:
        raise ConfigError("worker: budget.evaluations must be set (workers count complete trials)")
    return cfg, url


def _sampler(cfg: Any, has_integer: bool) -> Any:
    """The config's Optuna sampler, seeded per worker (seed, host, pid) so workers differ."""
    import socket

    import numpy as np
    import optuna

    from blackbox.strategies.optuna_sampler import build_sampler

    host = zlib.crc32(socket.gethostname().encode())
    seed = int(np.random.SeedSequence([cfg.seed, host, os.getpid()]).generate_state(1)[0] >> 1)
    name = str(cfg.strategy.settings.get("sampler", "tpe")).lower()
    if name == "tpe":  # constant liar: running trials repel other workers' proposals
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return build_sampler(name, seed, cfg.strategy.population, has_integer)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker (or spawn ``--workers`` of them)."""
    cfg, url = _check(args)
    from blackbox.distributed.worker import Worker, install_sigint, retry_callback, search_counts
    from blackbox.masking import mask_url
    from blackbox.study.storage import (
        check_existing_study,
        make_storage,
        open_study,
        stored_fingerprint,
    )

    if args.workers > 1:
        make_storage(url)  # fail fast, and create the tables once rather than racing on them
        return _spawn(args, url)
    storage = make_storage(url, args.heartbeat, args.grace, retry_callback(args.max_retry))
    name = args.study or cfg.name
    stored = stored_fingerprint(storage, name, url)  # dtype auto: join in the study's precision
    cfg.adopt_dtype(stored, f"joined study {name!r}: its runs use this precision")
    check_existing_study(storage, name, cfg.fingerprint(), url)  # model: later
    from blackbox.study.pipeline import prepare
    from blackbox.study.rundir import seed_everything

    device = args.device or (args.device_list[0] if args.device_list else None)
    run_cfg = cfg  # the device changes where the model runs, not the study's fingerprint
    if device:
        from blackbox.config import load_config

        run_cfg = load_config(args.config, [*args.overrides, f"model.device={device}"])
        if cfg.model._adopted:
            run_cfg.model.adopt(cfg.model.dtype, cfg.model._adopted)
    prepared = prepare(run_cfg, progress=False)
    if cfg.model.dtype == "auto":  # resolved at load: the study's fingerprint names it
        cfg.model.dtype = prepared.config.model.dtype  # type: ignore[assignment]
    study = open_study(storage, name, prepared.space.box, cfg.fingerprint(), label=url)
    seed_everything(cfg.seed)
    if args.remote:
        return _run_remote(args, study, prepared, name, url, device)
    study.sampler = _sampler(cfg, bool(prepared.space.box.integer.any()))
    worker = Worker(
        study,
        prepared.space,
        prepared.objective,
        budget=cfg.budget.evaluations,
        batch=args.batch,
        heartbeat=args.heartbeat,
        grace=args.grace,
        max_retry=args.max_retry,
    )
    worker.log(f"joined study {name!r} in {mask_url(url)!r}")
    restore = install_sigint(worker)
    try:
        s = worker.run()
    finally:
        restore()
    from optuna.trial import TrialState

    complete = search_counts(study)[TrialState.COMPLETE]
    best = "-" if s.best is None else f"{s.best:.4f}"
    worker.log(
        f"{s.told} told, {s.failed} failed (non-finite), {s.dropped} dropped, "
        f"{s.abandoned} abandoned, {s.stale_failed} stale trial(s) failed; study {name!r} "
        f"has {complete}/{cfg.budget.evaluations} complete search trials; best here {best}"
    )
    if s.interrupted:
        worker.log("interrupted; everything finished is stored. Run the same command to resume.")
        return 130
    return 0


def _batch_words(batch: int | None) -> str:
    fair = "an even share of each generation over the live workers"
    return fair if batch is None else f"{fair}, at most {batch} trials,"


def _run_remote(
    args: argparse.Namespace, study: Any, prepared: Any, name: str, url: str, device: str | None
) -> int:
    """Score a coordinator's generations until it is done (or a stop)."""
    import optuna

    from blackbox.distributed.remote import STATE_ATTR
    from blackbox.distributed.remote_worker import RemoteWorker
    from blackbox.distributed.worker import install_sigint
    from blackbox.masking import mask_url

    study.sampler = optuna.samplers.RandomSampler(seed=0)  # never asked: every param is fixed
    worker = RemoteWorker(
        study,
        prepared.space,
        prepared.objective,
        batch=args.batch,
        heartbeat=args.heartbeat,
        grace=args.grace,
        max_retry=args.max_retry,
    )
    where = f" on {device}" if device else ""
    worker.log(
        f"joined study {name!r} in {mask_url(url)!r}{where}: scoring a coordinator's "
        f"generations, {_batch_words(args.batch)} per forward pass"
    )
    restore = install_sigint(worker)
    try:
        s = worker.run()
    finally:
        restore()
    best = "-" if s.best is None else f"{s.best:.4f}"
    state = study.user_attrs.get(STATE_ATTR, "not started")
    worker.log(
        f"{s.told} told, {s.failed} failed (non-finite), {s.dropped} dropped, "
        f"{s.abandoned} abandoned, {s.stale_failed} stale trial(s) failed; coordinator: "
        f"{state}; best here {best}"
    )
    if s.interrupted:
        worker.log("interrupted; everything finished is stored. Run the same command to resume.")
        return 130
    return 0


def _spawn(args: argparse.Namespace, url: str) -> int:
    """Start ``args.workers`` worker processes and wait; SIGINT is forwarded to each once."""
    argv = [sys.executable, "-m", "blackbox.cli", "worker", args.config]
    for item in args.overrides:
        argv += ["--set", item]
    if args.study:
        argv += ["--study", args.study]
    if args.remote:
        argv += ["--remote"]
    if args.batch is not None:
        argv += [f"--batch={args.batch}"]
    argv += [
        f"--heartbeat={args.heartbeat}",
        f"--grace={args.grace}",
        f"--max-retry={args.max_retry}",
    ]
    env = dict(os.environ, **{STORAGE_ENV: url})
    # Own sessions: a terminal's Ctrl-C reaches only this process, which forwards it once.
    devices = args.device_list or [None]
    procs = [
        subprocess.Popen(
            argv + ([f"--device={devices[i % len(devices)]}"] if devices[0] else []),
            env=env,
            start_new_session=True,
        )
        for i in range(args.workers)
    ]
    interrupted = False

    def forward(_signum: int, _frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)

    old = signal.signal(signal.SIGINT, forward)
    try:
        codes = [p.wait() for p in procs]
    finally:
        signal.signal(signal.SIGINT, old)
    if interrupted or 130 in codes:
        return 130
    bad = [c for c in codes if c]
    for i, (proc, code) in enumerate(zip(procs, codes, strict=True)):
        if code:
            print(f"blackbox: worker {i} (PID {proc.pid}) {_exit_reason(code)}", file=sys.stderr)
    return 0 if not bad else 2 if 2 in bad else 1


def _exit_reason(code: int) -> str:
    """How a worker process ended, in words (a negative code is the signal that killed it)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}; its claimed trials go back to the queue after --grace"
    if code == 2:
        return "stopped on bad input (exit 2; its message is above)"
    return f"failed with exit code {code} (its message is above)"
