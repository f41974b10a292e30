"""The console's pages: Jinja2 templates (autoescaped), one style sheet.

Every value reaches the HTML through the template engine's escaping
(``autoescape=True``; nothing is marked safe but the QR code's SVG, which
segno draws from the URL's bits and contains no text of the request). The
policy is ``default-src 'self'``: the style sheet is a file of the console,
there is no script at all, and no page can be framed.
"""

from __future__ import annotations

import functools
import importlib.resources
from datetime import datetime
from typing import Any

import jinja2

from certgate.ca.timeutil import rfc3339
from certgate.enroll.service import EnrollResponse, response

CSP = (b"default-src 'self'; img-src 'self'; style-src 'self'; form-action 'self'; "
       b"frame-ancestors 'none'; base-uri 'none'")
HEADERS: tuple[tuple[bytes, bytes], ...] = ((b"content-security-policy", CSP),)


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    return rfc3339(value) if isinstance(value, datetime) else str(value)


def _ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    seconds = int((now - value).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            text = f"{seconds // size} {unit}"
            break
    else:
        text = f"{seconds} s"
    return f"in {text}" if future else f"{text} ago"


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("certgate.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.globals["ago"] = _ago
    return env


def render(template: str, status: int = 200, **values: Any) -> EnrollResponse:
    html = _environment().get_template(template).render(**values)
    return response(status, b"text/html; charset=utf-8", html.encode("utf-8"), HEADERS)


@functools.cache
def stylesheet() -> bytes:
    return importlib.resources.files("certgate.console").joinpath(
        "static/console.css").read_bytes()
