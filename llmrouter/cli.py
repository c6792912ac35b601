"""The ``llmrouter`` command: serve the API, manage keys and credits, report usage, sweep
abandoned calls and video tasks, re-encrypt stored provider secrets, migrate the database."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

from . import __version__, usage
from .billing import nanos_to_usd
from .config import Settings, load_settings, source_label
from .errors import ConfigError, LLMRouterError
from .keys import key_view
from .router import Router
from .secrets import rotate_secrets
from .store import KeyRecord, Store, VideoTaskRecord


@dataclass
class Embedded:
    """A host app's router, for ``flask llmrouter``: the commands run on it instead of one
    built from ``--config``. ``router`` is None when it could not start (``problem``: its
    database is not at this version's schema), and ``schema_store`` opens that database for
    the ``db`` commands, which are how it gets there."""

    router: Router | None
    problem: LLMRouterError | None
    schema_store: Callable[[], Store]


def main(
    argv: Sequence[str] | None = None,
    *,
    embedded: Embedded | None = None,
    prog: str = "llmrouter",
) -> int:
    """The command line (``embedded``: on a host app's router, see ``Embedded``)."""
    args = _parser(prog).parse_args(argv)
    args.embedded = embedded
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"llmrouter: config error: {exc.message}", file=sys.stderr)
        return 2
    except LLMRouterError as exc:
        print(f"llmrouter: {exc.message}", file=sys.stderr)
        return 1


def _parser(prog: str = "llmrouter") -> argparse.ArgumentParser:
    config_help = (
        "TOML config file (default: $LLMROUTER_CONFIG, else the embedded default: "
        "SQLite file llmrouter.db here + the offline echo provider)"
    )
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--config", default=os.environ.get("LLMROUTER_CONFIG"), help=config_help)
    # --config is accepted after the subcommand too; SUPPRESS keeps an absent one from
    # overwriting the value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    parser.add_argument("--version", action="version", version=f"llmrouter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="serve the OpenAI-compatible API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys", required=True
    )
    create = keys.add_parser(
        "create", parents=[common], help="create a key (its secret is shown once)"
    )
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="may see every key's usage")
    create.add_argument("--credits", default="0", metavar="USD", help="initial prepaid balance")
    create.add_argument("--daily-requests", type=int, help="override the fair-use allowance")
    create.add_argument("--throttle-seconds", type=int, help="override the throttle window")
    create.add_argument("--requests-per-minute", type=int, help="add a per-minute limit")
    _restriction_arguments(create)
    create.add_argument("--json", action="store_true", help="print a JSON object")
    create.set_defaults(run=_keys_create)
    show = keys.add_parser("show", parents=[common], help="one key (never its secret)")
    show.add_argument("key_id")
    show.set_defaults(run=_keys_show)
    change = keys.add_parser(
        "update", parents=[common], help="change a key's name, limits or restrictions"
    )
    change.add_argument("key_id")
    change.add_argument("--name")
    for limit in ("--daily-requests", "--throttle-seconds", "--requests-per-minute"):
        change.add_argument(limit, type=_limit, metavar="N|default")
    _restriction_arguments(change)
    change.add_argument(
        "--any-model",
        action="store_true",
        help="lift both restrictions (allowed models and providers)",
    )
    change.set_defaults(run=_keys_update)
    rotate = keys.add_parser(
        "rotate", parents=[common], help="a new secret for a key (shown once; the old one stops)"
    )
    rotate.add_argument("key_id")
    rotate.add_argument("--json", action="store_true", help="print a JSON object")
    rotate.set_defaults(run=_keys_rotate)
    listing = keys.add_parser("list", parents=[common], help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)
    topup = keys.add_parser("topup", parents=[common], help="add USD to a key's prepaid balance")
    topup.add_argument("key_id")
    topup.add_argument("amount", metavar="USD")
    topup.set_defaults(run=_keys_topup)

    sweep = commands.add_parser(
        "sweep",
        parents=[common],
        help="close calls left pending past their deadline (a crashed process) as abandoned",
    )
    sweep.add_argument(
        "--older-than",
        type=float,
        metavar="SECONDS",
        help="instead of each call's deadline, every pending call admitted this long ago "
        "(0 after a crash, with no process serving)",
    )
    sweep.add_argument("--json", action="store_true")
    sweep.set_defaults(run=_sweep)

    tasks = commands.add_parser("tasks", help="async video tasks").add_subparsers(
        dest="tasks", required=True
    )
    tasks_sweep = tasks.add_parser(
        "sweep",
        parents=[common],
        help="poll the video tasks nobody polls, end those past their expiry, and settle "
        "tasks ended without their settlement (a crashed process)",
    )
    tasks_sweep.add_argument("--json", action="store_true")
    tasks_sweep.set_defaults(run=_tasks_sweep)

    report = commands.add_parser(
        "usage", parents=[common], help="usage and spend per key, model, provider and day"
    )
    report.add_argument("--key", help="only this key id")
    report.add_argument("--since", help="first day, YYYY-MM-DD (UTC)")
    report.add_argument("--until", help="last day, YYYY-MM-DD (UTC)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=_usage)
    _db_parser(commands, common)
    _secrets_parser(commands, common)
    return parser


def _router(args: argparse.Namespace) -> Router:
    embedded: Embedded | None = args.embedded
    if embedded is None:
        return Router.from_config(args.config)
    if embedded.router is None:
        assert embedded.problem is not None
        raise embedded.problem
    return embedded.router


def _serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import run_simple

    from flask_ext import create_app

    from .sweeper import Sweeper

    app = create_app(args.config)
    router = app.extensions["llmrouter"].router
    every = router.settings.sweep_every_seconds
    sweeper = Sweeper(router, every).start() if every else None
    database = make_url(router.settings.database_url).render_as_string(hide_password=True)
    print(
        f"llmrouter {__version__} serving on http://{args.host}:{args.port}/v1 "
        f"(database {database}, config {args.config or 'the embedded default'})",
        file=sys.stderr,
    )
    try:
        run_simple(args.host, args.port, app, threaded=True)
    finally:
        if sweeper:
            sweeper.stop()
        router.close()
    return 0


def _sweep(args: argparse.Namespace) -> int:
    if args.older_than is not None and not 0 <= args.older_than < math.inf:
        print("llmrouter: --older-than must be 0 or more seconds", file=sys.stderr)
        return 2
    swept = _router(args).sweep(older_than=args.older_than)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "request_id": c.request_id,
                        "key_id": c.key_id,
                        "admission": c.admission,
                        "started_at": c.started_at,
                        "released": nanos_to_usd(c.released_nanos),
                    }
                    for c in swept
                ]
            )
        )
        return 0
    for c in swept:
        print(
            f"abandoned {c.request_id}  key {c.key_id}  ({c.admission}) "
            f"released ${nanos_to_usd(c.released_nanos)}"
        )
    print(f"{len(swept)} abandoned calls swept")
    return 0


def _tasks_sweep(args: argparse.Namespace) -> int:
    swept = _router(args).video.sweep()
    if args.json:
        print(
            json.dumps(
                {
                    "checked": swept.checked,
                    "ended": [_swept_task(t) for t in swept.ended],
                    "settled": [_swept_task(t) for t in swept.settled],
                }
            )
        )
        return 0
    for task in swept.ended:
        print(f"ended {task.id}  key {task.key_id}  {task.status}{_charge(task)}")
    for task in swept.settled:
        print(f"settled {task.id}  key {task.key_id}  {task.status}{_charge(task)}")
    print(
        f"{swept.checked} unfinished video tasks checked, {len(swept.ended)} ended, "
        f"{len(swept.settled)} settled after their process died"
    )
    return 0


def _swept_task(task: VideoTaskRecord) -> dict[str, Any]:
    return {
        "id": task.id,
        "key_id": task.key_id,
        "status": task.status,
        "reserved": nanos_to_usd(task.reserved_nanos),
        "charged": nanos_to_usd(task.charged_nanos or 0),
    }


def _charge(task: VideoTaskRecord) -> str:
    charged = task.charged_nanos or 0
    return (
        f"  charged ${nanos_to_usd(charged)} of ${nanos_to_usd(task.reserved_nanos)} reserved"
        if charged
        else f"  released ${nanos_to_usd(task.reserved_nanos)}"
    )


_DEFAULT = "default"


def _limit(value: str) -> int | str:
    """A limit's value for ``keys update``: a number, or ``default`` (the ``[quota]`` one)."""
    if value == _DEFAULT:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number or 'default'") from None


def _restriction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allowed-model",
        action="append",
        dest="allowed_models",
        metavar="PROVIDER#MODEL",
        help="restrict the key to this model (repeat for more)",
    )
    parser.add_argument(
        "--allowed-provider",
        action="append",
        dest="allowed_providers",
        metavar="PROVIDER",
        help="restrict the key to this provider's models (repeat for more)",
    )


def _keys_create(args: argparse.Namespace) -> int:
    record, secret = _router(args).create_key(
        args.name,
        admin=args.admin,
        credits=args.credits,
        daily_requests=args.daily_requests,
        throttle_seconds=args.throttle_seconds,
        requests_per_minute=args.requests_per_minute,
        allowed_models=args.allowed_models,
        allowed_providers=args.allowed_providers,
    )
    return _show_secret(args, record, secret, f"created key {record.id} ({record.name})")


def _keys_show(args: argparse.Namespace) -> int:
    print(json.dumps(key_view(_router(args).get_key(args.key_id)), indent=2))
    return 0


def _keys_update(args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = args.name
    for limit in ("daily_requests", "throttle_seconds", "requests_per_minute"):
        value = getattr(args, limit)
        if value is not None:
            changes[limit] = None if value == _DEFAULT else value
    if args.any_model:
        changes["allowed_models"] = changes["allowed_providers"] = None
    for restriction in ("allowed_models", "allowed_providers"):
        if getattr(args, restriction) is not None:
            changes[restriction] = getattr(args, restriction)
    record = _router(args).update_key(args.key_id, **changes)
    print(json.dumps(key_view(record), indent=2))
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    record, secret = _router(args).rotate_key(args.key_id)
    return _show_secret(
        args,
        record,
        secret,
        f"rotated key {record.id} ({record.name}): the old secret is refused from now on",
    )


def _show_secret(args: argparse.Namespace, record: KeyRecord, secret: str, headline: str) -> int:
    """The one output that carries a secret: shown once, never stored."""
    if args.json:
        print(json.dumps({**key_view(record), "secret": secret}))
    else:
        print(headline)
        print(f"secret: {secret}")
        print("This secret is shown once and cannot be recovered: store it now.")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    records = _router(args).list_keys()
    if args.json:
        print(json.dumps([key_view(r) for r in records]))
        return 0
    for r in records:
        state = "revoked" if r.revoked_at else ("admin" if r.is_admin else "active")
        balance = "$" + nanos_to_usd(r.balance_nanos)
        print(f"{r.id}  {r.hint:<16}  {state:<7}  balance {balance:<13}  {r.name}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    record = _router(args).revoke_key(args.key_id)
    print(f"revoked key {record.id} ({record.name})")
    return 0


def _keys_topup(args: argparse.Namespace) -> int:
    record = _router(args).top_up(args.key_id, args.amount)
    print(f"key {record.id}: balance ${nanos_to_usd(record.balance_nanos)}")
    return 0


def _usage(args: argparse.Namespace) -> int:
    rows = _router(args).usage(
        key_id=args.key,
        since_day=usage.day_of(args.since, field="--since") if args.since else None,
        until_day=usage.day_of(args.until, field="--until") if args.until else None,
    )
    print(json.dumps(usage.report(rows)) if args.json else usage.table(rows))
    return 0


def _db_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    db = commands.add_parser("db", help="the database's schema (Alembic migrations)")
    actions = db.add_subparsers(dest="db", required=True)
    upgrade = actions.add_parser(
        "upgrade", parents=[common], help="create or upgrade the tables to this version's"
    )
    upgrade.set_defaults(run=_db_upgrade)
    current = actions.add_parser(
        "current", parents=[common], help="the database's schema revision and the one needed"
    )
    current.set_defaults(run=_db_current)


def _db_store(args: argparse.Namespace) -> Store:
    """The store of the config (or of the given router), without the start-up schema check
    that would refuse the very database these commands are for."""
    embedded: Embedded | None = args.embedded
    if embedded is not None:
        return embedded.router.store if embedded.router else embedded.schema_store()
    return _own_store(args.config, load_settings(args.config), check_schema=False)


def _own_store(config: str | None, settings: Settings, *, check_schema: bool) -> Store:
    """The store of ``settings`` (read from ``config``), for commands that need no Router."""
    try:
        return Store(
            settings.database_url,
            timeout=settings.database_timeout_seconds,
            table_prefix=settings.table_prefix,
            check_schema=check_schema,
        )
    except ConfigError as exc:
        raise exc.at(source_label(config)) from None


def _db_upgrade(args: argparse.Namespace) -> int:
    store = _db_store(args)
    try:
        before, _ = store.database_revision()
        head = store.upgrade_database()
    finally:
        if args.embedded is None or args.embedded.router is None:
            store.close()
    if before == head:
        print(f"the database is at revision {head} already")
    else:
        print(f"upgraded the database from revision {before or '(empty)'} to {head}")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    store = _db_store(args)
    try:
        revision, head = store.database_revision()
    finally:
        if args.embedded is None or args.embedded.router is None:
            store.close()
    state = "at head" if revision == head else f"behind: run `llmrouter db upgrade` for {head}"
    print(f"{revision or '(empty)'} ({state})")
    return 0 if revision == head else 1


def _secrets_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    secrets = commands.add_parser("secrets", help="the stored provider API keys")
    actions = secrets.add_subparsers(dest="secrets", required=True)
    rotate = actions.add_parser(
        "rotate",
        parents=[common],
        help="re-encrypt every stored provider API key under the config's (new) secret_key",
    )
    rotate.add_argument(
        "--old-secret-env",
        required=True,
        metavar="VAR",
        help="the environment variable holding the old secret_key",
    )
    rotate.set_defaults(run=_secrets_rotate)


def _secrets_rotate(args: argparse.Namespace) -> int:
    """``rotate_secrets`` on the config's store (its docstring has the fleet procedure)."""
    old_secret_key = os.environ.get(args.old_secret_env)
    if not old_secret_key:
        raise ConfigError(
            f"environment variable {args.old_secret_env} is not set (it holds the old secret_key)",
            key="--old-secret-env",
        )
    router = _router(args) if args.embedded else None
    settings = router.settings if router else load_settings(args.config)
    if settings.secret_key is None:
        raise ConfigError(
            "no secret_key is configured: set the new one (secret_key or secret_key_env), "
            "the one to re-encrypt under",
            source=None if router else source_label(args.config),
            key="secret_key",
        )
    # the store alone, not a Router: its directory would try the new key on the secrets
    store = router.store if router else _own_store(args.config, settings, check_schema=True)
    try:
        count = rotate_secrets(store, settings.secret_key.get_secret_value(), old_secret_key)
    finally:
        if router is None:
            store.close()
    print(
        f"re-encrypted {count} stored provider API key{'' if count == 1 else 's'} under "
        "the new secret_key; restart every process with it"
    )
    return 0
