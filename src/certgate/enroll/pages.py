"""The enrollment page: Jinja2 templates (autoescaped), no JavaScript.

Everything the page needs is in the one HTML response: the style sheet is
inline and allowed by its SHA-256 in the Content-Security-Policy, so the
policy can stay ``default-src 'none'``; nothing is loaded from anywhere,
the page cannot be framed, and no Referer leaves it (the token is in the
URL).
"""

from __future__ import annotations

import base64
import functools
import hashlib

import jinja2
from markupsafe import Markup

from certgate.enroll.service import EnrollResponse, response

# Small and readable at 390x844 (an iPhone 12-15 viewport) and on a desktop.
CSS = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;color:#111;background:#fafafa}"
    "main{max-width:40em;margin:0 auto;padding:1em}"
    "h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.15em;margin-top:1.4em}"
    "label{display:block;font-weight:600}"
    "input{font-size:1.4em;width:100%;box-sizing:border-box;padding:.4em;"
    "letter-spacing:.2em;margin:.3em 0 .8em}"
    "button{font-size:1em;padding:.6em 1em;border:0;border-radius:.4em;"
    "background:#0b5cad;color:#fff}"
    "details{background:#fff;border:1px solid #ccc;border-radius:.4em;margin:.6em 0;"
    "padding:.4em .8em}summary{font-weight:600;cursor:pointer;padding:.3em 0}"
    "ol{padding-left:1.2em}li{margin:.5em 0}form{margin:.3em 0}"
    "code{word-break:break-all;background:#eee;padding:.1em .3em;border-radius:.2em}"
    "#password{font-size:1.3em}"
    ".password{background:#fff8d6;border:1px solid #e0c200;border-radius:.4em;"
    "padding:.2em .8em}"
    ".error{color:#a00000;font-weight:600}.warn{color:#7a4b00}.small{font-size:.85em;color:#555}"
)
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'").encode()


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("certgate.enroll", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def render(template: str, status: int = 200, **values: object) -> EnrollResponse:
    """A page with the strict policy; every value is escaped by the template."""
    html = _environment().get_template(template).render(css=Markup(CSS), **values)
    return response(status, b"text/html; charset=utf-8", html.encode("utf-8"),
                    ((b"content-security-policy", CSP),))
