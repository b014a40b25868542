"""TLS and basic auth through --web.config.file (exporter-toolkit's format), against a real
exporter process with certificates made for the test; and a hostile log that tries to inject
lines into the exposition."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, ExporterProcess, parse_metrics, value, wait_for
from exporter import passwords, server
from exporter.config import ConfigError
from exporter.passwords import PasswordChecker
from exporter.server import MetricsServer
from exporter.webconfig import load_web_config

HW_OFF = ("--no-collector.gpu", "--no-collector.host", "--no-collector.process")
USER, PASSWORD = "prometheus", "correct horse"
# bcrypt of PASSWORD at cost 10 (the usual cost; `htpasswd -nBC 10` writes $2y$).
PASSWORD_HASH = "$2y$10$vAnC1Ndd4lGqg5NHINniQ.7NCFUPBbt7lgsxIPk7KOby9BDOVEoM2"


# ------------------------------------------------------------------------------ certificates

def _openssl(directory, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _make_ca(directory, name: str) -> None:
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _make_leaf(directory, name: str, ca: str, san: str, usage: str) -> None:
    (directory / f"{name}.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-set_serial", str(abs(hash(name)) % 10**9), "-days", "2", "-out", f"{name}.crt",
             "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA with a server and client certificates, and a second CA nobody trusts."""
    directory = tmp_path_factory.mktemp("pki")
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _make_leaf(directory, "server", "ca", "IP:127.0.0.1,DNS:localhost", "serverAuth")
    _make_leaf(directory, "client", "ca", "DNS:prometheus.example", "clientAuth")
    _make_leaf(directory, "intruder", "ca", "DNS:intruder.example", "clientAuth")
    _make_leaf(directory, "stranger", "other-ca", "DNS:prometheus.example", "clientAuth")
    return directory


def client_cert(pki, name: str) -> tuple[str, str]:
    return str(pki / f"{name}.crt"), str(pki / f"{name}.key")


# ---------------------------------------------------------------------------- real processes

@pytest.fixture
def secure_exporter(tmp_path):
    """Start an exporter with a web config; wait until it answers over HTTPS."""
    started: list[ExporterProcess] = []

    def start(web_config: str, pki, auth=None, cert=None) -> ExporterProcess:
        log = tmp_path / "train.jsonl"
        log.write_text(json.dumps({"step": 3, "loss": 1.25}) + "\n")
        config = tmp_path / "web.yml"
        config.write_text(web_config)
        process = ExporterProcess(["--log", str(log), *HW_OFF, "--web.config.file", str(config)])
        started.append(process)
        process.https = f"https://127.0.0.1:{process.port}"

        def answers() -> bool:
            if process.proc.poll() is not None:
                raise AssertionError(f"exporter exited:\n{process.proc.stdout.read()}")
            try:
                return requests.get(process.https + "/-/ready", verify=str(pki / "ca.crt"), auth=auth,
                                    cert=cert, timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, 15, "exporter never answered over HTTPS")
        return process

    yield start
    for process in started:
        process.stop()


def tls_config(pki, extra: str = "") -> str:
    return f"""
tls_server_config:
  cert_file: {pki / 'server.crt'}
  key_file: {pki / 'server.key'}
{extra}"""


def test_basic_auth_over_tls_guards_every_path(pki, secure_exporter):
    exporter = secure_exporter(tls_config(pki) + f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n", pki,
                               auth=(USER, PASSWORD))
    ca = str(pki / "ca.crt")

    def get(path: str, auth=None) -> requests.Response:
        return requests.get(exporter.https + path, verify=ca, auth=auth, timeout=5)

    for path in ("/metrics", "/-/healthy", "/-/ready", "/", "/nope"):
        response = get(path)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == "Basic"
        assert "training_" not in response.text
    assert get("/metrics", auth=(USER, "wrong horse")).status_code == 401
    assert get("/metrics", auth=("root", PASSWORD)).status_code == 401
    assert get("/metrics", auth=(USER, PASSWORD + "\0x")).status_code == 401
    malformed = requests.get(exporter.https + "/metrics", verify=ca, timeout=5,
                             headers={"Authorization": "Basic !!!not-base64"})
    assert malformed.status_code == 401

    response = get("/metrics", auth=(USER, PASSWORD))
    assert response.status_code == 200
    assert value(parse_metrics(response.text), "training_loss", source="train.jsonl") == 1.25
    assert get("/-/healthy", auth=(USER, PASSWORD)).status_code == 200


def test_plain_http_to_the_tls_port_fails(pki, secure_exporter):
    exporter = secure_exporter(tls_config(pki), pki)
    with pytest.raises(requests.ConnectionError):
        requests.get(exporter.url + "/metrics", timeout=5)
    # The server is still there for the next, proper, client.
    assert requests.get(exporter.https + "/metrics", verify=str(pki / "ca.crt"), timeout=5).status_code == 200


def test_client_certificate_required(pki, secure_exporter):
    config = tls_config(pki, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki / 'ca.crt'}\n")
    exporter = secure_exporter(config, pki, cert=client_cert(pki, "client"))
    ca = str(pki / "ca.crt")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(exporter.https + "/metrics", verify=ca, timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(exporter.https + "/metrics", verify=ca, cert=client_cert(pki, "stranger"), timeout=5)
    response = requests.get(exporter.https + "/metrics", verify=ca, cert=client_cert(pki, "client"), timeout=5)
    assert response.status_code == 200 and "training_loss" in response.text


def test_client_certificate_verified_if_given(pki, secure_exporter):
    config = tls_config(pki, f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki / 'ca.crt'}\n")
    exporter = secure_exporter(config, pki)
    ca = str(pki / "ca.crt")
    assert requests.get(exporter.https + "/metrics", verify=ca, timeout=5).status_code == 200
    assert requests.get(exporter.https + "/metrics", verify=ca, cert=client_cert(pki, "client"),
                        timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(exporter.https + "/metrics", verify=ca, cert=client_cert(pki, "stranger"), timeout=5)


# ------------------------------------------------------------------- in-process server details

@pytest.fixture
def serve(tmp_path):
    servers: list[MetricsServer] = []

    def start(web_config: str) -> str:
        path = tmp_path / "web.yml"
        path.write_text(web_config)
        metrics = MetricsServer("127.0.0.1:0", CollectorRegistry(), lambda: True, load_web_config(str(path)))
        metrics.start()
        servers.append(metrics)
        return f"https://127.0.0.1:{metrics.port}"

    yield start
    for metrics in servers:
        metrics.stop()


def test_client_allowed_sans(pki, serve):
    url = serve(tls_config(pki, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki / 'ca.crt'}\n"
                                "  client_allowed_sans: [prometheus.example]\n"))
    ca = str(pki / "ca.crt")
    assert requests.get(url + "/metrics", verify=ca, cert=client_cert(pki, "client"), timeout=5).status_code == 200
    with pytest.raises(requests.ConnectionError):  # trusted CA, but a name not on the list
        requests.get(url + "/metrics", verify=ca, cert=client_cert(pki, "intruder"), timeout=5)


def test_min_version_refuses_older_clients(pki, serve):
    url = serve(tls_config(pki, "  min_version: TLS13\n"))
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.3"


def test_headers_from_the_web_config(pki, serve):
    url = serve(tls_config(pki) + "http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=60\n")
    response = requests.get(url + "/metrics", verify=str(pki / "ca.crt"), timeout=5)
    assert response.headers["Strict-Transport-Security"] == "max-age=60"


def test_a_silent_client_cannot_hold_a_tls_connection(pki, serve, monkeypatch):
    monkeypatch.setattr(server, "HANDSHAKE_TIMEOUT_SECONDS", 0.3)
    url = serve(tls_config(pki))
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server, not by our own timeout
        assert time.monotonic() - started < 3


# ------------------------------------------------------------------------------- passwords

def test_both_bcrypt_backends_agree_with_known_answers():
    # crypt_blowfish's published vectors and a $2y$ hash as htpasswd writes it.
    vectors = [(b"U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
               (b"U*U*", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK"),
               (b"", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.7uG0VCzI2bS7j6ymqJi9CdcdxiRTWNy"),
               (PASSWORD.encode(), PASSWORD_HASH)]
    for name, make in passwords.BACKENDS.items():
        compute = make()
        assert compute is not None, f"{name} backend unavailable"
        for password, hashed in vectors:
            assert compute(password, hashed) == hashed, (name, password)
        assert compute(b"U*U", vectors[1][1]) != vectors[1][1]


def test_successes_are_cached_and_failures_are_not():
    calls = []

    def compute(password: bytes, stored: str) -> str:
        calls.append(password)
        return stored if password == b"right" else "$2b$04$" + "x" * 53

    checker = PasswordChecker({"alice": "$2b$04$" + "a" * 53}, compute)
    assert checker.check("alice", "right") and checker.check("alice", "right")
    assert len(calls) == 1  # the second scrape paid nothing
    assert not checker.check("alice", "wrong") and not checker.check("alice", "wrong")
    assert len(calls) == 3
    # An unknown user costs a full check too (no timing tells which users exist) and fails even
    # with the password that the decoy would accept.
    assert not checker.check("mallory", "right")
    assert len(calls) == 4
    assert not checker.check("alice", "right\0trailing")


def test_cache_does_not_outlive_a_changed_hash():
    good = "$2b$04$" + "a" * 53
    checker = PasswordChecker({"alice": good}, lambda password, stored: stored if stored == good else None)
    assert checker.check("alice", "pw")
    checker.users["alice"] = "$2b$04$" + "b" * 53
    assert not checker.check("alice", "pw")


def test_without_any_bcrypt_backend_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(passwords, "_found", None)
    monkeypatch.setattr(passwords, "BACKENDS", {"libcrypt": lambda: None, "bcrypt": lambda: None})
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n")
    with pytest.raises(ConfigError, match=r"web.yml: basic_auth_users: .*pip install 'training-exporter\[auth\]'"):
        load_web_config(str(path))


# --------------------------------------------------------------------------- config errors

def run_exporter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("body, fragment", [
    ("tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n  client_auth: x\n",
     "'tls_server_config.client_auth'"),
    ("tls_server_config:\n  cert_file: {pki}/missing.crt\n  key_file: {pki}/server.key\n",
     "tls_server_config.cert_file: cannot read"),
    ("tls_server_config:\n  cert_file: {pki}/server.key\n  key_file: {pki}/server.key\n",
     "tls_server_config.cert_file"),
    ("tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/client.key\n",
     "tls_server_config.key_file"),
    ("tls_server_config:\n  cert_file: {pki}/server.crt\n",
     "tls_server_config.key_file: missing"),
    ("tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
     "  client_auth_type: RequireAnyClientCert\n  client_ca_file: {pki}/ca.crt\n",
     "tls_server_config.client_auth_type"),
    ("tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config.client_ca_file: missing"),
    ("tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n  min_version: SSL3\n",
     "tls_server_config.min_version"),
    ("basic_auth_users:\n  prometheus: plaintext-password\n", "basic_auth_users.prometheus"),
    ("http_server_config:\n  headers:\n    Set-Cookie: a=b\n", "'http_server_config.headers.Set-Cookie'"),
    ("tls_config: {{}}\n", "unknown key 'tls_config'"),
    ("basic_auth_users: [unclosed\n", "invalid YAML"),
])
def test_a_bad_web_config_stops_the_start_naming_file_and_key(pki, tmp_path, body, fragment):
    path = tmp_path / "web.yml"
    path.write_text(body.format(pki=pki))
    result = run_exporter("--log", str(tmp_path / "x.log"), "--web.config.file", str(path))
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in lines[0] and fragment in lines[0], lines[0]


def test_web_config_file_from_the_config_file_with_relative_paths(pki, tmp_path):
    # Paths inside the web config are relative to the web config, as in exporter-toolkit.
    (pki / "web.yml").write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    security = load_web_config(str(pki / "web.yml"))
    assert security.tls is not None and security.passwords is None
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    with pytest.raises(ConfigError, match="tls_server_config.cert_file: cannot read"):
        load_web_config(str(tmp_path / "web.yml"))


# ----------------------------------------------------------------------- hostile log content

HOSTILE_KEYS = [
    'loss"} 1\ninjected_total 666\n# HELP x',
    "}\ninjected_total{a=\"b\"} 1",
    "# TYPE injected_total counter",
    "key\nwith\nnewlines",
    "back\\slash\\",
    "ünïcödé_κλειδί_鍵",
    "\u202eright-to-left",
    "x" * 10_000,
    "{'eval_loss': 1}",
    "",
]


def test_a_hostile_log_cannot_inject_into_the_exposition(tmp_path, exporter_process):
    log = tmp_path / "train.jsonl"
    lines = [json.dumps({"step": 1, **{key: 0.5 for key in HOSTILE_KEYS}}),
             '{"step": 2, "loss": 1e999, "eval_loss": -1e999, "grad_norm": NaN}',
             json.dumps({"step": 3, "loss\n": 2.0, "lr\"": 1e-5})]
    log.write_text("\n".join(lines) + "\n")
    console = tmp_path / 'evil"}\ninjected_total 1\n.log'  # the file name becomes the source label
    console.write_text("{'loss': 2.0, 'injected_total{a=\"1\"}': 3.0, 'epoch': 0.1}\n"
                       "{'loss': '1e999', 'x\\n# EOF': 'nan', 'epoch': 0.2}\n")
    hparams = tmp_path / "run" / "hparams.yaml"
    hparams.parent.mkdir()
    # Short printable text hyperparameters become label values (escaped); others are dropped.
    hparams.write_text('name: "a\\"} injected_total 1\\n"\ntitle: \'say "hi" } \\\\n\'\n'
                       'lr: 1.0e+999\n"weird key\\n}": 1\n')
    exporter = exporter_process("--log", str(log), "--log", str(tmp_path / "*.log"), "--log", str(hparams.parent),
                                *HW_OFF)

    text = requests.get(exporter.url + "/metrics", timeout=5).text
    families = list(text_string_to_metric_families(text))  # parses: nothing broke the format
    names = {sample.name for family in families for sample in family.samples}
    assert not any("injected" in name for name in names)
    assert not any(line.startswith(("injected", "# TYPE injected", "# EOF")) for line in text.splitlines())
    assert all(name.startswith(("training_", "process_")) for name in names), names
    for family in families:
        for sample in family.samples:
            key = sample.labels.get("key")
            if key is not None:
                assert len(key) <= 64 and key.replace("_", "a").isalnum() and key.isascii(), key
    metrics = parse_metrics(text)
    assert value(metrics, "training_loss", source="train.jsonl") == 2.0
    assert value(metrics, "training_nonfinite_values_total", source="train.jsonl", key="loss") == 1
    assert value(metrics, "training_nonfinite_values_total", source="train.jsonl", key="validation_loss") == 1
    assert value(metrics, "training_log_parse_errors_total", source="train.jsonl") == 0
    evil_source = 'evil"}\ninjected_total 1\n.log'
    assert value(metrics, "training_loss", source=evil_source) == float("inf")
    assert value(metrics, "training_value", source=evil_source, key="injected_total_a_1") == 3.0
    assert value(metrics, "training_hparam_text_info", source="run", key="title", value='say "hi" } \\\\n') == 1
    assert not [k for k in metrics if k[0] == "training_hparam_text_info" and ("source", "run") in k[1]
                and ("key", "name") in k[1]]  # it held a newline
    assert value(metrics, "training_hparam", source="run", key="weird_key") == 1
    # Nor into the exporter's own log, where the file name is mentioned.
    output = exporter.stop()
    assert "following" in output and not any(line.startswith("injected") for line in output.splitlines())
    assert value(metrics, "training_hparam", source="run", key="lr") == float("inf")
