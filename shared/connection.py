"""How to reach NATS: the keyword arguments both nats-py and FastStream's NatsBroker take."""

from __future__ import annotations

from typing import Any

from shared.config import Settings


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Server and credentials; secrets are unwrapped here only, never logged."""
    kwargs: dict[str, Any] = {"servers": [settings.effective_nats_url]}
    if settings.nats_user:
        kwargs["user"] = settings.nats_user
    if settings.nats_password:
        kwargs["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token:
        kwargs["token"] = settings.nats_token.get_secret_value()
    return kwargs
