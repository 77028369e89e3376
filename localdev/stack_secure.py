"""A single-node Kafka (KRaft) that accepts clients over TLS only, for tests and for trying a
secured setup locally: SASL_SSL with SCRAM-SHA-512 passwords on :attr:`SecureKafka.port`, and SSL
with required client certificates (mutual TLS) on :attr:`SecureKafka.mtls_port`.

Same jars and process handling as :class:`localdev.stack.Kafka`; the configuration is
``deploy/kafka/secure.properties`` with the broker's PEM certificate chain and PKCS#8 key given
inline, and the SCRAM users written into the metadata log when the storage is formatted
(``kafka-storage format --add-scram``), so they exist before the first client connects.
The certificate authority and the server certificate come from the caller (files in PEM).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from localdev.stack import DEPLOY_DIR, Kafka, free_port

SCRAM_MECHANISM = "SCRAM-SHA-512"
BROKER_USER = "broker"


def _inline(pem: str) -> str:
    """PEM text as one ``.properties`` value: line breaks as ``\\n`` escapes."""
    return pem.strip().replace("\\", "\\\\").replace("\n", "\\n")


def _scram_value(text: str) -> str:
    if any(c in text for c in ",[]=\"'") or not text:
        raise ValueError(f"SCRAM name or password {text!r} must be non-empty without , [ ] = or quotes")
    return text


class SecureKafka(Kafka):
    """Kafka with SASL_SSL (SCRAM-SHA-512) and mutual-TLS listeners on loopback.

    ``users`` maps SCRAM user names to passwords (created at format time; changing them later
    needs a new ``state_dir``). ``ca_file``, ``cert_file`` and ``key_file`` are the broker's trust
    anchor, certificate (valid for ``127.0.0.1``) and PKCS#8 private key, in PEM.
    """

    name = "kafka-secure"

    def __init__(self, state_dir: Path, *, ca_file: Path, cert_file: Path, key_file: Path, users: Mapping[str, str],
                 port: int | None = None, mtls_port: int | None = None, heap: str = "512m") -> None:
        super().__init__(state_dir, port or free_port(), free_port(), heap)
        self.mtls_port = mtls_port or free_port()
        self.ca_file, self.cert_file, self.key_file = Path(ca_file), Path(cert_file), Path(key_file)
        self.users = {_scram_value(u): _scram_value(p) for u, p in users.items()}
        self._broker_password = secrets.token_hex(16)

    @property
    def mtls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    def properties(self, data_dir: Path) -> str:
        template = (DEPLOY_DIR / "kafka" / "secure.properties").read_text()
        return template.format(
            host="127.0.0.1", port=self.port, mtls_port=self.mtls_port, controller_port=self.controller_port, data_dir=data_dir,
            broker_user=BROKER_USER, broker_password=self._broker_password,
            certificate_chain=_inline(self.cert_file.read_text()), private_key=_inline(self.key_file.read_text()),
            ca_certificates=_inline(self.ca_file.read_text()))

    def prepare(self) -> None:
        path = self.state_dir / "server.properties"
        path.touch(mode=0o600)
        path.chmod(0o600)  # before it holds the broker's private key and its SCRAM password; writing keeps the mode
        super().prepare()

    def format_args(self) -> list[str]:
        users = {BROKER_USER: self._broker_password, **self.users}
        args: list[str] = []
        for user, password in users.items():
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        return args
