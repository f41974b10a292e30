"""nginx, configured as close to certgate as nginx allows, for side-by-side numbers.

Equivalence, setting by setting:
  * same server chain, same trust file, ``ssl_verify_client on`` with
    ``ssl_verify_depth 2`` (leaf -> intermediate -> root; nginx's default
    depth of 1 would refuse the chain);
  * same worker count (``workers: auto`` -> one per CPU), ``reuseport`` as
    certgate's workers use SO_REUSEPORT;
  * same upstream through a keep-alive pool, HTTP/1.1, with identity headers
    set from the client certificate, as certgate adds X-Client-*;
  * streaming both ways without disk: ``proxy_request_buffering off`` and
    ``proxy_max_temp_file_size 0`` (nginx's defaults would spool a 1 GiB
    upload to a temp file first and cap the body at 1 MiB);
  * ``keepalive_requests`` unlimited in practice, as certgate has no cap
    (nginx 1.22 closes a connection after 1,000 requests by default);
  * tickets: nginx's default (on) and ``ssl_session_tickets off``; the CRL
    variant adds ``ssl_crl``, which OpenSSL checks during every full handshake.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from benchmarks.pki import Chain
from benchmarks.servers import (
    START_TIMEOUT,
    ServerProcess,
    free_port,
    port_open,
    wait_for,
    worker_count,
)


def nginx_binary() -> str | None:
    """The nginx executable, or None when it is not installed."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
        None)


def nginx_config(*, directory: Path, port: int, upstream_port: int, chain: Chain,
                 workers: int, tickets: bool = True, crl: Path | None = None) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # keep the temp files readable
    crl_line = f"ssl_crl {crl};" if crl is not None else ""
    temp = "\n".join(f"  {kind}_temp_path {directory / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
{user}worker_processes {workers};
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 10000; }}
http {{
  access_log off;
{temp}
  upstream backend {{
    server 127.0.0.1:{upstream_port};
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port} ssl reuseport;
    server_name localhost;
    ssl_certificate {chain.server_cert};
    ssl_certificate_key {chain.server_key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_client_certificate {chain.trust};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_session_tickets {"on" if tickets else "off"};
    {crl_line}
    keepalive_requests 100000000;
    client_max_body_size 0;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Client-Verify $ssl_client_verify;
      proxy_set_header X-Client-DN $ssl_client_s_dn;
      proxy_set_header X-Client-Issuer-DN $ssl_client_i_dn;
      proxy_set_header X-Client-Serial $ssl_client_serial;
      proxy_set_header X-Client-Fingerprint $ssl_client_fingerprint;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_request_buffering off;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"""


def start_nginx(binary: str, directory: Path, *, name: str, workers: str, chain: Chain,
                upstream_port: int, tickets: bool = True,
                crl: Path | None = None) -> ServerProcess:
    """Write a config into ``directory``, start nginx in the foreground, wait for its port."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(nginx_config(directory=directory, port=port, upstream_port=upstream_port,
                                 chain=chain, workers=worker_count(workers), tickets=tickets,
                                 crl=crl))
    with (directory / "stderr.log").open("ab") as err:
        proc = subprocess.Popen([binary, "-p", str(directory), "-c", str(conf), "-e",
                                 str(directory / "error.log")],
                                stdout=err, stderr=err, stdin=subprocess.DEVNULL, cwd=directory)
    server = ServerProcess(name, workers, port, directory, proc)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{server.log_tail()}")
        return port_open(port)

    try:
        wait_for(ready, START_TIMEOUT, f"{name} to be ready")
    except BaseException:
        server.stop()
        raise
    return server
