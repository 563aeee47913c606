"""The anchor-py web dashboard (needs the `dashboard` extra: starlette, uvicorn, prometheus-client).

`create_app(dsn_or_pool, token=None, basic_auth=None)` returns a Starlette ASGI app: serve it with
`anchor dashboard`, or mount it inside your own ASGI app.
"""

from anchor_py.dashboard.app import create_app

__all__ = ["create_app"]
