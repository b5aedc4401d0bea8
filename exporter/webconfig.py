"""``--web.config.file``: TLS and basic auth for the TCP listener, in the Prometheus exporter-toolkit's format.

The file is the one node_exporter and Prometheus read (exporter-toolkit's docs/web-configuration.md)::

    tls_server_config:
      cert_file: server.crt        # relative paths are relative to the file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: clients.crt
      min_version: TLS12           # the default
    basic_auth_users:
      prometheus: $2b$12$...       # bcrypt hash: htpasswd -nBC 12 "" | tr -d ':\\n'

Without ``tls_server_config`` (or with neither file in it) the listener speaks plain HTTP, and basic auth, if
configured, still applies. Keys the format has but this server cannot honour (``cipher_suites``,
``curve_preferences``, ``client_allowed_sans``, ``http_server_config.headers``, and client auth types that
request a certificate without verifying it) are refused rather than ignored, as are unknown keys: a setting
that silently did nothing would leave the operator believing in a protection that is not there. The file is read
once, at start-up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import yaml

TOP_LEVEL_KEYS = frozenset({"tls_server_config", "http_server_config", "basic_auth_users"})
TLS_KEYS = frozenset(
    {
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "min_version",
        "max_version",
        "prefer_server_cipher_suites",
    }
)
HTTP_KEYS = frozenset({"http2"})
UNSUPPORTED = {
    "tls_server_config.cipher_suites": "OpenSSL's default ciphers for the TLS versions allowed apply",
    "tls_server_config.curve_preferences": "OpenSSL's default curves apply",
    "tls_server_config.client_allowed_sans": "use a client CA that signs only the allowed clients",
    "tls_server_config.cert": "put the certificate in a file and name it in cert_file",
    "tls_server_config.key": "put the key in a file and name it in key_file",
    "tls_server_config.client_ca": "put the CA certificates in a file and name it in client_ca_file",
    "http_server_config.headers": "set response headers in a reverse proxy",
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
BCRYPT_HASH = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
UNKNOWN_USER_HASH = b"$2b$10$xeanFRyKCmpCg7g2cv4qLuBObQeHAcyJR81QB3OMnM0yjf/ZnNRWG"
"""Checked against for a user name that is not configured, so that an unknown name takes as long as a wrong
password and the time of a refusal does not tell which names exist."""
VERIFIED_CACHE_SIZE = 256
"""How many verified (user, password) pairs are remembered: bcrypt is slow on purpose (tens of milliseconds at
cost 10), and Prometheus sends the same credentials at every scrape."""


class WebConfigError(ValueError):
    """The web config file is unreadable or wrong; the message names the file and the key."""


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against the bcrypt hashes of ``basic_auth_users``.

    A pair that verified once is remembered (as a keyed digest, never in clear), up to VERIFIED_CACHE_SIZE pairs,
    so that a scrape costs one hash, not one bcrypt run. Safe to call from every handler thread."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        self._key = os.urandom(32)
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    @property
    def users(self) -> frozenset[str]:
        """The configured user names."""
        return frozenset(self._users)

    def allows(self, authorization: str | None) -> bool:
        """Whether the value of an ``Authorization`` header names a configured user and that user's password."""
        credentials = _basic_credentials(authorization or "")
        if credentials is None:
            return False
        user, password = credentials
        digest = hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()
        with self._lock:
            if digest in self._verified:
                return True
        try:
            hashed = self._users.get(user.decode())
        except UnicodeDecodeError:
            hashed = None
        try:
            matches = bcrypt.checkpw(password, hashed or UNKNOWN_USER_HASH)
        except ValueError:  # a password over bcrypt's 72 bytes
            return False
        if not (matches and hashed is not None):
            return False
        with self._lock:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified.add(digest)
        return True


def _basic_credentials(authorization: str) -> tuple[bytes, bytes] | None:
    """(user, password) of a ``Basic`` authorization value, or None when it is another scheme or malformed."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class WebConfig:
    """What ``--web.config.file`` asks of the TCP listener: a TLS context (None: plain HTTP) and basic auth (None:
    no credentials asked)."""

    path: Path
    tls: ssl.SSLContext | None
    basic_auth: BasicAuth | None


def load_web_config(path: Path) -> WebConfig:
    """Read and check the web config file at ``path``; WebConfigError names the file, the key and the fix."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise WebConfigError(f"--web.config.file={path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise WebConfigError(f"--web.config.file={path}: not UTF-8 text: {error}") from error
    except yaml.YAMLError as error:
        raise WebConfigError(f"--web.config.file={path}: not valid YAML: {error}") from error
    where = _Where(path)
    document = where.mapping(document if document is not None else {}, "", TOP_LEVEL_KEYS)
    where.mapping(document.get("http_server_config") or {}, "http_server_config", HTTP_KEYS)
    tls = document.get("tls_server_config") or {}
    return WebConfig(
        path=path,
        tls=_tls_context(where, where.mapping(tls, "tls_server_config", TLS_KEYS)),
        basic_auth=_basic_auth(where, document.get("basic_auth_users") or {}),
    )


class _Where:
    """Builds the errors of one file: each names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str) -> WebConfigError:
        return WebConfigError(f"--web.config.file={self.path}: {key}: {problem}")

    def mapping(self, value: Any, key: str, known: frozenset[str]) -> dict[str, Any]:
        """``value`` as a mapping whose keys are all ``known``; an unsupported or unknown key is an error."""
        if not isinstance(value, dict):
            raise self.error(key or "the file", "expected a mapping of keys to values")
        for name in value:
            full = f"{key}.{name}" if key else str(name)
            if full in UNSUPPORTED:
                raise self.error(full, f"not supported by impact-exporter; remove it ({UNSUPPORTED[full]})")
            if name not in known:
                raise self.error(full, f"unknown key; the known ones here are {', '.join(sorted(known))}")
        return value

    def file(self, value: Any, key: str) -> Path:
        """A file path from the config, relative to the config file's directory, that exists."""
        if not isinstance(value, str) or not value:
            raise self.error(key, "expected a file path")
        resolved = self.path.parent / value
        if not resolved.is_file():
            raise self.error(key, f"{resolved} is not a readable file")
        return resolved


def _tls_context(where: _Where, tls: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The server TLS context ``tls_server_config`` describes, or None when it names no certificate."""
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert and not key:
        if tls:
            raise where.error("tls_server_config", "cert_file and key_file are required to serve TLS")
        return None
    if not cert or not key:
        missing = "cert_file" if not cert else "key_file"
        raise where.error(f"tls_server_config.{missing}", "required with the other of cert_file and key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert_path = where.file(cert, "tls_server_config.cert_file")
    key_path = where.file(key, "tls_server_config.key_file")
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as error:
        raise where.error("tls_server_config.cert_file", f"{cert_path} and {key_path} do not load: {error}") from error
    context.minimum_version = _tls_version(where, tls.get("min_version", "TLS12"), "min_version")
    if "max_version" in tls:
        context.maximum_version = _tls_version(where, tls["max_version"], "max_version")
    if tls.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _client_auth(where, context, tls)
    return context


def _tls_version(where: _Where, value: Any, key: str) -> ssl.TLSVersion:
    if value not in TLS_VERSIONS:
        raise where.error(f"tls_server_config.{key}", f"{value!r} is not one of {', '.join(TLS_VERSIONS)}")
    return TLS_VERSIONS[value]


def _client_auth(where: _Where, context: ssl.SSLContext, tls: Mapping[str, Any]) -> None:
    """Set ``context`` to ask for client certificates as ``client_auth_type`` says, verified by ``client_ca_file``."""
    auth_type = tls.get("client_auth_type", "NoClientCert")
    key = "tls_server_config.client_auth_type"
    if auth_type in UNVERIFIED_CLIENT_AUTH:
        raise where.error(
            key,
            f"{auth_type} is not supported (it accepts unverified certificates); use "
            "VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file",
        )
    if auth_type not in CLIENT_AUTH:
        raise where.error(key, f"{auth_type!r} is not one of {', '.join(CLIENT_AUTH)}")
    ca = tls.get("client_ca_file")
    if ca and auth_type == "NoClientCert":
        raise where.error("tls_server_config.client_ca_file", "set client_auth_type to use it")
    if not ca and auth_type != "NoClientCert":
        raise where.error("tls_server_config.client_ca_file", f"required with client_auth_type {auth_type}")
    if ca:
        ca_path = where.file(ca, "tls_server_config.client_ca_file")
        try:
            context.load_verify_locations(cafile=ca_path)
        except ssl.SSLError as error:
            raise where.error("tls_server_config.client_ca_file", f"{ca_path} does not load: {error}") from error
    context.verify_mode = CLIENT_AUTH[auth_type]


def _basic_auth(where: _Where, users: Any) -> BasicAuth | None:
    """The checker of ``basic_auth_users`` (user name -> bcrypt hash), or None when there are none."""
    if not isinstance(users, dict):
        raise where.error("basic_auth_users", "expected a mapping of user names to bcrypt hashes")
    hashes = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            raise where.error(
                f"basic_auth_users.{user}",
                "not a bcrypt hash; make one with: htpasswd -nBC 12 '' | tr -d ':\\n'",
            )
        if ":" in str(user):
            raise where.error(f"basic_auth_users.{user}", "a user name cannot hold ':'")
        hashes[str(user)] = hashed.encode()
    return BasicAuth(hashes) if hashes else None
