"""The exception hierarchy shared by every edgewatch component.

One root, :class:`EdgewatchError`, and a few errors named for the condition. Messages carry
the offending value and where it came from, so a log line alone says what to fix.
"""

from __future__ import annotations

from typing import Any, Literal

ErrorKind = Literal["too_large", "not_json", "non_finite", "wrong_type", "invalid"]
"""What kind of rule a payload broke: the reason label of the agent's rejected-payload counter and
dead letters (``invalid`` for any rule about values rather than size, syntax or type)."""


class EdgewatchError(Exception):
    """Root of every error edgewatch raises on purpose."""


class ContractError(EdgewatchError, ValueError):
    """A message or manifest broke the wire contract.

    ``field`` is the dotted path of the offending field (``readings[3].values.pressure``),
    ``value`` a short repr of what was found, ``rule`` what was expected (for people) and ``kind``
    the kind of rule (for metric labels and dead letters).
    """

    def __init__(self, field: str, value: Any, rule: str, kind: ErrorKind = "invalid") -> None:
        self.field = field
        self.value = _short(value)
        self.rule = rule
        self.kind: ErrorKind = kind
        super().__init__(f"{field}: {self.value} violates rule: {rule}")


class ConfigError(EdgewatchError):
    """A configuration file or environment override is invalid; raised at start."""


class ManifestError(EdgewatchError):
    """A model artifact failed verification (hash, signature, compatibility)."""


class ModelLoadError(EdgewatchError):
    """A verified model could not be loaded into an inference session."""


class BrokerUnavailable(EdgewatchError):
    """A broker could not be started or reached within its timeout."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
