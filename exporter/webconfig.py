"""``--web.config.file``: TLS and basic auth, in the YAML format of Prometheus's exporter-toolkit,
so a file written for node_exporter works here unchanged::

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt, e.g. from `htpasswd -nBC 10 prometheus`

Everything is checked at start: a mistake raises ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field

from .config_files import ConfigError, Unreadable, read_regular_file, read_yaml
from .passwords import BCRYPT_HASH, BcryptUnavailable, PasswordChecker, backend

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit's modes that take a client certificate without verifying it: Python's ssl
# module verifies every certificate it asks for, so these cannot be offered honestly.
UNVERIFIED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert")
# The response headers exporter-toolkit lets a file set.
ALLOWED_HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
                   "X-XSS-Protection", "Content-Security-Policy")

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version",
             "client_allowed_sans", "prefer_server_cipher_suites", "cipher_suites", "curve_preferences")
_HTTP_KEYS = ("http2", "headers")


@dataclass
class WebSecurity:
    """What the server needs from the file: a TLS context, a password checker, headers."""

    path: str
    tls: ssl.SSLContext | None = None
    passwords: PasswordChecker | None = None
    headers: dict[str, str] = field(default_factory=dict)
    allowed_sans: tuple[str, ...] = ()  # any one of these in a client certificate's SANs


def load_web_config(path: str) -> WebSecurity:
    data = read_yaml(path, "web config")
    _mapping(path, "top level", data, _TOP_KEYS)
    security = WebSecurity(path=path)
    base = os.path.dirname(os.path.abspath(path))
    tls = data.get("tls_server_config") or {}
    _mapping(path, "tls_server_config", tls, _TLS_KEYS)
    if any(tls.get(key) not in (None, "", []) for key in ("cert_file", "key_file", "client_auth_type", "client_ca_file")):
        security.tls, security.allowed_sans = _tls_context(path, tls, base)
    http = data.get("http_server_config") or {}
    _mapping(path, "http_server_config", http, _HTTP_KEYS)
    if "http2" in http and not isinstance(http["http2"], bool):
        raise ConfigError(f"{path}: http_server_config.http2: expected true or false")
    headers = http.get("headers") or {}
    _mapping(path, "http_server_config.headers", headers, ALLOWED_HEADERS)
    for name, value in headers.items():
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ConfigError(f"{path}: http_server_config.headers.{name}: expected a one-line string")
    security.headers = dict(headers)
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ConfigError(f"{path}: basic_auth_users: expected a mapping of user name to bcrypt hash")
    users = {str(user): hashed for user, hashed in users.items()}
    for user, hashed in users.items():
        if ":" in user:
            raise ConfigError(f"{path}: basic_auth_users.{user}: a user name cannot hold ':'")
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            raise ConfigError(f"{path}: basic_auth_users.{user}: expected a bcrypt hash ($2a$, $2b$ or $2y$)")
    if users:
        try:
            compute = backend()[1]
        except BcryptUnavailable as error:
            raise ConfigError(f"{path}: basic_auth_users: {error}") from None
        security.passwords = PasswordChecker(users, compute)
    return security


def requires_credentials(security: WebSecurity) -> bool:
    """Whether a client can prove who it is: by basic auth, or by a client certificate verified
    against the configured CA (with VerifyClientCertIfGiven, only the clients that present one)."""
    return security.passwords is not None or (security.tls is not None and security.tls.verify_mode != ssl.CERT_NONE)


def _mapping(path: str, where: str, value, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping")
    for key in value:
        if key not in allowed:
            name = str(key) if where == "top level" else f"{where}.{key}"
            raise ConfigError(f"{path}: unknown key {name!r} (expected one of: {', '.join(allowed)})")


def _string(path: str, tls: dict, key: str, default: str | None = None) -> str | None:
    value = tls.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: tls_server_config.{key}: expected a string")
    return value or default


def _tls_context(path: str, tls: dict, base: str) -> tuple[ssl.SSLContext, tuple[str, ...]]:
    def where(key: str) -> str:
        return f"{path}: tls_server_config.{key}"

    for key in ("cipher_suites", "curve_preferences"):
        if tls.get(key):
            raise ConfigError(f"{where(key)}: not supported (OpenSSL's defaults are used)")
    cert_file, key_file = _string(path, tls, "cert_file"), _string(path, tls, "key_file")
    if not cert_file:
        raise ConfigError(f"{where('cert_file')}: missing (TLS needs cert_file and key_file)")
    if not key_file:
        raise ConfigError(f"{where('key_file')}: missing (TLS needs cert_file and key_file)")
    cert_file, key_file = (os.path.join(base, f) for f in (cert_file, key_file))
    auth = _string(path, tls, "client_auth_type", "NoClientCert")
    if auth in UNVERIFIED_CLIENT_AUTH_TYPES:
        raise ConfigError(f"{where('client_auth_type')}: {auth} (a client certificate taken without verifying it) "
                          "is not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth not in CLIENT_AUTH_TYPES:
        raise ConfigError(f"{where('client_auth_type')}: expected one of {', '.join(CLIENT_AUTH_TYPES)}, got {auth!r}")
    ca_file = _string(path, tls, "client_ca_file")
    if ca_file and auth == "NoClientCert":
        raise ConfigError(f"{where('client_ca_file')}: set, but client_auth_type is NoClientCert")
    if not ca_file and auth != "NoClientCert":
        raise ConfigError(f"{where('client_ca_file')}: missing: {auth} needs the CA that signs client certificates")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = _string(path, tls, key, default)
        if name not in TLS_VERSIONS:
            raise ConfigError(f"{where(key)}: expected one of {', '.join(TLS_VERSIONS)}, got {name!r}")
        versions[key] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise ConfigError(f"{where('min_version')}: above max_version")
    sans = tls.get("client_allowed_sans") or []
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        raise ConfigError(f"{where('client_allowed_sans')}: expected a list of strings")
    if sans and auth != "RequireAndVerifyClientCert":
        raise ConfigError(f"{where('client_allowed_sans')}: needs client_auth_type RequireAndVerifyClientCert")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version, context.maximum_version = versions["min_version"], versions["max_version"]
    if tls.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _readable(where("cert_file"), cert_file)
    _readable(where("key_file"), key_file)
    try:
        # Parsed alone first, so that a broken certificate is not blamed on the key.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except ssl.SSLError as error:
        raise ConfigError(f"{where('cert_file')}: {cert_file} holds no usable PEM certificate ({_reason(error)})") from None
    try:
        # An empty password: an encrypted key fails here instead of prompting on the terminal.
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as error:
        raise ConfigError(f"{where('key_file')}: {key_file} is not an unencrypted PEM key matching cert_file "
                          f"({_reason(error)})") from None
    if ca_file:
        ca_file = os.path.join(base, ca_file)
        _readable(where("client_ca_file"), ca_file)
        try:
            context.load_verify_locations(cafile=ca_file)
        except ssl.SSLError as error:
            raise ConfigError(f"{where('client_ca_file')}: {ca_file} holds no usable PEM certificate "
                              f"({_reason(error)})") from None
    context.verify_mode = CLIENT_AUTH_TYPES[auth]
    return context, tuple(sans)


def _readable(where: str, path: str) -> None:
    # Checked here, as the config is: OpenSSL would wait on a FIFO, or read a device for ever.
    try:
        read_regular_file(path)
    except Unreadable as error:
        raise ConfigError(f"{where}: cannot read {path}: {error}") from None


def _reason(error: ssl.SSLError) -> str:
    return str(error.reason or error.strerror or error).lower().replace("_", " ")


def client_sans(certificate: dict | None) -> set[str]:
    """Every subject alternative name of a verified peer certificate (DNS, IP, email, URI)."""
    return {value for _kind, value in (certificate or {}).get("subjectAltName", ())}
