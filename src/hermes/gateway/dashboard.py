"""The live dashboard: `GET /dashboard`, a page shipped in the package (plain HTML, JS and CSS
under `gateway/static/`: no build step, nothing fetched from elsewhere) that polls
`GET /v1/hermes/state` (`state_api`) every second and draws it.

The page holds no data, so it is served to anyone; the state behind it takes the admin key
when one is set. A browser cannot send a bearer token when it opens a page, so the page asks
for the key (or reads it from the URL's fragment, `/dashboard#key=...`, which browsers never
send to the server), keeps it in the tab's sessionStorage, and sends it with each poll as
`Authorization: Bearer`. docs/operating.md says how to use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib.resources import files

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from hermes.gateway.errors import NotFoundError

STATE_PATH = "/v1/hermes/state"
_TYPES = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Only the page's own files, and no inline script or style: data shown is client-chosen
# (application ids, stage names), and the page writes it as text, never as markup.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}


@cache
def asset(name: str) -> bytes:
    """A file of the page, read once from the package."""
    return files("hermes.gateway").joinpath("static", name).read_bytes()


def _file(name: str) -> Response:
    media = _TYPES.get(name)
    if media is None:
        raise NotFoundError(f"no dashboard file {name[:60]!r}")
    return Response(asset(name), media_type=media, headers=_HEADERS)


async def page(request: Request) -> Response:
    return _file("dashboard.html")


async def static(request: Request) -> Response:
    return _file(request.path_params["name"])


async def home(request: Request) -> Response:
    return RedirectResponse("/dashboard", status_code=307)


def dashboard_routes(
    state: Callable[[Request], Awaitable[Response]], admin: Middleware
) -> list[BaseRoute]:
    """`/` (to the dashboard), `/dashboard` and its files, and the state API (`state`) behind
    `admin`, the bearer check of admin routes."""
    return [
        Route("/", home, methods=["GET"]),
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/{name}", static, methods=["GET"]),
        Route(STATE_PATH, state, methods=["GET"], middleware=[admin]),
    ]
