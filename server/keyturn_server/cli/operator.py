"""Operator commands against a running server, through the Python client:
`keyturn keys|handles|config|audit|health|watch ...`.

The server is --address or KEYTURN_ADDRESS (default 127.0.0.1:50051); the token is
--token, --token-file, KEYTURN_TOKEN, or ./data/admin.token when it exists. Lists
print tables; --json prints protobuf JSON instead. Exit codes: 0 done, 1 the
call failed, 2 bad usage, 3 the answer was "no" (a refused validation, a server that is
not serving, a broken audit log).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from keyturn import TLS, AsyncClient, KeyturnError
from keyturn import _console as out
from keyturn._calls import enum_value, short_name
from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.settings import SettingsError, parse_duration

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TOKEN_FILE = Path("data/admin.token")
REFUSED = 3

Action = Callable[[AsyncClient, argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """Arguments that cannot make a request (exit code 2)."""


# --- wiring ---------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server")
    server.add_argument("--address", help="HOST:PORT (KEYTURN_ADDRESS; default 127.0.0.1:50051)")
    server.add_argument("--token", help="bearer token (KEYTURN_TOKEN)")
    server.add_argument("--token-file", type=Path, help="file holding the token")
    server.add_argument("--tls", action="store_true", help="TLS with the system's roots")
    server.add_argument("--ca", type=Path, help="CA certificate of the server (implies TLS)")
    server.add_argument("--cert", type=Path, help="client certificate, for mutual TLS")
    server.add_argument("--key", type=Path, help="client private key, for mutual TLS")
    server.add_argument(
        "--server-name",
        help="name the server's certificate must carry, when the address is not it (implies TLS)",
    )
    common.add_argument("--json", action="store_true", help="print protobuf JSON")
    return common


def register(commands: Any) -> None:
    common = _common()

    def command(group: Any, name: str, action: Action, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, help=text, parents=[common])
        parser.set_defaults(run=_runner(action))
        return parser

    keys = _group(commands, "keys", "manage keys on a running server")
    _filters(command(keys, "list", keys_list, "list keys"), resources_pb2.KeyStatus, "KEY_STATUS")
    command(keys, "get", keys_get, "show one key").add_argument("key_id")
    c = command(keys, "generate", keys_generate, "generate a key")
    c.add_argument("type", help="encryption, signing, session, api or a custom type")
    c.add_argument("--metadata", action="append", default=[], metavar="K=V")
    c.add_argument("--user-id", default="", help="on behalf of (recorded)")
    c.add_argument("--reveal", action="store_true", help="print the material (exportable types)")
    c = command(keys, "rotate", keys_rotate, "rotate keys, by id or every key of a type")
    c.add_argument("key_ids", nargs="*", metavar="KEY_ID")
    c.add_argument("--all-of-type", metavar="TYPE", help="every key of this type not removed")
    c.add_argument("--concurrency", type=int, default=4, help="rotations in flight (default 4)")
    _change(c)
    _change(command(keys, "remove", keys_remove, "schedule destruction")).add_argument("key_id")
    _change(command(keys, "restore", keys_restore, "cancel destruction")).add_argument("key_id")

    handles = _group(commands, "handles", "manage workflow handles on a running server")
    c = command(handles, "list", handles_list, "list handles")
    _filters(c, resources_pb2.HandleStatus, "HANDLE_STATUS")
    command(handles, "get", handles_get, "show one handle").add_argument("handle_id")
    c = _context(command(handles, "generate", handles_generate, "issue a handle and its secret"))
    c.add_argument("type", help="session, workflow, api, device or a custom type")
    c = _context(command(handles, "validate", handles_validate, "check a token (3: refused)"))
    c.add_argument("secret", metavar="TOKEN", help="the secret, or - to read it from stdin")
    c = _change(command(handles, "rotate", handles_rotate, "issue a new secret for a handle"))
    c.add_argument("handle_id", nargs="?", default="")
    c.add_argument("--by-token", metavar="TOKEN", help="name it by its secret (- : stdin)")
    _change(command(handles, "remove", handles_remove, "revoke at once")).add_argument("handle_id")

    config = _group(commands, "config", "read or change the server's configuration")
    command(config, "get", config_get, "show the configuration and its etag")
    c = _change(command(config, "set", config_set, "change a type or policy, or apply a file"))
    c.add_argument("file", nargs="?", type=Path, help="a Config in protobuf JSON")
    c.add_argument("--etag", help="etag of the configuration the change is based on")
    c.add_argument("--mask", action="append", default=[], help="update_mask path (with FILE)")
    c.add_argument("--key-type", metavar="NAME", help="set (or --delete) one key type")
    c.add_argument("--handle-type", metavar="NAME", help="set (or --delete) one handle type")
    c.add_argument("--delete", action="store_true", help="delete the custom type named")
    c.add_argument("--policy", action="append", default=[], metavar="NAME=VALUE")
    for flag in ("--algorithm", "--rotation-interval", "--warning-threshold", "--max-lifetime"):
        c.add_argument(flag, help="e.g. 30d, 15m" if "-i" in flag or "-t" in flag else None)
    c.add_argument("--grace-period", help="handle types")
    for flag in ("--key-length", "--handle-length", "--max-usage"):
        c.add_argument(flag, type=int)
    c.add_argument("--exportable", action=argparse.BooleanOptionalAction, help="key types")

    audit = _group(commands, "audit", "read and verify the audit log")
    c = command(audit, "list", audit_list, "list audit events, oldest first")
    for flag in ("--action", "--principal", "--resource-id"):
        c.add_argument(flag, default="")
    c.add_argument("--since", type=parse_duration, help="only the last ..., e.g. 24h")
    c.add_argument("--descending", action="store_true", help="newest first")
    c.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    command(audit, "verify", audit_verify, "check the hash chain (3: broken)")

    c = command(commands, "health", health, "server health (3: not serving)")
    c.add_argument("--component", default="", help="keys, handles, store or scheduler")

    watch = _group(commands, "watch", "print expiry, rotation and anomaly events as they come")
    for subject in ("keys", "handles"):
        c = command(watch, subject, watch_events, f"watch {subject}, resuming after reconnects")
        c.set_defaults(subject=subject)
        c.add_argument("--type", action="append", default=[], dest="types", metavar="TYPE")
        c.add_argument("--id", action="append", default=[], dest="ids", metavar="ID")
        c.add_argument(
            "--kind", action="append", default=[], dest="kinds", metavar="KIND", help="e.g. rotated"
        )
        c.add_argument("--owner", default="")
        c.add_argument("--resume-after", type=int, help="replay the events after this sequence")
        c.add_argument("--heartbeats", action="store_true", help="print heartbeats too")
        c.add_argument("--count", type=int, help="stop after this many events")
        c.add_argument("--duration", type=float, help="stop after this many seconds")
        if subject == "handles":
            c.add_argument("--deliver-tokens", action="store_true", help="new secrets (owner)")


def _group(commands: Any, name: str, text: str) -> Any:
    parser = commands.add_parser(name, help=text, description=__doc__.split("\n\n")[1])
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def _filters(parser: argparse.ArgumentParser, statuses: Any, prefix: str) -> None:
    parser.add_argument("--type", default="")
    names = [short_name(statuses, prefix, v).lower() for v in statuses.values() if v]
    parser.add_argument("--status", choices=names)
    parser.add_argument("--owner", default="")
    parser.add_argument("--limit", type=int, help="at most this many")
    parser.add_argument("--page-size", type=int, default=0)


def _change(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--reason", default="", help="recorded in the audit log")
    parser.add_argument("--user-id", default="", help="on behalf of (recorded)")
    return parser


def _context(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--context", action="append", default=[], metavar="K=V")
    parser.add_argument("--ip", help="context ip")
    parser.add_argument("--user-agent", help="context user_agent")
    parser.add_argument("--user-id", default="", help="on behalf of (recorded)")
    return parser


def connect(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> AsyncClient:
    """The client the flags, else the environment, else the defaults describe."""
    env = os.environ if env is None else env
    address = args.address or env.get("KEYTURN_ADDRESS") or DEFAULT_ADDRESS
    token = args.token
    if token is None and args.token_file is not None:
        token = args.token_file.read_text().strip()
    if token is None:
        token = env.get("KEYTURN_TOKEN")
    if token is None and DEFAULT_TOKEN_FILE.is_file():
        token = DEFAULT_TOKEN_FILE.read_text().strip()
    tls: TLS | bool | None = args.tls or None
    if args.ca or args.cert or args.key or args.server_name:
        tls = TLS.from_files(args.ca, args.cert, args.key, args.server_name)
    return AsyncClient(address, token or None, tls)


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            async with connect(args) as client:
                return await action(client, args)

        try:
            return asyncio.run(main())
        except KeyturnError as exc:
            print(f"keyturn: {exc}", file=sys.stderr)
            for violation in getattr(exc, "field_violations", ()):
                print(f"  {violation.field}: {violation.description}", file=sys.stderr)
            return 1
        except (UsageError, SettingsError, ValueError, OSError) as exc:
            print(f"keyturn: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130

    return run


def pairs(
    entries: Sequence[str], ip: str | None = None, agent: str | None = None
) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise UsageError(f"{entry!r} is not KEY=VALUE")
        found[name] = value
    found.update({k: v for k, v in (("ip", ip), ("user_agent", agent)) if v})
    return found


def secret(value: str) -> str:
    """A token argument; "-" reads it from standard input, which keeps it out of `ps`."""
    return sys.stdin.readline().strip() if value == "-" else value


# --- keys -----------------------------------------------------------------------------------


def show_keys(keys: Sequence[resources_pb2.Key], args: argparse.Namespace) -> None:
    if args.json:
        out.emit_json(keys_pb2.ListKeysResponse(keys=keys, total_size=len(keys)))
    else:
        out.table(out.KEY_COLUMNS, [out.key_row(k) for k in keys])


def show_key(key: resources_pb2.Key, args: argparse.Namespace) -> int:
    out.emit_json(key) if args.json else out.key_details(key)
    return 0


async def keys_list(client: AsyncClient, args: argparse.Namespace) -> int:
    found = client.iter_keys(
        type=args.type,
        status=args.status,
        owner=args.owner,
        page_size=args.page_size,
        limit=args.limit,
    )
    show_keys([k async for k in found], args)
    return 0


async def keys_get(client: AsyncClient, args: argparse.Namespace) -> int:
    return show_key(await client.get_key(args.key_id), args)


async def keys_generate(client: AsyncClient, args: argparse.Namespace) -> int:
    created = await client.generate_key(
        args.type, metadata=pairs(args.metadata), user_id=args.user_id, reveal=args.reveal
    )
    if args.json:
        out.emit_json(created)
        return 0
    out.key_details(created.key)
    if created.material:
        print(f"material (base64, shown once): {base64.b64encode(created.material).decode()}")
    return 0


async def keys_rotate(client: AsyncClient, args: argparse.Namespace) -> int:
    ids = list(args.key_ids)
    if args.all_of_type:
        gone = (resources_pb2.KEY_STATUS_REMOVED, resources_pb2.KEY_STATUS_DESTROYED)
        found = client.iter_keys(type=args.all_of_type, page_size=1000)
        ids += [k.id async for k in found if k.status not in gone]
    elif not ids:
        raise UsageError("name the keys to rotate, or --all-of-type TYPE")
    progress = out.Progress("rotating", len(ids))
    gate = asyncio.Semaphore(max(1, args.concurrency))
    rotated: dict[str, resources_pb2.Key] = {}

    async def rotate(key_id: str) -> None:
        async with gate:
            try:
                rotated[key_id] = await client.rotate_key(
                    key_id, reason=args.reason, user_id=args.user_id
                )
            except KeyturnError as exc:
                print(f"{key_id}: {exc}", file=sys.stderr)
                progress.tick(ok=False)
            else:
                progress.tick()

    await asyncio.gather(*(rotate(i) for i in ids))
    show_keys([rotated[i] for i in ids if i in rotated], args)
    return 1 if progress.failed else 0


async def keys_remove(client: AsyncClient, args: argparse.Namespace) -> int:
    return show_key(
        await client.remove_key(args.key_id, reason=args.reason, user_id=args.user_id), args
    )


async def keys_restore(client: AsyncClient, args: argparse.Namespace) -> int:
    return show_key(
        await client.restore_key(args.key_id, reason=args.reason, user_id=args.user_id), args
    )


# --- handles --------------------------------------------------------------------------------


def show_handle(handle: resources_pb2.Handle, args: argparse.Namespace) -> int:
    out.emit_json(handle) if args.json else out.handle_details(handle)
    return 0


async def handles_list(client: AsyncClient, args: argparse.Namespace) -> int:
    found = client.iter_handles(
        type=args.type,
        status=args.status,
        owner=args.owner,
        page_size=args.page_size,
        limit=args.limit,
    )
    handles = [h async for h in found]
    if args.json:
        out.emit_json(handles_pb2.ListHandlesResponse(handles=handles, total_size=len(handles)))
    else:
        out.table(out.HANDLE_COLUMNS, [out.handle_row(h) for h in handles])
    return 0


async def handles_get(client: AsyncClient, args: argparse.Namespace) -> int:
    return show_handle(await client.get_handle(args.handle_id), args)


async def handles_generate(client: AsyncClient, args: argparse.Namespace) -> int:
    context = pairs(args.context, args.ip, args.user_agent)
    issued = await client.generate_handle(args.type, context=context, user_id=args.user_id)
    if args.json:
        out.emit_json(issued)
    else:
        out.handle_details(issued.handle)
        print(f"token (shown once): {issued.token}")
    return 0


async def handles_validate(client: AsyncClient, args: argparse.Namespace) -> int:
    context = pairs(args.context, args.ip, args.user_agent)
    answer = await client.validate_handle(
        secret(args.secret), context=context, user_id=args.user_id
    )
    v = answer.validation
    if args.json:
        out.emit_json(answer)
    elif v.valid:
        switch = "; a previous secret: switch to the new one" if v.rotated else ""
        print(f"valid: {v.handle_id} ({v.type}), {v.remaining_uses} uses left{switch}")
    else:
        reason = short_name(handles_pb2.ValidationReason, "VALIDATION_REASON", v.reason)
        print(f"refused: {reason.lower()}")
    for anomaly in () if args.json else v.anomalies:
        kind = short_name(resources_pb2.AnomalyKind, "ANOMALY_KIND", anomaly.kind)
        print(f"anomaly: {kind.lower()}", file=sys.stderr)
    return 0 if v.valid else REFUSED


async def handles_rotate(client: AsyncClient, args: argparse.Namespace) -> int:
    if bool(args.handle_id) == bool(args.by_token):
        raise UsageError("give a HANDLE_ID or --by-token TOKEN")
    rotation = await client.rotate_handle(
        args.handle_id,
        token=secret(args.by_token) if args.by_token else "",
        reason=args.reason,
        user_id=args.user_id,
    )
    if args.json:
        out.emit_json(rotation)
    else:
        out.handle_details(rotation.handle)
        print(f"previous secret valid until {out.when(rotation.previous_valid_until)}")
        print(f"token (shown once): {rotation.token}")
    return 0


async def handles_remove(client: AsyncClient, args: argparse.Namespace) -> int:
    handle = await client.remove_handle(args.handle_id, reason=args.reason, user_id=args.user_id)
    return show_handle(handle, args)


# --- config ---------------------------------------------------------------------------------


async def config_get(client: AsyncClient, args: argparse.Namespace) -> int:
    config = await client.get_config()
    out.emit_json(config) if args.json else out.config_details(config)
    return 0


def _policy(draft: admin_pb2.Config, entry: str) -> str:
    """Sets one policy from NAME=VALUE; returns its update_mask path."""
    name, sep, raw = entry.partition("=")
    policies = draft.security_policies
    field = policies.DESCRIPTOR.fields_by_name.get(name)
    if not sep or field is None:
        known = ", ".join(policies.DESCRIPTOR.fields_by_name)
        raise UsageError(f"--policy takes NAME=VALUE, NAME one of: {known}")
    if name == "revoke_on":
        kinds = [k for k in raw.split(",") if k]
        policies.revoke_on[:] = [
            enum_value(resources_pb2.AnomalyKind, "ANOMALY_KIND", k) for k in kinds
        ]
    elif field.type == field.TYPE_BOOL:
        if raw.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            raise UsageError(f"{name} is true or false, not {raw!r}")
        setattr(policies, name, raw.lower() in ("true", "yes", "on", "1"))
    else:
        setattr(policies, name, int(raw))
    return f"security_policies.{name}"


async def _type_change(
    client: AsyncClient, args: argparse.Namespace, draft: admin_pb2.Config
) -> str:
    """Sets one key or handle type from the flags, over its current settings; returns its
    update_mask path (a path absent from the draft deletes the type)."""
    kind = "key_types" if args.key_type else "handle_types"
    name = args.key_type or args.handle_type
    if args.delete:
        return f"{kind}.{name}"
    current = getattr(await client.get_config(), kind)
    entry = getattr(draft, kind)[name]
    if name in current:  # the flags change only what they name
        entry.CopyFrom(current[name])
    durations = ["rotation_interval", "warning_threshold", "max_lifetime"]
    numbers = ["key_length"] if kind == "key_types" else ["handle_length", "max_usage"]
    if kind == "handle_types":
        durations.append("grace_period")
    elif args.exportable is not None:
        entry.exportable = args.exportable
    if args.algorithm is not None:
        entry.algorithm = args.algorithm
    for flag in numbers:
        if getattr(args, flag) is not None:
            setattr(entry, flag, getattr(args, flag))
    for flag in durations:
        if getattr(args, flag) is not None:
            getattr(entry, flag).FromTimedelta(parse_duration(getattr(args, flag)))
    return f"{kind}.{name}"


async def config_set(client: AsyncClient, args: argparse.Namespace) -> int:
    given = [x for x in (args.file, args.key_type, args.handle_type, args.policy) if x]
    if len(given) != 1:
        raise UsageError("give one of FILE, --key-type, --handle-type or --policy")
    draft = admin_pb2.Config()
    etag, mask = args.etag, list(args.mask)
    if args.file:
        json_format.Parse(args.file.read_text(), draft)
        etag = etag or draft.etag
    elif args.policy:
        mask = [_policy(draft, entry) for entry in args.policy]
    else:
        mask = [await _type_change(client, args, draft)]
    if not etag:
        raise UsageError("--etag is required; 'keyturn config get' shows the current one")
    updated = await client.update_config(
        draft, etag=etag, update_mask=mask, reason=args.reason, user_id=args.user_id
    )
    out.emit_json(updated) if args.json else out.config_details(updated)
    return 0


# --- audit, health --------------------------------------------------------------------------


async def audit_list(client: AsyncClient, args: argparse.Namespace) -> int:
    found = client.iter_audit_events(
        action=args.action,
        principal=args.principal,
        resource_id=args.resource_id,
        start_time=datetime.now(UTC) - args.since if args.since else None,
        descending=args.descending,
        limit=args.limit,
    )
    events = [e async for e in found]
    if args.json:
        out.emit_json(admin_pb2.ListAuditEventsResponse(events=events, total_size=len(events)))
        return 0
    out.table(out.AUDIT_COLUMNS, [out.audit_row(e) for e in events])
    return 0


async def audit_verify(client: AsyncClient, args: argparse.Namespace) -> int:
    result = await client.verify_audit_log()
    if args.json:
        out.emit_json(result)
    elif result.valid:
        print(f"audit log intact: {result.entries_checked} entries, head {result.head_hash.hex()}")
    else:
        print(f"audit log BROKEN at sequence {result.first_broken_sequence}: {result.problem}")
    return 0 if result.valid else REFUSED


async def health(client: AsyncClient, args: argparse.Namespace) -> int:
    report = (await client.get_health(args.component)).health
    out.emit_json(report) if args.json else out.health_details(report)
    return 0 if report.status == admin_pb2.SERVING_STATUS_SERVING else REFUSED


# --- watch ----------------------------------------------------------------------------------


async def watch_events(client: AsyncClient, args: argparse.Namespace) -> int:
    """Prints events until --count or --duration (or Ctrl-C); reconnects are reported on
    stderr and resume where the stream broke."""

    def reconnecting(error: KeyturnError | None, delay: float) -> None:
        why = str(error) if error else "the stream ended"
        resume = f"after sequence {watch.last_sequence}" if watch.last_sequence else "afresh"
        print(f"watch: {why}; resuming {resume} in {delay:g}s", file=sys.stderr, flush=True)

    watch = client.watch_expiring(
        args.subject,
        types=args.types,
        ids=args.ids,
        owner=args.owner,
        kinds=args.kinds,
        resume_after=args.resume_after,
        deliver_tokens=getattr(args, "deliver_tokens", False),
        heartbeats=args.heartbeats,
        on_retry=reconnecting,
    )

    async def show() -> None:
        shown = 0
        async for event in watch:
            out.emit_json(event, compact=True) if args.json else print(out.event_line(event))
            sys.stdout.flush()
            shown += 1
            if args.count is not None and shown >= args.count:
                return

    async with watch:
        with contextlib.suppress(TimeoutError):  # --duration is up
            await asyncio.wait_for(show(), args.duration)
    return 0
