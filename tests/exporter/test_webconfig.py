"""--web.config.file: the exporter-toolkit format read into a TLS context and a basic-auth check, and every mistake
in it refused at start-up with the file and the key named."""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from impact_exporter.webconfig import WebConfigError, load_web_config
from tests.servers import REPO_ROOT
from tests.tls import PASSWORD, basic, bcrypt_hash, make_certificate


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


def write_config(directory: Path, text: str) -> Path:
    path = directory / "web.yml"
    path.write_text(text)
    return path


def test_tls_and_users_load_with_paths_relative_to_the_file(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    path = write_config(
        tmp_path,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n"
        f"basic_auth_users:\n  prometheus: {bcrypt_hash(PASSWORD)}\n",
    )
    config = load_web_config(path)
    assert config.tls is not None and config.tls.minimum_version == ssl.TLSVersion.TLSv1_3
    assert config.basic_auth is not None and config.basic_auth.users == {"prometheus"}


def test_basic_auth_allows_only_the_right_user_and_password(tmp_path: Path) -> None:
    auth = load_web_config(write_config(tmp_path, f"basic_auth_users:\n  prometheus: {bcrypt_hash(PASSWORD)}\n"))
    assert auth.tls is None, "no tls_server_config: plain HTTP"
    checker = auth.basic_auth
    assert checker is not None
    assert checker.allows(basic("prometheus", PASSWORD))
    assert checker.allows(basic("prometheus", PASSWORD)), "a second time, from the cache"
    assert not checker.allows(basic("prometheus", "wrong"))
    assert not checker.allows(basic("nobody", PASSWORD))
    assert not checker.allows(basic("prometheus", "x" * 100)), "over bcrypt's 72 bytes"
    assert not checker.allows(None)
    assert not checker.allows("Bearer " + PASSWORD)
    assert not checker.allows("Basic not-base64!")
    assert not checker.allows("Basic " + base64.b64encode(b"\xffprometheus:" + PASSWORD.encode()).decode())


def test_an_empty_file_asks_for_nothing(tmp_path: Path) -> None:
    config = load_web_config(write_config(tmp_path, ""))
    assert (config.tls, config.basic_auth) == (None, None)


@pytest.mark.parametrize(
    "text, named",
    [
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cert_fle: x\n", "cert_fle"),
        ("tls_config:\n  cert_file: server.crt\n", "tls_config: unknown key"),
        ("tls_server_config:\n  cert_file: server.crt\n", "tls_server_config.key_file"),
        ("tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n", "tls_server_config.cert_file"),
        ("tls_server_config:\n  cert_file: server.key\n  key_file: server.crt\n", "do not load"),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS14\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [x]\n",
            "tls_server_config.cipher_suites: not supported",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
            "  client_auth_type: RequireAnyClientCert\n",
            "RequireAnyClientCert is not supported",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file: required",
        ),
        ("basic_auth_users:\n  prometheus: secret\n", "basic_auth_users.prometheus: not a bcrypt hash"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: deny\n", "http_server_config.headers"),
        ("- a list\n", "expected a mapping"),
        ("tls_server_config: [\n", "not valid YAML"),
    ],
)
def test_a_wrong_file_is_an_error_naming_the_file_and_the_key(
    tmp_path: Path, certificate: tuple[Path, Path], text: str, named: str
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(WebConfigError) as error:
        load_web_config(path)
    assert str(error.value).startswith(f"--web.config.file={path}: ")
    assert named in str(error.value)


def test_the_exporter_refuses_to_start_with_a_wrong_file_and_says_why_without_a_traceback(tmp_path: Path) -> None:
    path = write_config(tmp_path, "basic_auth_user:\n  prometheus: x\n")
    result = subprocess.run(
        [sys.executable, "-m", "impact_exporter", f"--web.config.file={path}", "--no-api.socket"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert f"--web.config.file={path}: basic_auth_user: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
