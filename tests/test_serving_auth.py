"""API keys and the endpoint's flags, as pure functions (the served behaviour is in tests/test_openai_server.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmflow.serving.auth import authorized, bearer, is_loopback, load_keys
from llmflow.serving.openai_server import build_parser, check


def test_keys_come_from_flags_the_environment_and_a_file(tmp_path: Path):
    (tmp_path / "keys").write_text("# team keys\nfile-key\n\n")
    keys = load_keys(["flag-key"], tmp_path / "keys", {"LLMFLOW_API_KEY": "env-key"})
    assert keys == (b"flag-key", b"env-key", b"file-key")
    assert load_keys([], None, {}) == ()
    with pytest.raises(ValueError, match="must not be empty"):
        load_keys([" "], None, {})


def test_a_request_needs_one_of_the_keys_as_a_bearer_token():
    keys = (b"one", b"two")
    assert authorized("Bearer two", keys) and authorized("bearer one", keys)
    assert not authorized("Bearer three", keys)
    assert not authorized("two", keys) and not authorized(None, keys) and not authorized("Bearer ", keys)
    assert authorized(None, ())
    assert bearer("Basic abc") is None


def test_only_loopback_addresses_count_as_private():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max-concurrent", "0"), ("--max-queue", "-1"), ("--request-timeout", "0"), ("--trace-ratio", "1.5")],
)
def test_a_bad_flag_value_is_refused_naming_it(flag: str, value: str, capsys: pytest.CaptureFixture):
    parser = build_parser()
    args = parser.parse_args(["--model-uri", "models:/x@champion", flag, value])
    with pytest.raises(SystemExit):
        check(args, parser)
    error = capsys.readouterr().err
    assert f"{flag} {float(value):g}" in error.replace(".0 is", " is") and "is not accepted" in error
