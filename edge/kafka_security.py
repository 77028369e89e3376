"""How an edgewatch Kafka client proves who it is and checks whom it talks to: TLS and SASL.

One frozen dataclass, :class:`KafkaSecurity`, holds the settings every deployable's ``[kafka]``
table shares (the agent's ``KafkaSection``, the processor's and the retraining trigger's extend it,
so the keys are flat: ``kafka.ssl_cafile``, env twin ``EDGEWATCH_KAFKA__SSL_CAFILE``).
:func:`check_security` runs when a config is loaded: it resolves relative files against the
config file's folder and raises :class:`ConfigError` naming the dotted key for a missing file,
files set for a protocol without TLS, or SASL without a username or password.
:func:`client_kwargs` turns the settings into kafka-python 3.x keyword arguments for
``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``. :func:`diagnose` says why a
client could not start: kafka-python 3.0 reports a refused login or an untrusted certificate only
as "Unable to bootstrap" after its timeout, with the cause in its own log lines, and not always.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from edge.contract import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
FILE_KEYS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL settings of one Kafka client; the defaults are plain text, no authentication.

    - ``security_protocol``: ``SSL`` and ``SASL_SSL`` encrypt and verify the broker's certificate;
      ``SASL_*`` log in with ``username`` and ``password`` by ``sasl_mechanism``.
    - ``ssl_cafile``: PEM file of the CAs that may sign the broker's certificate; empty: the
      system's trusted CAs.
    - ``ssl_certfile`` / ``ssl_keyfile``: this client's certificate (PEM, may hold the key too)
      and private key, for brokers that require client certificates (mutual TLS).
    - ``ssl_check_hostname``: the certificate must name the host in ``bootstrap``; turn off only
      for brokers addressed by a name their certificate does not carry.
    - ``password``: a secret, never in ``repr``; the deployables read it from the environment only.
    """

    security_protocol: SecurityProtocol = "PLAINTEXT"
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_check_hostname: bool = True
    sasl_mechanism: SaslMechanism = "PLAIN"
    username: str = ""
    password: str = field(default="", repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")


S = TypeVar("S", bound=KafkaSecurity)


def client_kwargs(sec: KafkaSecurity) -> dict[str, Any]:
    """kafka-python 3.x client arguments for ``sec``: ``security_protocol`` always, the ``ssl_*``
    arguments with TLS, ``sasl_mechanism`` and ``sasl_plain_username``/``sasl_plain_password``
    with SASL (kafka-python uses those two for SCRAM as well). Pure; does not read the files."""
    out: dict[str, Any] = {"security_protocol": sec.security_protocol}
    if sec.uses_tls:
        out["ssl_check_hostname"] = sec.ssl_check_hostname
        for key in FILE_KEYS:
            if getattr(sec, key):
                out[key] = getattr(sec, key)
    if sec.uses_sasl:
        out.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.username, sasl_plain_password=sec.password)
    return out


def check_security(sec: S, *, section: str, where: str, base: Path | None = None) -> S:
    """Validate ``sec`` (the ``[section]`` table of the config at ``where``) when a config loads.

    Relative file names resolve against ``base`` (the config file's folder; ``None``: the working
    directory). Returns ``sec`` with absolute file names. Raises :class:`ConfigError` naming
    ``where`` and the dotted key: a file that does not exist, ``ssl_*`` files with a protocol
    without TLS, a key file without a certificate, or a SASL protocol without ``username`` or
    ``password`` (the password's message names its environment variable).
    """
    base = Path.cwd() if base is None else base
    resolved: dict[str, str] = {}
    for key in FILE_KEYS:
        name = getattr(sec, key)
        if not name:
            continue
        if not sec.uses_tls:
            raise ConfigError(f"{where}: '{section}.{key}' = {name!r} is set but '{section}.security_protocol' is "
                              f"{sec.security_protocol!r} (use SSL or SASL_SSL)")
        path = Path(name) if Path(name).is_absolute() else base / name
        if not path.is_file():
            raise ConfigError(f"{where}: '{section}.{key}' = {name!r}: no such file ({path})")
        resolved[key] = str(path)
    if sec.ssl_keyfile and not sec.ssl_certfile:
        raise ConfigError(f"{where}: '{section}.ssl_keyfile' is set without '{section}.ssl_certfile' (the client certificate)")
    if sec.uses_sasl and not sec.username:
        raise ConfigError(f"{where}: '{section}.username' must be set for security_protocol {sec.security_protocol!r}")
    if sec.uses_sasl and not sec.password:
        raise ConfigError(f"{where}: '{section}.password' must be set for security_protocol {sec.security_protocol!r} "
                          f"(environment EDGEWATCH_{section.upper()}__PASSWORD)")
    if not resolved:
        return sec
    return dataclasses.replace(sec, ssl_cafile=resolved.get("ssl_cafile", ""), ssl_certfile=resolved.get("ssl_certfile", ""),
                               ssl_keyfile=resolved.get("ssl_keyfile", ""))


def diagnose(bootstrap: str, sec: KafkaSecurity, *, section: str = "kafka", timeout_s: float = 5.0) -> str:
    """One sentence on why a client with ``sec`` probably failed to reach the first server of
    ``bootstrap`` (``host:port,...``), for the error message after a failed bootstrap.

    Opens one TCP connection and, with TLS, one handshake with the same CA file, client
    certificate and host-name check the client used (Python's ``ssl``), then closes it; blocks
    at most about ``timeout_s`` and never raises. The handshake tells an unreachable broker and an
    untrusted or misnamed certificate apart from a refused SASL login, which it cannot observe.
    """
    server = bootstrap.split(",")[0].strip()
    host, _, port_text = server.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        sock = socket.create_connection((host, int(port_text)), timeout=timeout_s)
    except (OSError, ValueError) as exc:
        return f"cannot reach {server} ({exc.__class__.__name__}: {exc})"
    try:
        if not sec.uses_tls:
            return (f"{server} accepts connections but the client could not start over {sec.security_protocol}: "
                    f"a TLS listener needs '{section}.security_protocol' SSL or SASL_SSL")
        ctx = ssl.create_default_context(cafile=sec.ssl_cafile or None)
        ctx.check_hostname = sec.ssl_check_hostname
        if sec.ssl_certfile:
            ctx.load_cert_chain(sec.ssl_certfile, sec.ssl_keyfile or None)
        try:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                tls.getpeercert()
        except ssl.SSLCertVerificationError as exc:
            return (f"TLS: the broker's certificate is not trusted ({exc.verify_message}); "
                    f"check '{section}.ssl_cafile' ({sec.ssl_cafile or 'empty: system CAs'}) and '{section}.ssl_check_hostname'")
        except (ssl.SSLError, OSError) as exc:
            return f"TLS handshake with {server} failed ({exc.__class__.__name__}: {exc})"
        if sec.uses_sasl:
            return (f"TLS to {server} works, so the broker most likely refused the SASL {sec.sasl_mechanism} login of "
                    f"'{section}.username' = {sec.username!r}: check the user, '{section}.password' and '{section}.sasl_mechanism'")
        return (f"TLS to {server} works but the client could not start: a listener that requires client certificates "
                f"needs '{section}.ssl_certfile' and '{section}.ssl_keyfile' signed by a CA it trusts (or it expects SASL_SSL)")
    except (ssl.SSLError, OSError) as exc:
        return f"TLS set-up failed ({exc.__class__.__name__}: {exc})"
    finally:
        sock.close()
