"""A single-node Kafka (KRaft) that accepts clients over TLS only, for tests and for trying a
secured setup locally: SASL_SSL with SCRAM-SHA-512 passwords on :attr:`SecureKafka.port`, and SSL
with required client certificates (mutual TLS) on :attr:`SecureKafka.mtls_port`.

Same jars and process handling as :class:`localdev.stack.Kafka`; the configuration is
``deploy/kafka/secure.properties`` with the broker's PEM certificate chain and PKCS#8 key given
inline, and the SCRAM users written into the metadata log when the storage is formatted
(``kafka-storage format --add-scram``), so they exist before the first client connects.
The certificate authority and the server certificate come from the caller (files in PEM).

The StandardAuthorizer is on: only the broker's own user and :data:`ADMIN_USER` are super users;
every other user can do what :meth:`SecureKafka.grant` (:func:`cloud.kafka_acls.apply`) allowed.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from cloud.kafka_acls import Grant, apply
from edge.kafka_security import KafkaSecurity
from localdev.stack import DEPLOY_DIR, READY_TIMEOUT_S, Kafka, free_port

SCRAM_MECHANISM: Final = "SCRAM-SHA-512"
BROKER_USER = "broker"
ADMIN_USER = "admin"  # a super user: creates topics and ACLs in tests


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
    anchor, certificate (valid for ``127.0.0.1``) and PKCS#8 private key, in PEM. ``grants`` are
    applied once the broker has started, as :data:`ADMIN_USER` (:attr:`admin`).
    """

    name = "kafka-secure"

    def __init__(self, state_dir: Path, *, ca_file: Path, cert_file: Path, key_file: Path, users: Mapping[str, str],
                 grants: Sequence[Grant] = (), port: int | None = None, mtls_port: int | None = None, heap: str = "512m") -> None:
        super().__init__(state_dir, port or free_port(), free_port(), heap)
        self.mtls_port = mtls_port or free_port()
        self.ca_file, self.cert_file, self.key_file = Path(ca_file), Path(cert_file), Path(key_file)
        self.users = {_scram_value(u): _scram_value(p) for u, p in users.items()}
        if {BROKER_USER, ADMIN_USER} & set(self.users):
            raise ValueError(f"the SCRAM users {BROKER_USER!r} and {ADMIN_USER!r} belong to the broker")
        self._broker_password = secrets.token_hex(16)
        self.grants = list(grants)
        self.admin = KafkaSecurity("SASL_SSL", ssl_cafile=str(self.ca_file), sasl_mechanism=SCRAM_MECHANISM, username=ADMIN_USER,
                                   password=secrets.token_hex(16))

    @property
    def mtls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    def properties(self, data_dir: Path) -> str:
        template = (DEPLOY_DIR / "kafka" / "secure.properties").read_text()
        return template.format(
            host="127.0.0.1", port=self.port, mtls_port=self.mtls_port, controller_port=self.controller_port, data_dir=data_dir,
            broker_user=BROKER_USER, broker_password=self._broker_password, admin_user=ADMIN_USER,
            certificate_chain=_inline(self.cert_file.read_text()), private_key=_inline(self.key_file.read_text()),
            ca_certificates=_inline(self.ca_file.read_text()))

    def prepare(self) -> None:
        path = self.state_dir / "server.properties"
        path.touch(mode=0o600)
        path.chmod(0o600)  # before it holds the broker's private key and its SCRAM password; writing keeps the mode
        super().prepare()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        super().wait_ready(timeout_s)
        if self.grants:
            self.grant(self.grants)

    def grant(self, grants: Sequence[Grant]) -> None:
        """Create ACLs as the admin user; returns when the broker enforces them (:func:`cloud.kafka_acls.apply`)."""
        apply(self.bootstrap, grants, self.admin)

    def format_args(self) -> list[str]:
        users = {BROKER_USER: self._broker_password, ADMIN_USER: self.admin.password, **self.users}
        args: list[str] = []
        for user, password in users.items():
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        return args
