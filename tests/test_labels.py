import hashlib
import hmac
import os
import struct
from datetime import date, datetime

import pytest

from psi.errors import InputError
from psi.labels import (
    DISABILITY_KIND_CODES,
    FIELDS,
    STATUS_CODES,
    Record,
    decode_label,
    encode_label,
    record_handle,
    resolve_handles,
)

HANDLE = bytes(range(16))


def full_records() -> list[Record]:
    return [
        Record("imprisoned", date(2021, 3, 1), date(2027, 2, 28), handle=HANDLE),
        Record("severe_disability", date(2015, 6, 9), None, 2, "intellectual", os.urandom(16)),
        Record("deceased", handle=os.urandom(16)),
    ]


def test_round_trip_all_fields():
    records = full_records()
    label = decode_label(encode_label(records))
    assert label.fields == FIELDS
    assert sorted(label.records, key=repr) == sorted(records, key=repr)


def test_encoding_is_deterministic_and_order_free():
    records = full_records()
    assert encode_label(records) == encode_label(list(reversed(records)))


def test_golden_encoding_pins_the_stable_codes():
    # format 1, no optional fields, 1 record, status "deceased" = 1
    assert encode_label([Record("deceased")], {"status"}) == bytes([1, 0, 1, 0, 1])
    assert STATUS_CODES["deported"] == 10 and DISABILITY_KIND_CODES["multiple"] == 7
    start = (date(2020, 1, 2) - date(1970, 1, 1)).days
    assert encode_label([Record("imprisoned", date(2020, 1, 2))], {"start"}) == bytes(
        [1, 0b1, 1, 0, 5]
    ) + struct.pack("<i", start)


def test_field_filtering_removes_ungranted_fields():
    records = full_records()
    data = encode_label(records, {"status", "start", "end"})
    label = decode_label(data)
    assert label.fields == {"status", "start", "end"}
    for record in label.records:
        assert record.disability_grade is None and record.disability_kind is None
        assert record.handle is None
    assert HANDLE not in data
    assert len(data) == 4 + 3 * 9
    imprisoned = next(r for r in label.records if r.status == "imprisoned")
    assert (imprisoned.start, imprisoned.end) == (date(2021, 3, 1), date(2027, 2, 28))


def test_status_is_always_present():
    label = decode_label(encode_label(full_records(), set()))
    assert label.fields == {"status"}
    assert {r.status for r in label.records} == {"imprisoned", "severe_disability", "deceased"}


def test_missing_dates_and_extreme_dates_round_trip():
    records = [Record("lost_contact", date(1, 1, 1), date(9999, 12, 31), handle=HANDLE)]
    assert decode_label(encode_label(records)).records == tuple(records)
    undated = [Record("lost_contact", None, None, handle=HANDLE)]
    assert decode_label(encode_label(undated)).records == tuple(undated)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "jailed"},
        {"status": "imprisoned", "start": date(2022, 1, 1), "end": date(2021, 1, 1)},
        {"status": "imprisoned", "start": datetime(2022, 1, 1)},
        {"status": "severe_disability", "disability_grade": 5},
        {"status": "severe_disability", "disability_kind": "psychic"},
        {"status": "deceased", "handle": b"short"},
    ],
)
def test_invalid_records_are_input_errors(kwargs):
    with pytest.raises(InputError):
        Record(**kwargs)


def test_unknown_status_message_never_echoes_an_identifier():
    with pytest.raises(InputError) as error:
        Record("11010519491231002X")
    assert "1101" not in str(error.value)
    assert "deceased" in str(error.value)
    with pytest.raises(InputError, match="'jailed'"):
        Record("jailed")


def test_unknown_field_and_missing_handle_and_empty_label():
    with pytest.raises(InputError, match="unknown label field"):
        encode_label(full_records(), {"status", "address"})
    with pytest.raises(InputError, match="no handle"):
        encode_label([Record("deceased")])
    assert (
        decode_label(encode_label([Record("deceased")], {"status", "end"})).records[0].end is None
    )
    with pytest.raises(InputError, match="at least one record"):
        encode_label([])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes([2, 0, 1, 0, 1]),  # unknown format
        bytes([1, 0x20, 1, 0, 1]),  # unknown field bit
        bytes([1, 0, 2, 0, 1]),  # says two records, holds one
        bytes([1, 0, 1, 0, 1, 1]),  # trailing byte
        bytes([1, 0, 1, 0, 99]),  # unknown status code
        bytes([1, 0b100, 1, 0, 3, 9]),  # disability grade 9
        bytes([1, 0, 0, 0]),  # no records
    ],
)
def test_malformed_labels_are_rejected(data):
    with pytest.raises(InputError):
        decode_label(data)


def test_handles_are_truncated_hmac_and_resolve_back():
    key = os.urandom(32)
    handle = record_handle(key, "prison-2021-000123")
    expected = hmac.new(key, b"prison-2021-000123", hashlib.sha256).digest()[:16]
    assert handle == expected
    refs = [f"prison-2021-{i:06d}" for i in range(1000)]
    resolved = resolve_handles(key, refs)
    assert resolved[handle] == "prison-2021-000123"
    assert len(resolved) == 1000
    assert record_handle(os.urandom(32), "prison-2021-000123") != handle
