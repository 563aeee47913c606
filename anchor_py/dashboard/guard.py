"""Optional guards in front of every dashboard route: a bearer token (header, cookie, or ?token= once)
and/or HTTP basic auth."""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_COOKIE = "anchor_token"


class Guard:
    """ASGI middleware: optional bearer token and/or basic auth in front of every route."""

    def __init__(self, app: ASGIApp, token: str | None, basic_auth: tuple[str, str] | None) -> None:
        self.app = app
        self.token = token
        self.basic_auth = basic_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.token is None and self.basic_auth is None):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        if self.basic_auth is not None and not self._basic_ok(header):
            await PlainTextResponse(
                "authentication required", status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="anchor dashboard", charset="UTF-8"'},
            )(scope, receive, send)
            return
        if self.token is not None:
            offered = request.query_params.get("token")
            if offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()):
                # once, from a link: remember it in a cookie and drop it from the address bar
                query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                    path=(scope.get("root_path") or "/"))
                await response(scope, receive, send)
                return
            bearer = header[7:] if header.lower().startswith("bearer ") else None
            candidates = [c for c in (bearer, request.cookies.get(TOKEN_COOKIE)) if c]
            if not any(hmac.compare_digest(c.encode(), self.token.encode()) for c in candidates):
                await PlainTextResponse(
                    "a token is required: open the dashboard with ?token=<token> once, or send "
                    "'Authorization: Bearer <token>'", status_code=401,
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _basic_ok(self, header: str) -> bool:
        assert self.basic_auth is not None
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        want_user, want_password = self.basic_auth
        return hmac.compare_digest(user.encode(), want_user.encode()) & hmac.compare_digest(
            password.encode(), want_password.encode()
        )


def parse_basic_auth(value: str | tuple[str, str] | None) -> tuple[str, str] | None:
    if value is None or isinstance(value, tuple):
        return value
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("basic_auth must be 'user:password'")
    return user, password
