"""What tests of --web.config.file share: certificates made by openssl, bcrypt hashes, Basic credentials."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import bcrypt

from tests.servers import require_binary

PASSWORD = "correct horse"


def basic(user: str, password: str) -> str:
    """The ``Authorization`` header value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash at the lowest cost, so that tests stay fast (the check is the same at any cost)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def make_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost and its key, made by openssl: (cert_file, key_file)."""
    openssl = require_binary("openssl", "apt-get install openssl")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def tls_web_config(directory: Path, tls_extra: str = "", rest: str = "") -> tuple[Path, Path]:
    """A web config file serving TLS with a new certificate (``tls_extra``: more lines of tls_server_config,
    ``rest``: more top-level keys), and that certificate: (config file, cert_file)."""
    cert, key = make_certificate(directory)
    config = directory / "web.yml"
    config.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n{tls_extra}{rest}")
    return config, cert
