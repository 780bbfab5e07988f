"""The check's Masker hides credentials however they are written, known or not.

A Masker that was given the URLs masks their passwords anywhere in a text (a library's error
message quoting them); any Masker masks what looks like a credential in any URL or option.
"""

from __future__ import annotations

import pytest

from brokerctl.brokercheck import Masker

PASSWORD = "Left-h4lf/Right-h4lf@Tail-h4lf"
PIECES = ("Left-h4lf", "Right-h4lf", "Tail-h4lf")

WRITTEN = [
    f"redis://probe:{PASSWORD}@broker:6379/0",
    f"rediss://:{PASSWORD}@broker:6380/1?ssl_cert_reqs=required",
    f"redis://probe@broker/0?password={PASSWORD}",
    f"redis://probe@broker/0?db=1&password={PASSWORD}&socket_timeout=3",
    f"sentinel://:{PASSWORD}@s1:26379;sentinel://:{PASSWORD}@s2:26379/0",
    f"sentinel://s1:26379/0?sentinel_password={PASSWORD}",
    f"Connection(password='{PASSWORD}')",
    f'{{"password": "{PASSWORD}"}}',
]


@pytest.mark.parametrize("text", WRITTEN)
def test_unknown_credentials_are_masked_in_any_text(text: str) -> None:
    masked = Masker()(f"error: {text} failed")

    for piece in PIECES:
        assert piece not in masked, f"{piece!r} left in {masked!r}"


@pytest.mark.parametrize("url", WRITTEN[:6])
def test_known_passwords_are_masked_wherever_they_appear(url: str) -> None:
    mask = Masker([url])

    masked = mask(f"AUTH {PASSWORD} refused; host part {PASSWORD.split('@')[1]}")

    assert PASSWORD not in masked, masked
    assert "Left-h4lf" not in masked, masked


@pytest.mark.parametrize(
    "text",
    [
        "redis://probe@broker:6379/0",
        "redis://broker:6379/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
        "WRONGPASS invalid username-password pair or user is disabled.",
        "PONG in 0.4 ms as user probe",
    ],
)
def test_text_without_credentials_is_left_readable(text: str) -> None:
    assert Masker()(text) == text
