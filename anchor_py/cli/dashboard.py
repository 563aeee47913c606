"""`anchor dashboard`: serve the web dashboard (anchor_py.dashboard) with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

from anchor_py.cli.common import UsageError, add_dsn_option, dsn_from

TOKEN_ENV = "ANCHOR_DASHBOARD_TOKEN"
BASIC_AUTH_ENV = "ANCHOR_DASHBOARD_BASIC_AUTH"


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard (overview, tasks, retry/cancel, cron, pruning, /metrics)",
        description="Serve the web dashboard. It binds to 127.0.0.1 unless told otherwise; when you expose "
        "it, guard it with --token or --basic-auth. Needs the 'dashboard' extra "
        "(pip install 'anchor-py[dashboard]').",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", default="8080", metavar="PORT", help="port to listen on (default 8080)")
    p.add_argument("--token", help=f"require this token (open the page once with ?token=...; default ${TOKEN_ENV})")
    p.add_argument("--basic-auth", metavar="USER:PASSWORD",
                   help=f"require HTTP basic auth (default ${BASIC_AUTH_ENV})")
    p.add_argument("--root-path", default="", help="URL prefix when served behind a proxy under a sub-path")
    add_dsn_option(p)
    p.set_defaults(handler=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    port_text = str(args.port).strip()
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"--port {args.port!r} must be a port number from 1 to 65535")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    basic = args.basic_auth or os.environ.get(BASIC_AUTH_ENV) or None
    if basic is not None and ":" not in basic:
        raise UsageError("--basic-auth must be USER:PASSWORD")
    try:
        import uvicorn

        from anchor_py.dashboard import create_app
    except ImportError as exc:
        raise UsageError(f"the dashboard needs its extra: pip install 'anchor-py[dashboard]' ({exc})") from None
    dsn = dsn_from(args)
    app = create_app(dsn, token=token, basic_auth=basic)
    if not _is_loopback(args.host) and token is None and basic is None:
        print(f"anchor dashboard: WARNING: listening on {args.host} without --token or --basic-auth: anyone who "
              "can reach it can retry, cancel and delete tasks", file=sys.stderr)
    shown = "localhost" if _is_loopback(args.host) else args.host
    print(f"anchor dashboard: http://{shown}:{port_text}{args.root_path}/"
          + (" (open once with ?token=<token>)" if token else ""), file=sys.stderr)
    uvicorn.run(app, host=args.host, port=int(port_text), root_path=args.root_path, log_level="warning",
                proxy_headers=False)
    return 0
