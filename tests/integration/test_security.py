"""NATS security on a real nats-server: TLS with a CA made here, credentials, and the
per-role permissions of infra/nats/accounts.conf.

Each test starts its own server (nats-server beside the interpreter, `-c` a config written
here) and shows that clients without the CA or the credentials are turned away while the
workers, given them through the settings, answer queries; and that no secret shows in the
logs, the metrics or the settings' repr.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import nats
import nkeys  # type: ignore[import-untyped]
import pytest
from nats.aio.msg import Msg
from prometheus_client import generate_latest
from pydantic import ValidationError

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.errors import RankstreamError
from rankstream.metrics import Metrics
from rankstream.wire.connection import connect_kwargs, loggable_url
from rankstream.wire.subjects import Subjects
from rankstream.workers.app import WorkerKind, build_broker, running_workers
from rankstream.workers.local import EmbeddedNatsServer

pytestmark = pytest.mark.integration

ACCOUNTS_CONF = Path(__file__).resolve().parents[2] / "infra" / "nats" / "accounts.conf"
QUERY = "How does a heat pump heat a house?"
REFUSED_WITHIN_S = 1.5


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test CA")
    directory = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=rankstream test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    for name, usage, names in (
        ("server", "serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"),
        ("client", "clientAuth", ""),
    ):
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\n"
            f"authorityKeyIdentifier=keyid\n{names}"
        )
        openssl(
            "req", *new_key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=rankstream test {name}",
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        )  # fmt: skip
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


def tls_block(pki: Pki, verify_clients: bool = False) -> str:
    return (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", '
        f'ca_file: "{pki.ca}", verify: {str(verify_clients).lower()}, timeout: 2 }}'
    )


@dataclass
class SecureServer:
    url: str
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


@contextmanager
def nats_server(
    directory: Path, config: str, env: dict[str, str] | None = None
) -> Iterator[SecureServer]:
    """nats-server with JetStream and `config` (written to `directory`, logging there)."""
    log_file = directory / "nats-server.log"
    config_file = directory / "nats-server.conf"
    config_file.write_text(f'{config}\nlog_file: "{log_file}"\n')
    server = EmbeddedNatsServer(store_dir=directory / "js", extra_args=("-c", str(config_file)))
    with mock.patch.dict(os.environ, env or {}):  # read by the server at start, as `$NAME`
        try:
            server.start()
        except RuntimeError as error:
            log = log_file.read_text()[-2000:] if log_file.exists() else "(no log written)"
            raise RuntimeError(f"{error}\n{log}") from error
    try:
        yield SecureServer(server.url, log_file)
    finally:
        server.stop()


async def refusal(settings: Settings) -> str:
    """Why the server turns these settings away; the client reports it as a RankstreamError."""
    settings = settings.model_copy(update={"connect_timeout_s": REFUSED_WITHIN_S})
    with pytest.raises(RankstreamError, match="cannot reach NATS"):
        await RankstreamClient(settings).connect()
    try:
        connection = await nats.connect(
            **connect_kwargs(settings), allow_reconnect=False, connect_timeout=2
        )
    except Exception as error:
        return f"{type(error).__name__}: {error}".lower()
    await connection.close()
    raise AssertionError("the server let these settings in")


async def round_trip(settings: Settings, metrics: Metrics) -> None:
    """Both ways of connecting authenticate: nats-py (client, streams) and FastStream."""
    async with RankstreamClient(settings):
        pass
    connection = await nats.connect(**connect_kwargs(settings), allow_reconnect=False)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def collect(message: Msg) -> None:
        if not received.done():
            received.set_result(message.data)

    try:
        await connection.subscribe("security.check", cb=collect)
        await connection.flush()
        broker = build_broker(settings, metrics)
        await broker.connect()
        try:
            await broker.publish(b"hello", subject="security.check")
        finally:
            await broker.stop()
        assert await asyncio.wait_for(received, 5) == b"hello"
    finally:
        await connection.close()


def assert_not_shown(
    secret: str, settings: Settings, caplog: pytest.LogCaptureFixture, metrics: Metrics
) -> None:
    exposition = generate_latest(metrics.registry).decode()
    assert "rankstream_requests_total" in exposition, "no metrics: the check would prove nothing"
    places = {
        "logs": caplog.text,
        "metrics": exposition,
        "repr(settings)": repr(settings),
        "str(settings)": str(settings),
        "settings JSON": settings.model_dump_json(),
    }
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for place, text in places.items():
        assert secret not in text, f"the secret appears in the {place}"


def test_incomplete_security_settings_are_refused_with_a_clear_error(
    pki: Pki, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(12)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"nats_tls_cert_file": pki.client_cert}, "TLS_KEY_FILE go together"),
        ({"nats_tls_key_file": pki.client_key}, "TLS_KEY_FILE go together"),
        ({"nats_tls_ca_file": tmp_path / "missing.pem"}, "NATS_TLS_CA_FILE=.*: no such file"),
        ({"nats_user": "rankstream"}, "NATS_USER and RANKSTREAM_NATS_PASSWORD go together"),
        (
            {"nats_user": "u", "nats_password": password, "nats_token": password},
            "one way to authenticate",
        ),
        (
            {"nats_token": password, "nats_creds_file": pki.ca},
            "one way to authenticate",
        ),
    ]
    for fields, message in cases:
        with pytest.raises(ValidationError, match=message) as refused:
            Settings(**fields)
        assert password not in str(refused.value)


def test_a_url_with_credentials_is_logged_without_them() -> None:
    assert loggable_url("tls://svc:s3cret@nats:4222") == "tls://***@nats:4222"
    assert loggable_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


async def test_tls_and_password_turn_outsiders_away_while_the_workers_answer(
    pki: Pki,
    tmp_path: Path,
    sample_db: str,
    model_cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    password = secrets.token_urlsafe(16)
    config = f'{tls_block(pki)}\nauthorization {{ user: rankstream, password: "{password}" }}'
    with nats_server(tmp_path, config) as server:
        settings = Settings(
            nats_url=server.url,
            nats_user="rankstream",
            nats_password=password,
            nats_tls_ca_file=pki.ca,
            subject_prefix=f"t{uuid.uuid4().hex[:10]}",
            lancedb_uri=sample_db,
            model_cache_dir=model_cache_dir,
            metrics_port=0,
        )
        plain = Settings(nats_url=server.url)
        no_credentials = Settings(nats_url=server.url, nats_tls_ca_file=pki.ca)
        no_ca = Settings(nats_url=server.url, nats_user="rankstream", nats_password=password)
        wrong = Settings(
            nats_url=server.url, nats_user="rankstream", nats_password="not-it",
            nats_tls_ca_file=pki.ca,
        )  # fmt: skip

        assert "certificate verify failed" in await refusal(plain)
        assert "certificate verify failed" in await refusal(no_ca)
        assert "authorization violation" in await refusal(no_credentials)
        assert "authorization violation" in await refusal(wrong)

        metrics = Metrics()
        async with (
            running_workers(settings, metrics=metrics),
            RankstreamClient(settings) as client,
        ):
            result = await client.query(QUERY, top_k=3, depth=5, timeout_s=120)
        assert len(result.results) == 3
        assert result.reranked == 5
    assert_not_shown(password, settings, caplog, metrics)


async def test_the_example_accounts_let_each_role_do_its_work_and_no_more(
    pki: Pki, tmp_path: Path, sample_db: str, model_cache_dir: Path
) -> None:
    """infra/nats/accounts.conf as shipped, behind TLS that also verifies client certificates:
    retrieval, rerank and client each connect as their own user and nothing they do is
    refused, while the client may not touch the JetStream API."""
    shutil.copy(ACCOUNTS_CONF, tmp_path / "accounts.conf")
    # Led by a letter: nats-server reads a `$VAR` that starts with "-" or a digit as a number.
    passwords = {
        role: "p" + secrets.token_urlsafe(16)
        for role in ("retrieval", "rerank", "client", "gateway")
    }
    env = {f"NATS_{role.upper()}_PASSWORD": value for role, value in passwords.items()}
    config = f'include "accounts.conf"\n{tls_block(pki, verify_clients=True)}'
    with nats_server(tmp_path, config, env) as server:
        tls: dict[str, Any] = {
            "nats_url": server.url,
            "nats_tls_ca_file": pki.ca,
            "nats_tls_cert_file": pki.client_cert,
            "nats_tls_key_file": pki.client_key,
        }
        role = {
            name: Settings(
                **tls,
                nats_user=name,
                nats_password=password,
                lancedb_uri=sample_db,
                model_cache_dir=model_cache_dir,
                metrics_port=0,
            )
            for name, password in passwords.items()
        }
        assert role["client"].subject_prefix == "rankstream", "the example names this prefix"
        no_client_certificate = Settings(
            nats_url=server.url,
            nats_tls_ca_file=pki.ca,
            nats_user="client",
            nats_password=passwords["client"],
        )
        await refusal(no_client_certificate)
        assert "client didn't provide a certificate" in server.log()

        async with (
            running_workers(role["retrieval"], [WorkerKind.RETRIEVAL]),
            running_workers(role["rerank"], [WorkerKind.RERANK]),
            RankstreamClient(role["client"]) as client,
        ):
            result = await client.query(QUERY, top_k=3, depth=5, timeout_s=120)
            brought = await client.rerank(QUERY, ["one candidate", "another"], timeout_s=120)
        assert result.reranked == 5
        assert brought.reranked == 2
        assert "Violation" not in server.log(), "a role lacks a permission it needs"

        # The client may publish queries, not manage streams.
        connection = await nats.connect(**connect_kwargs(role["client"]))
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await connection.jetstream(timeout=1).delete_stream(
                    Subjects(role["client"].subject_prefix).streams.queries
                )
        finally:
            await connection.close()
        for _ in range(100):  # the server writes its log as it goes
            if "Violation" in server.log():
                break
            await asyncio.sleep(0.05)
        assert (
            '"RANKSTREAM/user:client" - Publish Violation - '
            'Subject "$JS.API.STREAM.DELETE.RANKSTREAM_QUERIES"'
        ) in server.log()


def nkey_pair(prefix: int) -> Any:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def signed_jwt(claims: dict[str, Any], issuer: Any) -> str:
    """A NATS JWT (ed25519-nkey), signed by `issuer`."""

    def encode(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = encode(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = encode(
        json.dumps(
            {"jti": uuid.uuid4().hex, "iat": int(time.time()), "iss": issuer.public_key.decode()}
            | claims
        ).encode()
    )
    return f"{header}.{body}.{encode(issuer.sign(f'{header}.{body}'.encode()))}"


def creds_setup(directory: Path) -> tuple[str, Path]:
    """What `nsc` would make: an operator, a system account, an account and one user in it.
    Returns the server's config (operator mode, accounts preloaded) and the user's `.creds`."""
    operator = nkey_pair(nkeys.PREFIX_BYTE_OPERATOR)
    system, account = nkey_pair(nkeys.PREFIX_BYTE_ACCOUNT), nkey_pair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = nkey_pair(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1}

    def claims(subject: Any, name: str, nats_claims: dict[str, Any]) -> dict[str, Any]:
        return {"sub": subject.public_key.decode(), "name": name, "nats": nats_claims}

    operator_jwt = signed_jwt(
        claims(operator, "test", {"type": "operator", "version": 2}), operator
    )
    account_limits = {**unlimited, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
    accounts = {
        key.public_key.decode(): signed_jwt(
            claims(key, name, {"type": "account", "version": 2, "limits": account_limits}),
            operator,
        )
        for key, name in ((system, "SYS"), (account, "rankstream"))
    }
    user_jwt = signed_jwt(
        claims(user, "worker", {"type": "user", "version": 2, "pub": {}, "sub": {}, **unlimited}),
        account,
    )
    creds = directory / "worker.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    preload = "\n".join(f'  {key}: "{jwt}"' for key, jwt in accounts.items())
    config = (
        f'operator: "{operator_jwt}"\nsystem_account: {system.public_key.decode()}\n'
        f"resolver: MEMORY\nresolver_preload: {{\n{preload}\n}}"
    )
    return config, creds


@pytest.mark.parametrize("way", ["token", "nkey", "creds"])
async def test_token_nkey_and_creds_authenticate_over_tls(
    way: str, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = ""
    fields: dict[str, Any] = {}
    if way == "token":
        secret = secrets.token_urlsafe(16)
        auth = f'authorization {{ token: "{secret}" }}'
        fields = {"nats_token": secret}
    elif way == "nkey":
        user = nkey_pair(nkeys.PREFIX_BYTE_USER)
        secret = user.seed.decode()
        seed_file = tmp_path / "user.nk"
        seed_file.write_text(secret)
        auth = f"authorization {{ users: [{{ nkey: {user.public_key.decode()} }}] }}"
        fields = {"nats_nkey_seed_file": seed_file}
    else:
        auth, creds = creds_setup(tmp_path)
        secret = creds.read_text().split("-----BEGIN USER NKEY SEED-----\n")[1].split("\n")[0]
        fields = {"nats_creds_file": creds}
    with nats_server(tmp_path, f"{tls_block(pki)}\n{auth}") as server:
        settings = Settings(nats_url=server.url, nats_tls_ca_file=pki.ca, **fields)
        assert "authorization violation" in await refusal(
            Settings(nats_url=server.url, nats_tls_ca_file=pki.ca)
        )
        metrics = Metrics()
        await round_trip(settings, metrics)
    assert_not_shown(secret, settings, caplog, metrics)
