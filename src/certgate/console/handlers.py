"""The console's pages and actions (issue #14).

GET handlers read the CA in a thread and render; POST handlers change the
CA in a thread (the admin named in every audit entry they cause) and answer
``303 See Other`` to the page that shows the result, so a reload never
repeats an action. By the time a handler runs, :mod:`certgate.console.service`
has checked the certificate's role, and for a POST the CSRF token and the
origin.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, quote

from certgate.ca import enrollments
from certgate.ca.crl import REASONS
from certgate.ca.listing import detail_row, fingerprint
from certgate.ca.timeutil import rfc3339
from certgate.console import data, pages, views
from certgate.console.service import AdminRequest, ConsoleService, form_fields
from certgate.enroll.service import EnrollResponse, Refused, response
from certgate.errors import CAError, UsageError

# Fields the audit templates read; absent ones are None, not an error.
_AUDIT_FIELDS = ("seq", "time", "operation", "name", "serial", "actor", "via", "admin",
                 "reason", "role", "roles", "client_ip")
AUDIT_PAGE_ENTRIES = 500
UNKNOWN_PAGE_ROWS = 500
PLATFORMS = (
    ("android", "Android phone or tablet"),
    ("iphone", "iPhone or iPad (Home Assistant or Immich app)"),
    ("apple", "Safari on a Mac, iPhone or iPad"),
    ("desktop", "Windows or Linux browser"),
    ("host", "Linux host or container (certgate enroll)"),
)
_PLATFORM_NOTES = {
    "iphone": "In the Home Assistant or Immich app, import the .p12 inside the app: a "
              "profile installed in Settings is only used by Safari and Mail.",
    "host": "On the host: certgate enroll LINK --pin PIN --out DIR (the key is made there).",
}
_ROLE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _status_of(exc: CAError | UsageError) -> int:
    """400 for input the CA refuses as such (a bad name, a bad lifetime), 409
    for a request that conflicts with the CA's state (the name is taken,
    nothing to revoke)."""
    return 400 if isinstance(exc, UsageError) else 409


def _form(request: AdminRequest) -> dict[str, str]:
    return form_fields(request.body)


def _query(request: AdminRequest) -> dict[str, str]:
    fields = parse_qs(request.query, max_num_fields=16)
    return {key: values[0] for key, values in fields.items() if values}


def _see_other(request: AdminRequest, where: str) -> EnrollResponse:
    return response(303, b"text/plain; charset=utf-8", b"see other\n",
                    ((b"location", f"{request.base}{where}".encode("ascii")),))


def _device_path(name: str) -> str:
    return f"/devices/{quote(name, safe='')}"


def _common(service: ConsoleService, request: AdminRequest) -> dict[str, Any]:
    return {"base": request.base, "admin_cn": request.admin.cn,
            "csrf": service.csrf_for(request)}


async def overview(service: ConsoleService, request: AdminRequest,
                   match: re.Match[str]) -> EnrollResponse:
    ca = service.ca

    def read() -> dict[str, Any]:
        snap = data.snapshot(ca)
        found = views.devices(snap.records, snap.seen, snap.now)
        pending = sum(1 for e in snap.enrollments if e.state == "pending")
        root, issuing = data.authorities(ca)
        return {"summary": views.overview(found, pending, snap.now), "root": root,
                "issuing": issuing, "crl": data.crl_facts(ca), "now": snap.now,
                "unknown": len(snap.unknown)}

    return pages.render("overview.html", **_common(service, request),
                        **await service.blocking(request, read))


async def device_list(service: ConsoleService, request: AdminRequest,
                      match: re.Match[str]) -> EnrollResponse:
    query = _query(request)
    sort = query.get("sort", "name")
    sort = sort if sort in views.SORT_KEYS else "name"
    status = query.get("status", "")
    status = status if status in views.STATUSES else ""
    text = query.get("q", "")[:100]
    descending = query.get("desc") == "1"
    snap = await service.blocking(request, data.snapshot, service.ca)
    found = views.devices(snap.records, snap.seen, snap.now)
    shown = views.sort_devices(views.filter_devices(found, text, status), sort, descending)
    columns = (("name", "Name"), ("", "Roles"), ("status", "Status"),
               ("not_after", "Not after"), ("last_seen", "Last seen"), ("", "User agent"))
    return pages.render("devices.html", **_common(service, request), devices=shown,
                        query=text, status_filter=status, sort=sort, desc=descending,
                        statuses=views.STATUSES, columns=columns)


async def unknown_list(service: ConsoleService, request: AdminRequest,
                       match: re.Match[str]) -> EnrollResponse:
    """Certificates the proxy saw that the inventory lacks (read-only: adopting
    one needs its certificate file, ``certgate ca adopt``)."""
    snap = await service.blocking(request, data.snapshot, service.ca)
    return pages.render("unknown.html", **_common(service, request),
                        rows=snap.unknown[:UNKNOWN_PAGE_ROWS], total=len(snap.unknown),
                        limit=UNKNOWN_PAGE_ROWS)


def _entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: entry.get(key) for key in _AUDIT_FIELDS} | {
        "label": entry.get("label", entry.get("operation"))}


async def device_page(service: ConsoleService, request: AdminRequest,
                      match: re.Match[str]) -> EnrollResponse:
    name = match["name"]
    ca = service.ca

    def read() -> dict[str, Any] | None:
        snap = data.snapshot(ca)
        found = [d for d in views.devices(snap.records, snap.seen, snap.now) if d.name == name]
        if not found:
            return None
        device = found[0]
        certificates = [detail_row(rec, snap.now, snap.seen.get(fingerprint(rec)))
                        for rec in reversed(device.certificates)]
        history = [_entry(e) for e in views.device_history(data.audit_entries(ca), name)]
        pending = [e for e in snap.enrollments if e.name == name and e.state == "pending"]
        return {"device": device, "certificates": certificates, "history": history,
                "pending": pending}

    found = await service.blocking(request, read)
    if found is None:
        pending = [e for e in await service.blocking(request, enrollments.listing, ca)
                   if e.name == name and e.state == "pending"]
        if not pending:
            raise Refused(404, "no device of that name")
        return pages.render("message.html", **_common(service, request),
                            title=name, bad=False, back=f"{request.base}/devices",
                            message=f"{name} has a pending enrollment link (expires "
                                    f"{rfc3339(pending[0].expires)}) and no certificate yet.")
    return pages.render("device.html", **_common(service, request), **found)


async def revoke_form(service: ConsoleService, request: AdminRequest,
                      match: re.Match[str]) -> EnrollResponse:
    return pages.render("revoke.html", **_common(service, request), name=match["name"],
                        reasons=list(REASONS))


async def revoke(service: ConsoleService, request: AdminRequest,
                 match: re.Match[str]) -> EnrollResponse:
    name = match["name"]
    reason = _form(request).get("reason", "unspecified")
    if reason not in REASONS:
        raise Refused(400, "unknown revocation reason")
    try:
        await service.blocking(request, service.ca.revoke, name, reason)
    except (CAError, UsageError) as exc:
        raise Refused(_status_of(exc), str(exc).splitlines()[0]) from None
    return _see_other(request, _device_path(name))


async def roles(service: ConsoleService, request: AdminRequest,
                match: re.Match[str]) -> EnrollResponse:
    name = match["name"]
    form = _form(request)
    role, action = form.get("role", ""), form.get("action", "")
    if not _ROLE.fullmatch(role) or action not in ("add", "remove"):
        raise Refused(400, "a role (letters, digits, ._-) and add or remove are needed")
    try:
        await service.blocking(request, service.ca.change_role, name, role, add=action == "add")
    except (CAError, UsageError) as exc:
        raise Refused(_status_of(exc), str(exc).splitlines()[0]) from None
    return _see_other(request, _device_path(name))


async def new_form(service: ConsoleService, request: AdminRequest,
                   match: re.Match[str]) -> EnrollResponse:
    return _new_page(service, request, {"name": "", "roles": "", "days": "365",
                                        "platform": "android"})


def _new_page(service: ConsoleService, request: AdminRequest, form: dict[str, str],
              error: str = "", status: int = 200) -> EnrollResponse:
    return pages.render("new.html", status, **_common(service, request), form=form,
                        error=error, platforms=PLATFORMS,
                        enroll_url_base=service.enroll_url_base(request))


async def new_device(service: ConsoleService, request: AdminRequest,
                     match: re.Match[str]) -> EnrollResponse:
    raw = _form(request)
    form = {"name": raw.get("name", "").strip(), "roles": raw.get("roles", ""),
            "days": raw.get("days", "365"), "platform": raw.get("platform", "android")}
    base = service.enroll_url_base(request)
    if base is None:
        return _new_page(service, request, form, "no route serves enrollment links", 409)
    if form["platform"] not in dict(PLATFORMS):
        form["platform"] = "android"
    try:
        days = int(form["days"])
        if not 1 <= days <= 825:
            raise ValueError
    except ValueError:
        return _new_page(service, request, form, "the lifetime is a number of days from 1 to "
                                                 "825", 400)
    wanted = [r for r in re.split(r"[\s,]+", form["roles"]) if r]
    try:
        new = await service.blocking(request, _create, service, base, form["name"], wanted,
                                     days)
    except (CAError, UsageError) as exc:
        return _new_page(service, request, form, str(exc).splitlines()[0], _status_of(exc))
    url, e = new
    import segno
    from markupsafe import Markup

    svg = segno.make(url.url, error="m").svg_inline(omitsize=True, title="enrollment link")
    return pages.render("enrolled.html", **_common(service, request), name=e.name,
                        url=url.url, pin=url.pin, expires=e.expires, qr_svg=Markup(svg),
                        enrollment_id=e.id, platform_note=_PLATFORM_NOTES.get(form["platform"]))


class _Link:
    """The one-time URL and PIN of a new enrollment (shown once, stored nowhere)."""

    def __init__(self, url: str, pin: str) -> None:
        self.url = url
        self.pin = pin


def _create(service: ConsoleService, base: str, name: str, wanted: list[str],
            days: int) -> tuple[_Link, enrollments.Enrollment]:
    from certgate.enroll.bundles import root_fingerprint
    from certgate.enroll.paths import enroll_url

    ca = service.ca
    new = enrollments.create(ca, name, roles=wanted, lifetime=timedelta(days=days))
    root = data.root_certificate(ca)
    return (_Link(enroll_url(base, "", new.token, root_fingerprint(root)),
                  new.pin), new.enrollment)


async def cancel_enrollment(service: ConsoleService, request: AdminRequest,
                            match: re.Match[str]) -> EnrollResponse:
    ident = match["id"]
    try:
        cancelled = await service.blocking(request, enrollments.cancel, service.ca, ident)
    except CAError as exc:
        raise Refused(409, str(exc).splitlines()[0]) from None
    return _see_other(request, _device_path(cancelled[0].name) if cancelled else "/devices")


async def audit_log(service: ConsoleService, request: AdminRequest,
                    match: re.Match[str]) -> EnrollResponse:
    ca = service.ca

    def read() -> tuple[list[dict[str, Any]], bool, str]:
        ok, verdict = data.audit_verdict(ca)
        return data.audit_entries(ca), ok, verdict

    entries, ok, verdict = await service.blocking(request, read)
    newest = [_entry(e) for e in reversed(entries[-AUDIT_PAGE_ENTRIES:])]
    return pages.render("audit.html", **_common(service, request), entries=newest,
                        verdict_ok=ok, verdict=verdict,
                        device_operations=views.DEVICE_OPERATIONS,
                        truncated=len(entries) > AUDIT_PAGE_ENTRIES)


async def root_certificate(service: ConsoleService, request: AdminRequest,
                           match: re.Match[str]) -> EnrollResponse:
    pem = await service.blocking(request, service.ca.root_cert_path.read_bytes)
    return response(200, b"application/x-pem-file", pem,
                    ((b"content-disposition", b'attachment; filename="root.crt"'),))


async def crl(service: ConsoleService, request: AdminRequest,
              match: re.Match[str]) -> EnrollResponse:
    try:
        pem = await service.blocking(request, service.ca.crl_path.read_bytes)
    except OSError:
        raise Refused(404, "no CRL") from None
    return response(200, b"application/x-pem-file", pem,
                    ((b"content-disposition", b'attachment; filename="crl.pem"'),))


async def stylesheet(service: ConsoleService, request: AdminRequest,
                     match: re.Match[str]) -> EnrollResponse:
    return response(200, b"text/css; charset=utf-8", pages.stylesheet())
