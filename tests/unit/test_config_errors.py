"""A bad setting is refused with an error that names it but never echoes its value."""

import pydantic
import pytest

from rankstream.config import Settings


def test_a_bad_nats_url_is_refused_without_echoing_its_password() -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        Settings(nats_url="nats://user:hunter2@a:4222,ftp://b:21")
    assert "nats_url" in str(refused.value)
    assert "hunter2" not in str(refused.value)
