"""The processor's fast event decoder agrees with the contract: same event, or None (and the contract decides)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.processor.fastevent import FastEventDecoder
from edge.contract import AnomalyEvent, ContractError, decode_event, encode_event

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
DECODER = FastEventDecoder()


@st.composite
def events(draw: st.DrawFn) -> AnomalyEvent:
    start = draw(times)
    return AnomalyEvent(
        device_id=draw(names), agent_id=draw(names), window_start=start, window_end=start + draw(times), score=draw(finite),
        threshold=draw(finite), channel_scores=draw(st.dictionaries(names, finite, min_size=1, max_size=5)),
        model_name=draw(names), model_version=draw(names), model_sha256=draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
        detected_at=draw(times),
    )


def contract(payload: bytes) -> AnomalyEvent | None:
    try:
        return decode_event(payload)
    except ContractError:
        return None


@given(events())
def test_valid_events_take_the_fast_path_and_equal_the_contract(e: AnomalyEvent) -> None:
    payload = encode_event(e)
    assert DECODER.decode(payload) == decode_event(payload) == e


junk = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.just(10**400) | st.just(-1) | \
    st.just("bad name!") | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=4), st.floats(), max_size=2)


@settings(max_examples=200)
@given(events(), st.sampled_from(sorted(json.loads(encode_event(AnomalyEvent("d", "a", 0, 1, 1, 1, {"c": 1}, "m", "1", "a" * 64, 0))))),
       junk, st.booleans())
def test_mutated_events_never_pass_the_fast_path_unless_the_contract_agrees(e: AnomalyEvent, key: str, value: object,
                                                                            drop: bool) -> None:
    doc = json.loads(encode_event(e))
    if drop:
        del doc[key]
    else:
        doc[key] = value
    try:
        payload = json.dumps(doc).encode()
    except (ValueError, OverflowError):
        return
    fast = DECODER.decode(payload)
    if fast is not None:
        assert fast == contract(payload)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_by_the_fast_path(payload: bytes) -> None:
    assert DECODER.decode(payload) is None or DECODER.decode(payload) == contract(payload)


def test_large_finite_numbers_whose_sum_overflows_still_take_the_fast_path() -> None:
    e = AnomalyEvent("d", "a", 0.0, 1.0, 1.7e308, 1.7e308, {"c": 1.7e308, "e": -1.7e308}, "m", "1", "a" * 64, 0.0)
    payload = encode_event(e)
    assert DECODER.fields(payload) is not None and DECODER.decode(payload) == decode_event(payload) == e
    assert DECODER.decode(payload.replace(b"1.7e+308", b"1.7e+309", 1)) is None  # orjson refuses infinity: the contract decides
