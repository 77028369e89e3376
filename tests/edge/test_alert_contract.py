"""The alert message: round trips, deterministic ids, and malformed alerts refused naming the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.contract import Alert, ContractError, decode_alert, encode_alert, make_alert_id, make_incident_id

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    kind = draw(st.sampled_from(["incident", "fleet_incident", "drift"]))
    action = draw(st.sampled_from(["open", "close"]))
    opened = draw(times)
    closed = opened + draw(times) if action == "close" else draw(st.none() | times.map(lambda t: opened + t))
    return Alert(
        kind=kind, action=action, incident_id=make_incident_id(kind, draw(names), opened),
        site=draw(st.just("") | names), device_ids=tuple(draw(st.lists(names, min_size=1, max_size=5, unique=True))),
        opened_at=opened, closed_at=closed, event_count=draw(st.integers(0, 10**6)), max_score=draw(finite),
        model_name=draw(st.just("") | names), model_version=draw(st.just("") | names),
        statistic=draw(st.text(max_size=10)), observed=draw(st.none() | finite), expected=draw(st.none() | finite),
        detail=draw(st.text(max_size=40)),
    )


@given(alerts())
def test_alert_round_trip(alert: Alert) -> None:
    assert decode_alert(encode_alert(alert)) == alert


@settings(max_examples=300)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_raise_only_contract_error(payload: bytes) -> None:
    try:
        decode_alert(payload)
    except ContractError:
        pass


def test_ids_are_deterministic_and_distinct() -> None:
    inc = make_incident_id("incident", "pump-1", 100.0)
    assert inc == make_incident_id("incident", "pump-1", 100)
    assert len({inc, make_incident_id("fleet_incident", "pump-1", 100.0), make_incident_id("incident", "pump-2", 100.0),
                make_incident_id("incident", "pump-1", 101.0)}) == 4
    assert make_alert_id(inc, "open") != make_alert_id(inc, "close")
    a = Alert(kind="incident", action="open", incident_id=inc, site="", device_ids=("pump-1",), opened_at=100.0)
    assert a.alert_id == make_alert_id(inc, "open")


GOOD = json.loads(encode_alert(Alert(kind="incident", action="close", incident_id=make_incident_id("incident", "p", 1.0),
                                     site="plant-a", device_ids=("p",), opened_at=1.0, closed_at=5.0)))


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"schema": 2}, "schema"),
        ({"kind": "storm"}, "kind"),
        ({"action": "reopen"}, "action"),
        ({"incident_id": "XYZ"}, "incident_id"),
        ({"alert_id": "0" * 32}, "alert_id"),
        ({"closed_at": None}, "closed_at"),
        ({"closed_at": 0.5}, "closed_at"),
        ({"opened_at": "soon"}, "opened_at"),
        ({"device_ids": []}, "device_ids"),
        ({"device_ids": ["ok", "bad id!"]}, "device_ids[1]"),
        ({"device_ids": ["a", "a"]}, "device_ids"),
        ({"site": "bad site!"}, "site"),
        ({"event_count": -1}, "event_count"),
        ({"max_score": True}, "max_score"),
        ({"observed": "high"}, "observed"),
        ({"extra": 1}, "extra"),
    ],
)
def test_malformed_alert_names_the_field(patch: dict[str, object], field: str) -> None:
    doc = {**GOOD, **patch}
    with pytest.raises(ContractError) as err:
        decode_alert(json.dumps(doc))
    assert err.value.field == field


def test_missing_required_field_is_named() -> None:
    doc = {k: v for k, v in GOOD.items() if k != "device_ids"}
    with pytest.raises(ContractError) as err:
        decode_alert(json.dumps(doc))
    assert err.value.field == "device_ids"
