"""The generated password resource: what its provider decides, called the way the engine calls it.

Stability across real `pulumi up` runs, secrecy in state and overrides by `pulumi config set
--secret` are proven with the real engine (tests marked real_engine); these tests pin the
provider's own decisions, which the engine trusts.
"""

from components.generated_secret import ALPHABET, _GeneratedPasswordProvider


def test_create_makes_a_url_safe_password_of_the_asked_length() -> None:
    provider = _GeneratedPasswordProvider()
    first = provider.create({"length": 32, "__provider": "code-v1"})
    second = provider.create({"length": 32, "__provider": "code-v1"})
    for result in (first, second):
        password = result.outs["result"]
        assert len(password) == 32, f"wrong length: {len(password)}"
        assert set(password) <= set(ALPHABET), f"characters outside [A-Za-z0-9]: {password!r}"
        assert password not in result.id, "the resource id must not carry the password"
    assert first.outs["result"] != second.outs["result"], "two creates gave the same password"


def test_a_change_of_provider_code_never_regenerates_the_password() -> None:
    provider = _GeneratedPasswordProvider()
    olds = {"length": 32, "result": "kept", "__provider": "pickled-code-v1"}
    news = {"length": 32, "result": None, "__provider": "pickled-code-v2"}
    diff = provider.diff("id", olds, news)
    assert diff.changes is False, "an unchanged length must not count as a change"
    assert not diff.replaces


def test_a_new_length_replaces_the_password() -> None:
    provider = _GeneratedPasswordProvider()
    diff = provider.diff("id", {"length": 32, "result": "kept"}, {"length": 48, "result": None})
    assert diff.changes is True
    assert diff.replaces == ["length"]


def test_an_update_keeps_the_stored_password() -> None:
    provider = _GeneratedPasswordProvider()
    result = provider.update("id", {"length": 32, "result": "kept"}, {"length": 32})
    assert result.outs == {"length": 32, "result": "kept"}
