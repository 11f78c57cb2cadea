"""The dashboard at /ui: static files shipped in the package (api/static/ui), no CDN and no
Node build. The page signs in with an API key kept in sessionStorage and calls the same
API with `Authorization: Bearer`, so tenancy and the 404 rule are the API's own; no cookie
is ever read, so there is no CSRF surface."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static" / "ui"


class UiFiles(StaticFiles):
    """Static files with a strict Content-Security-Policy (only this origin's scripts)."""

    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
        )
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at /ui/ (StaticFiles redirects /ui there)."""
    app.mount("/ui", UiFiles(directory=STATIC, html=True), name="ui")
