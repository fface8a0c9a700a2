"""The ``mesh`` command: run the mesh, single workers, and talk to it.

mesh up                       embedded infrastructure + every worker (+ bridge)
mesh worker NAME...           workers against configured NATS/Postgres/Redis
mesh services                 live services with endpoints and counts
mesh request SUBJECT JSON --tenant T
mesh upload FILE --tenant T   put a file in the uploads object store (e.g. an ML dataset)
mesh bridge [--processes N]   the HTTP bridge against configured NATS/Redis
mesh token --tenant T --user U [--roles r1,r2]
mesh ingest PATH... --collection NAME --tenant T    files/folders into a RAG collection
mesh jobs | search QUERY | ask QUESTION --collection NAME --tenant T
mesh provision                create/update every stream and bucket (production)
mesh probe NAME [--live]      Kubernetes probe: this pod's NAME instance answers $SRV.PING
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

from bus.settings import Settings
from bus.telemetry import setup_logging, setup_tracing

S = TypeVar("S", bound=Settings)

#: Where ``mesh up`` keeps embedded data and the URLs it chose.
#: Every `mesh` command looks there, so set MESH_DATA_DIR for all of them to move it.
DATA_DIR = Path(os.environ.get("MESH_DATA_DIR") or ".mesh")
ENV_FILE = "env"
#: The development JWT secret `mesh up` generates (mode 0600; removed when it stops).
SECRET_FILE = "jwt_secret"


def _load_env_file(data_dir: Path) -> None:
    """Adopt the URLs a running ``mesh up`` wrote, for any not set in the environment."""
    path = data_dir / ENV_FILE
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name and value and not os.environ.get(name):
            os.environ[name] = value


def _settings(service: str, kind: type[S]) -> S:
    """The process's settings, read once here and passed inward (``kind`` a component's
    class extending :class:`Settings`, e.g. the bridge's)."""
    _load_env_file(DATA_DIR)
    settings = kind(service_name=service)
    setup_logging(settings.log_level, settings.log_format)
    setup_tracing(service, settings.otel_exporter_otlp_endpoint)
    return settings


def cmd_worker(args: argparse.Namespace) -> None:
    from mesh.runner import run_workers

    settings = _settings("+".join(args.names), Settings)
    # uvloop (already the bridge's loop) makes the runtime's per-message task cheaper.
    _run_loop(run_workers(args.names, settings))


def _run_loop(main: Any) -> None:
    try:
        import uvloop
    except ImportError:  # not on Windows
        asyncio.run(main)
    else:
        uvloop.run(main)


def cmd_up(args: argparse.Namespace) -> None:
    from mesh.up import up

    up(Path(args.data_dir), bridge=not args.no_bridge)


def cmd_services(args: argparse.Namespace) -> None:
    from mesh.tools import services

    settings = _settings("mesh-cli", Settings)
    rows = asyncio.run(
        services(_nats_url(settings), user=settings.nats_user, password=settings.nats_password)
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no services answered")
    for svc in rows:
        print(f"{svc['name']} {svc['version']} id={svc['id']}")
        for ep in svc["endpoints"]:
            print(
                f"  {ep['subject']:<36} requests={ep['num_requests']:<6} "
                f"errors={ep['num_errors']:<4} avg={ep['average_processing_time'] / 1e6:.2f}ms"
            )


def cmd_request(args: argparse.Namespace) -> None:
    from mesh.tools import request

    settings = _settings("mesh-cli", Settings)
    try:
        payload = json.loads(args.json)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"JSON argument is not valid JSON: {exc}") from None
    code, answer = asyncio.run(
        request(
            _nats_url(settings),
            args.subject,
            payload,
            tenant=args.tenant,
            user=args.user,
            timeout=args.timeout,
            nats_user=settings.nats_user,
            nats_password=settings.nats_password,
        )
    )
    print(json.dumps(answer, indent=2, default=str))
    if code:
        sys.exit(1)


def cmd_terminal(args: argparse.Namespace) -> None:
    from gateway_bridge.settings import BridgeSettings
    from mesh.terminal import run  # mesh ingest | jobs | search | ask

    # Files go into the object store as the bridge's upload route puts them: same limit.
    settings = _settings("mesh-cli", BridgeSettings)
    sys.exit(run(args, _nats_url(settings), settings))


def cmd_upload(args: argparse.Namespace) -> None:
    from gateway_bridge.settings import BridgeSettings
    from mesh.tools import upload

    settings = _settings("mesh-cli", BridgeSettings)
    ref = asyncio.run(
        upload(
            _nats_url(settings),
            args.file,
            tenant=args.tenant,
            max_bytes=settings.upload_max_bytes,
            nats_user=settings.nats_user,
            nats_password=settings.nats_password,
        )
    )
    print(json.dumps(ref, indent=2))


def cmd_bridge(args: argparse.Namespace) -> None:
    from gateway_bridge.server import run
    from gateway_bridge.settings import BridgeSettings

    settings = _settings("bridge", BridgeSettings)
    if not settings.jwt_secret and not settings.jwt_jwks_url:
        settings = settings.model_copy(update={"jwt_secret": _dev_secret()})
    run(settings, processes=args.processes)


def cmd_token(args: argparse.Namespace) -> None:
    from gateway_bridge.settings import BridgeSettings
    from gateway_bridge.tokens import mint_token

    settings = _settings("mesh-cli", BridgeSettings)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()] if args.roles else []
    print(
        mint_token(
            settings.jwt_secret or _dev_secret(),
            tenant=args.tenant,
            user=args.user,
            roles=roles,
            ttl=args.ttl,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            tenant_claim=settings.jwt_tenant_claim,
        )
    )


def cmd_provision(args: argparse.Namespace) -> None:
    from mesh.tools import provision

    settings = _settings("mesh-provision", Settings)
    replicas = args.replicas or settings.jetstream_replicas
    asyncio.run(
        provision(
            _nats_url(settings),
            user=settings.nats_user,
            password=settings.nats_password,
            replicas=replicas,
        )
    )
    print(f"streams and buckets provisioned at {replicas} replica(s)")


def cmd_probe(args: argparse.Namespace) -> None:
    """Exit 0 when this pod's instance of the service answers ``$SRV.PING`` (ready).

    ``--live`` also passes when NATS itself cannot be reached: restarting the worker
    would not help (it reconnects by itself), so only a worker that NATS can reach but
    that does not answer is "not live".
    """
    from mesh.tools import probe

    settings = Settings(service_name="mesh-probe")  # type: ignore[call-arg]
    setup_logging("error", settings.log_format)  # a probe's output is its one line
    if not settings.health_dir:
        raise SystemExit("HEALTH_DIR is not set: `mesh worker` writes instance ids there")
    path = Path(settings.health_dir) / f"{args.name}.id"
    if not path.exists():
        raise SystemExit(f"{args.name} is not serving yet (no {path})")
    try:
        problem = asyncio.run(
            probe(
                _nats_url(settings),
                args.name,
                path.read_text().strip(),
                user=settings.nats_user,
                password=settings.nats_password,
                timeout=args.timeout,
            )
        )
    except Exception as exc:  # NATS unreachable or refused us
        if args.live:
            print(f"NATS unreachable ({type(exc).__name__}); the worker reconnects by itself")
            return
        raise SystemExit(f"NATS unreachable: {type(exc).__name__}: {exc}") from None
    if problem:
        raise SystemExit(problem)
    print(f"{args.name} ok")


def _dev_secret() -> str:
    path = DATA_DIR / SECRET_FILE
    if not path.exists():
        raise SystemExit(
            "JWT_SECRET is not set and no `mesh up` is running here (it writes "
            f"{path}); set JWT_SECRET to the secret the bridge verifies with"
        )
    return path.read_text().strip()


def _nats_url(settings: Settings) -> str:
    if not settings.nats_url:
        raise SystemExit("NATS_URL is not set and no `mesh up` is running here")
    return settings.nats_url


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    up_p = sub.add_parser("up", help="run the whole mesh on embedded infrastructure")
    up_p.add_argument("--data-dir", default=str(DATA_DIR), help="default: $MESH_DATA_DIR or .mesh")
    up_p.add_argument("--no-bridge", action="store_true", help="workers only")
    up_p.set_defaults(func=cmd_up)

    w = sub.add_parser("worker", help="run workers against configured infrastructure")
    w.add_argument("names", nargs="+")
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("services", help="list live services ($SRV.INFO/$SRV.STATS)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_services)

    r = sub.add_parser("request", help="send one request and print the answer")
    r.add_argument("subject")
    r.add_argument("json", help="the request payload as JSON")
    r.add_argument("--tenant", required=True)
    r.add_argument("--user", default="cli")
    r.add_argument("--timeout", type=float, default=30.0)
    r.set_defaults(func=cmd_request)

    u = sub.add_parser("upload", help="put a file in the uploads object store, print its name")
    u.add_argument("file")
    u.add_argument("--tenant", required=True)
    u.set_defaults(func=cmd_upload)

    b = sub.add_parser("bridge", help="run the HTTP bridge against configured infrastructure")
    b.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="bridge processes behind the one port (about one per core; default 1)",
    )
    b.set_defaults(func=cmd_bridge)

    t = sub.add_parser("token", help="mint a development JWT (HS256, JWT_SECRET or mesh up's)")
    t.add_argument("--tenant", required=True)
    t.add_argument("--user", required=True)
    t.add_argument("--roles", default="", help="comma-separated, e.g. admin,reader")
    t.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    t.set_defaults(func=cmd_token)

    from mesh.terminal import add_commands

    add_commands(sub, cmd_terminal)

    pr = sub.add_parser("provision", help="create/update every stream and bucket, then exit")
    pr.add_argument("--replicas", type=int, default=0, help="default: $JETSTREAM_REPLICAS")
    pr.set_defaults(func=cmd_provision)

    pb = sub.add_parser("probe", help="exit 0 if this pod's instance of NAME answers")
    pb.add_argument("name")
    pb.add_argument("--live", action="store_true", help="NATS unreachable counts as live")
    pb.add_argument("--timeout", type=float, default=3.0)
    pb.set_defaults(func=cmd_probe)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
