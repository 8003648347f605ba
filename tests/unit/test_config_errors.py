"""A bad setting is refused with an error that names it but never echoes its value."""

import pydantic
import pytest

from rankstream.config import Settings


def test_a_bad_nats_url_is_refused_without_echoing_its_password() -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        Settings(nats_url="nats://user:hunter2@a:4222,ftp://b:21")
    assert "nats_url" in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("tokens", ['[""]', '["s3cret", "  "]'])
def test_a_blank_gateway_token_is_refused_at_start(
    tokens: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With "" accepted, `Authorization: Bearer ` (nothing after it) would pass.
    monkeypatch.setenv("RANKSTREAM_GATEWAY_TOKENS", tokens)
    with pytest.raises(pydantic.ValidationError, match="gateway token is empty or blank"):
        Settings()


def test_the_gateway_listens_on_loopback_unless_told_otherwise() -> None:
    assert Settings().gateway_host == "127.0.0.1"
