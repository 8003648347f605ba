"""A child process sees the same settings: lists (and secrets in them) survive the trip."""

from rankstream.config import Settings
from rankstream.workers.local import settings_env


def test_settings_read_back_from_a_child_environment_are_the_same(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    given = Settings(
        preload_scorers=["student", "ce-fp32"],
        gateway_tokens=["secret-a", "secret-b"],
        retry_backoff_s=[1.0, 2.5],
        nats_user="u",
        nats_password="pw",
    )
    for name, value in settings_env(given).items():
        if name.startswith("RANKSTREAM_"):
            monkeypatch.setenv(name, value)
    seen = Settings()
    assert seen.preload_scorers == ["student", "ce-fp32"]
    assert [t.get_secret_value() for t in seen.gateway_tokens] == ["secret-a", "secret-b"]
    assert seen.retry_backoff_s == [1.0, 2.5]
    assert seen.nats_password is not None
    assert seen.nats_password.get_secret_value() == "pw"
