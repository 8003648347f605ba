"""How to reach NATS: server, credentials and TLS, as nats-py and FastStream each take them.

`connect_kwargs` is for `nats.connect(...)`; `broker_kwargs` is for `NatsBroker(...)`, which
takes credentials and TLS as one `security=` object instead. Both come from `nats_access`, so
they cannot disagree. Secrets are unwrapped here only, and nothing here logs.

`RANKSTREAM_NATS_URL` may name several servers, comma-separated (the members of one NATS
cluster): both clients get them as a list, try them in turn and fail over between them on
reconnect (and learn the cluster's other members from the servers themselves).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from faststream.nats.security import (
    NatsCredentials,
    NatsNKey,
    NatsSecurity,
    NatsToken,
    NatsUserPassword,
)

from rankstream.config import TLS_SCHEMES, Settings, split_nats_servers

# A server that stops answering without closing the connection (a partitioned or frozen
# node) is given up after MAX_OUTSTANDING_PINGS + 1 unanswered pings, i.e. within 15 s, and
# the connection moves to another server of the list. nats-py's and FastStream's default
# (120 s, 2) leaves a worker attached to such a node for up to six minutes.
PING_INTERVAL_S = 5
MAX_OUTSTANDING_PINGS = 2


@dataclass(frozen=True, repr=False)
class NatsAccess:
    """What one connection needs. `repr=False`: it holds the password or token in clear."""

    servers: list[str]
    tls: ssl.SSLContext | None
    tls_hostname: str | None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A context verifying the server (against the CA file, else the system's CAs) and
    presenting the client certificate when one is configured; None when TLS is off."""
    # Settings refuse a list that mixes TLS and plain servers, so any one tells.
    uses_tls = any(urlsplit(server).scheme in TLS_SCHEMES for server in settings.nats_servers)
    if settings.nats_tls_ca_file is None and not uses_tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(settings.nats_tls_ca_file) if settings.nats_tls_ca_file else None,
    )
    if settings.nats_tls_cert_file is not None and settings.nats_tls_key_file is not None:
        context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
    return context


def nats_access(settings: Settings) -> NatsAccess:
    password, token = settings.nats_password, settings.nats_token
    return NatsAccess(
        servers=settings.nats_servers,
        tls=tls_context(settings),
        tls_hostname=settings.nats_tls_hostname,
        user=settings.nats_user,
        password=password.get_secret_value() if password is not None else None,
        token=token.get_secret_value() if token is not None else None,
        nkey_seed_file=_str_or_none(settings.nats_nkey_seed_file),
        creds_file=_str_or_none(settings.nats_creds_file),
    )


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` (nats-py)."""
    access = nats_access(settings)
    given = {
        "tls": access.tls,
        "tls_hostname": access.tls_hostname,
        "user": access.user,
        "password": access.password,
        "token": access.token,
        "nkeys_seed": access.nkey_seed_file,
        "user_credentials": access.creds_file,
    }
    return {
        "servers": access.servers,
        **_liveness(),
        **{k: v for k, v in given.items() if v is not None},
    }


def broker_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for FastStream's `NatsBroker`: the same access, as `security=`."""
    access = nats_access(settings)
    return {"servers": access.servers, "security": broker_security(access), **_liveness()}


def _liveness() -> dict[str, int]:
    return {"ping_interval": PING_INTERVAL_S, "max_outstanding_pings": MAX_OUTSTANDING_PINGS}


def broker_security(access: NatsAccess) -> NatsSecurity | None:
    tls: dict[str, Any] = {"ssl_context": access.tls, "tls_hostname": access.tls_hostname}
    if access.user is not None and access.password is not None:
        return NatsUserPassword(access.user, access.password, **tls)
    if access.token is not None:
        return NatsToken(access.token, **tls)
    if access.nkey_seed_file is not None:
        return NatsNKey.from_file(access.nkey_seed_file, **tls)
    if access.creds_file is not None:
        return NatsCredentials.from_file(access.creds_file, **tls)
    if access.tls is not None or access.tls_hostname is not None:
        return NatsSecurity(**tls)
    return None


def loggable_url(url: str) -> str:
    """The URL without any `user:password@` in it, for logs and error messages; for several
    comma-separated servers, each one without."""
    return ",".join(_loggable_server(server) for server in split_nats_servers(url))


def _loggable_server(server: str) -> str:
    try:
        parts = urlsplit(server)
        hidden = parts.username is not None or parts.password is not None
    except ValueError:  # not a URL: say nothing of what may be in it but the host
        return f"***@{server.rpartition('@')[2]}" if "@" in server else server
    if not hidden:
        return server
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _str_or_none(value: object | None) -> str | None:
    return None if value is None else str(value)
