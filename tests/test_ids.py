"""Tests for psi.ids: check characters, normalisation, masking, batch == scalar, CSV rejects."""

from __future__ import annotations

import csv
import random
import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

import psi.ids as ids
from psi.errors import InputError, Source
from psi.ids import (
    MISSING_CELL,
    Reason,
    age_on,
    birth_date,
    check_character,
    check_characters,
    mask,
    normalise,
    normalise_many,
    read_ids,
    sex,
    summary,
    write_rejects,
)

TODAY = date(2024, 6, 1)
CLASSIC = "11010519491231002X"  # the example of GB 11643-1999
REGIONS = ("110105", "150802", "152801", "440304", "510107", "650102", "820101")


def reference_check(body17: str) -> str:
    """Independent oracle: the textbook formula (12 - S mod 11) mod 11, with 10 written X."""
    total = sum(int(d) * 2 ** (17 - i) for i, d in enumerate(body17))
    value = (12 - total % 11) % 11
    return "X" if value == 10 else str(value)


def make_id(rng: random.Random, *, born: date | None = None, region: str | None = None) -> str:
    """A random well-formed 18-character number born in 1930-2023."""
    born = born or date(1930, 1, 1) + timedelta(days=rng.randrange(34000))
    body = f"{region or rng.choice(REGIONS)}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return body + reference_check(body)


def windows(text: str, size: int = 7) -> set[str]:
    """Every run of ``size`` consecutive characters: showing any of them would leak too much."""
    return {text[i : i + size] for i in range(len(text) - size + 1)}


def assert_no_leak(message: str, canonical: str) -> None:
    leaked = [w for w in windows(canonical) if w in message]
    assert not leaked, f"{leaked} of the number appear in: {message}"


def reason_of(raw: str, today: date = TODAY) -> str:
    with pytest.raises(InputError) as caught:
        normalise(raw, today=today)
    return str(caught.value)


# --- check characters ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", [CLASSIC, "440524188001010014", "150802200402290019"])
def test_check_character_of_known_numbers(number: str) -> None:
    assert check_character(number[:17]) == number[17]
    assert normalise(number, today=TODAY) == number


def test_check_character_matches_reference_formula() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        body = "".join(rng.choice("0123456789") for _ in range(17))
        assert check_character(body) == reference_check(body)


@pytest.mark.parametrize(
    "body", ["1101051949123100", "1101051949123100X", "１１０１０５１９４９１２３１００２"]
)
def test_check_character_rejects_non_digits(body: str) -> None:
    with pytest.raises(InputError, match="not 17 ASCII digits"):
        check_character(body)


def test_vectorised_check_characters_match_the_scalar_ones() -> None:
    rng = random.Random(8)
    bodies = ["".join(rng.choice("0123456789") for _ in range(17)) for _ in range(500)]
    got = check_characters(np.array(bodies, dtype="S17"))
    assert got.dtype == np.dtype("S1")
    assert [c.decode() for c in got.tolist()] == [check_character(b) for b in bodies]
    with pytest.raises(TypeError):
        check_characters(np.array(bodies, dtype="S18"))
    with pytest.raises(ValueError, match="17 ASCII digits"):
        check_characters(np.array([b"1101051949123100X"]))


# --- normalisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "11010519491231002x",
        "１１０１０５１９４９１２３１００２Ｘ",
        "１１０１０５１９４９１２３１００２ｘ",
        " 110105 19491231 002X ",
        "110105-19491231-002-X",
        "110105\u300019491231\u3000002x",
        "\ufeff11010519491231002X\t",
        "110105491231002",  # legacy 15-digit form
        "110105 491231 002",
        "１１０１０５４９１２３１００２",
    ],
)
def test_spelling_variants_normalise_to_the_canonical_form(raw: str) -> None:
    assert normalise(raw, today=TODAY) == CLASSIC


def test_legacy_numbers_get_19_and_a_check_character() -> None:
    assert normalise("440524800101001", today=TODAY) == "440524198001010013"
    assert check_character("44052419800101001") == "3"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", Reason.BLANK),
        (" \u3000- ", Reason.BLANK),
        ("11010519491231002Y", Reason.BAD_CHARACTERS),
        ("1101051949123100X2", Reason.BAD_CHARACTERS),  # X only as the check character
        ("11010549123100X", Reason.BAD_CHARACTERS),  # legacy numbers have no check character
        ("110105194912310O2X", Reason.BAD_CHARACTERS),  # letter O for zero
        ("①①0105194912310 02X", Reason.BAD_CHARACTERS),
        ("1101051949123100", Reason.BAD_LENGTH),
        ("1101051949123100X", Reason.BAD_LENGTH),
        ("110105194912310020", Reason.BAD_CHECK),
        ("110105194912310020" + "0", Reason.BAD_LENGTH),
        ("99010519491231002" + check_character("99010519491231002"), Reason.BAD_REGION),
        ("10010519491231002" + check_character("10010519491231002"), Reason.BAD_REGION),
        ("11000019491231002" + check_character("11000019491231002"), Reason.BAD_REGION),
        ("990105491231002", Reason.BAD_REGION),
        ("11010519490230002" + check_character("11010519490230002"), Reason.BAD_DATE),
        ("11010519491301002" + check_character("11010519491301002"), Reason.BAD_DATE),
        ("11010519490100002" + check_character("11010519490100002"), Reason.BAD_DATE),
        ("11010519000229002" + check_character("11010519000229002"), Reason.BAD_DATE),
        ("11010500000101002" + check_character("11010500000101002"), Reason.BAD_DATE),
        ("110105490229002", Reason.BAD_DATE),
        ("11010520240602002" + check_character("11010520240602002"), Reason.FUTURE_DATE),
    ],
)
def test_each_error_kind(raw: str, reason: Reason) -> None:
    message = reason_of(raw)
    assert reason.message in message
    assert normalise_many([raw], today=TODAY).reasons[0] == reason


def test_leap_days_and_today_are_accepted() -> None:
    leap = "11010520000229002" + check_character("11010520000229002")
    assert normalise(leap, today=TODAY) == leap
    born_today = "11010520240601002" + check_character("11010520240601002")
    assert normalise(born_today, today=TODAY) == born_today


def test_error_names_its_source() -> None:
    with pytest.raises(InputError) as caught:
        normalise("110105194912310020", source=Source("parents.csv", 12, "sfzh"))
    assert str(caught.value).startswith("parents.csv:12 (column sfzh): identity number")
    assert caught.value.source == Source("parents.csv", 12, "sfzh")


# --- masking ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("150802200402291234", "150802********1234"),
        ("15080220040229123x", "150802********123X"),
        ("１５０８０２ ２００４０２２９ １２３Ｘ", "150802********123X"),
        ("150802040229123", "15080*******123"),
        ("1234", "1**4"),
        ("12", "**"),
        ("", ""),
        ("\x1b[31m0123456789", "?[31m*******789"),
    ],
)
def test_mask_examples(raw: str, masked: str) -> None:
    assert mask(raw) == masked


def test_mask_of_long_garbage_is_short() -> None:
    assert mask("7" * 100_000) == "777777" + "*" * 12 + "7777"


def test_mask_never_shows_more_than_ten_characters() -> None:
    rng = random.Random(11)
    alphabet = "0123456789Xx -\u3000０１２３４５６７８９abc张三"
    for length in range(60):
        for _ in range(20):
            raw = "".join(rng.choice(alphabet) for _ in range(length))
            shown = mask(raw).replace("*", "")
            assert len(shown) <= min(10, len(raw))


def test_no_message_ever_carries_an_unmasked_number() -> None:
    """Property test over random numbers: every error path shows at most a masked number."""
    rng = random.Random(2024)
    for _ in range(150):
        number = make_id(rng)
        body = number[:17]
        wrong_check = body + rng.choice([c for c in "0123456789X" if c != number[17]])
        bad_date = number[:10] + "13" + number[12:17]
        variants = [
            wrong_check,
            wrong_check.lower().replace("", " ").strip(),
            "".join(chr(ord(c) + 0xFEE0) for c in wrong_check),
            bad_date + check_character(bad_date),
            number[:6] + "2999" + number[10:17] + number[17],
            number + "7",
            number[:17],
            "00" + number[2:],
            f"id {number}",
        ]
        for raw in variants:
            assert_no_leak(reason_of(raw), number)
        with pytest.raises(InputError) as caught:
            age_on(number, birth_date(number) - timedelta(days=1))
        assert_no_leak(str(caught.value), number)
        with pytest.raises(InputError) as caught:
            check_character(number)
        assert_no_leak(str(caught.value), number)


# --- birth date, sex, age -----------------------------------------------------------------------


def test_birth_date_and_sex() -> None:
    assert birth_date(CLASSIC) == date(1949, 12, 31)
    assert sex(CLASSIC) == "F"  # sequence 002 is even
    assert sex("440524188001010014") == "M"  # sequence 001 is odd
    assert birth_date("110105491231002") == date(1949, 12, 31)
    with pytest.raises(InputError, match="wrong check character"):
        sex("110105194912310020")


def test_age_on_counts_completed_years() -> None:
    assert age_on(CLASSIC, date(1950, 12, 30)) == 0
    assert age_on(CLASSIC, date(1950, 12, 31)) == 1
    assert age_on(CLASSIC, date(1949, 12, 31)) == 0
    with pytest.raises(InputError, match="born after 1949-12-30"):
        age_on(CLASSIC, date(1949, 12, 30))


def test_born_on_29_february_ages_on_1_march_in_common_years() -> None:
    leapling = "150802200402290019"
    assert age_on(leapling, date(2005, 2, 28)) == 0
    assert age_on(leapling, date(2005, 3, 1)) == 1
    assert age_on(leapling, date(2008, 2, 28)) == 3
    assert age_on(leapling, date(2008, 2, 29)) == 4
    assert age_on(leapling, date(2022, 2, 28)) == 17
    assert age_on(leapling, date(2022, 3, 1)) == 18


# --- batch path ---------------------------------------------------------------------------------


def mixed_corpus(rng: random.Random, size: int) -> list[str]:
    """Clean, messy, legacy, bad, blank and over-long values in random order."""
    values = []
    for _ in range(size):
        number = make_id(rng, born=date(1930, 1, 1) + timedelta(days=rng.randrange(25000)))
        kind = rng.randrange(14)
        if kind == 0:
            number = number.lower()
        elif kind == 1:
            number = " ".join([number[:6], number[6:14], number[14:]])
        elif kind == 2:
            number = number[:6] + number[8:17]  # legacy
        elif kind == 3:
            number = "".join(chr(ord(c) + 0xFEE0) for c in number)
        elif kind == 4:
            number = number[:17] + ("0" if number[17] != "0" else "1")
        elif kind == 5:
            number = number[: rng.randrange(18)]
        elif kind == 6:
            number = "".join(rng.choice("0123456789X -x") for _ in range(rng.randrange(30)))
        elif kind == 7:
            number = "  " + "  ".join(number) + "  "  # longer than the block width, yet valid
        elif kind == 8:
            number = ""
        elif kind == 9:  # any region code
            body = f"{rng.randrange(10**6):06d}{number[6:17]}"
            number = body + check_character(body)
        elif kind == 10:  # any year 1900-2099, month 1-13, day 1-32
            date_text = (
                f"{rng.randrange(1900, 2100)}{rng.randrange(1, 14):02d}{rng.randrange(1, 33):02d}"
            )
            body = number[:6] + date_text + number[14:17]
            number = body + check_character(body)
        values.append(number)
    return values


def scalar_result(raw: str) -> tuple[bytes, str]:
    try:
        return normalise(raw, today=TODAY).encode(), "valid"
    except InputError as exc:
        return b"", str(exc)


def test_batch_equals_scalar_on_a_mixed_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_CHUNK_ROWS", 97)  # exercise chunk boundaries
    values = mixed_corpus(random.Random(5), 2000)
    batch = normalise_many(values, today=TODAY)
    assert batch.ids.dtype == np.dtype("S18")
    assert len(set(batch.reasons.tolist())) == len(Reason)  # every outcome occurs
    for i, raw in enumerate(values):
        expected_id, expected_reason = scalar_result(raw)
        assert batch.ids[i] == expected_id, raw
        assert batch.valid[i] == (expected_reason == "valid")
        assert batch.describe(batch.reasons[i]) in expected_reason


def test_batch_accepts_numpy_arrays() -> None:
    values = mixed_corpus(random.Random(6), 500)
    expected = normalise_many(values, today=TODAY)
    for array in (np.array(values), np.array(values, dtype=object)):
        got = normalise_many(array, today=TODAY)
        assert np.array_equal(got.ids, expected.ids)
        assert np.array_equal(got.reasons, expected.reasons)
    short = [v for v in values if len(v) < 24]
    strided = np.repeat(np.array(short, dtype="U24"), 2)[::2]  # a non-contiguous view
    assert np.array_equal(
        normalise_many(strided, today=TODAY).ids, normalise_many(short, today=TODAY).ids
    )
    assert len(normalise_many([], today=TODAY).ids) == 0
    with pytest.raises(ValueError, match="1-D"):
        normalise_many(CLASSIC)


def test_batch_is_frozen() -> None:
    batch = normalise_many([CLASSIC])
    with pytest.raises(AttributeError):
        batch.ids = batch.ids  # type: ignore[misc]


# --- CSV files ----------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[str]], *, bom: bool = False) -> None:
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)


@pytest.mark.parametrize("bom", [False, True])
def test_csv_with_ten_percent_bad_rows_loses_nothing(tmp_path: Path, bom: bool) -> None:
    rng = random.Random(3)
    path = tmp_path / "children.csv"
    rows = [["name", "sfzh", "note"]]
    good: dict[int, str] = {}  # line -> canonical id
    bad: dict[int, str] = {}  # line -> raw cell
    blank: set[int] = set()
    line = 2
    for i in range(2000):
        number = make_id(rng)
        # Quoted fields spanning lines, with every kind of line break.
        note, breaks = [("", 0), ("moved\nhouse", 1), ("moved\r\nhouse", 1), ("a\rb\nc", 2)][
            (i // 97) % 3 + 1 if i % 97 == 0 else 0
        ]
        if i % 10 == 3:
            raw = number[:17] + ("1" if number[17] != "1" else "2")
            bad[line] = raw
        elif i % 20 == 7:
            raw = number[:6] + number[8:10] + "13" + number[12:17]  # legacy, month 13
            bad[line] = raw
        elif i % 50 == 11:
            raw = "  "
            blank.add(line)
        else:
            raw = number.lower() if i % 3 else number
            good[line] = number
        rows.append([f"child {i}", raw, note])
        line += 1 + breaks
    write_csv(path, rows, bom=bom)

    column = read_ids(path, "sfzh", today=TODAY)
    assert len(column.lines) == 2000
    assert {ln: v for ln, v in column.rows() if v is not None} == good
    assert {r.line for r in column.rejects} == set(bad)
    assert set(column.lines[column.blank].tolist()) == blank
    assert all(r.file == str(path) and r.column == "sfzh" for r in column.rejects)
    assert int(column.valid.sum()) + int(column.blank.sum()) + len(column.rejects) == 2000

    text = summary(column)
    assert f"2000 data rows, {len(good)} valid, {len(blank)} blank, {len(bad)} rejected" in text
    assert "wrong check character: " in text

    out = tmp_path / "rejects.csv"
    write_rejects(out, column.rejects)
    content = out.read_text(encoding="utf-8")
    with open(out, encoding="utf-8", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == ["file", "line", "column", "masked_value", "reason"]
    assert [int(r["line"]) for r in written] == sorted(bad)
    for raw in bad.values():
        assert_no_leak(content, raw)
        assert_no_leak(text, raw)


def test_csv_blank_lines_short_rows_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "parents.csv"
    path.write_text(
        f"id,name\n{CLASSIC},a\n\n,b\nonly-one-field-row\n440524188001010014\n",
        encoding="utf-8",
    )
    column = read_ids(path, "id", today=TODAY)
    assert list(column.rows()) == [
        (2, CLASSIC),
        (3, None),
        (4, None),
        (5, None),
        (6, "440524188001010014"),
    ]
    assert column.blank.tolist() == [False, True, True, False, False]
    assert [(r.line, r.reason) for r in column.rejects] == [(5, Reason.BAD_CHARACTERS.message)]


def test_csv_row_too_short_for_the_column(tmp_path: Path) -> None:
    path = tmp_path / "parents.csv"
    path.write_text(f"name,id\na,{CLASSIC}\nb\n", encoding="utf-8")
    column = read_ids(path, "id", today=TODAY)
    assert [(r.line, r.reason) for r in column.rejects] == [(3, MISSING_CELL)]
    assert column.blank.tolist() == [False, False]


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "nope.csv"))):
        read_ids(tmp_path / "nope.csv", "id")


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "parents.csv"
    path.write_text(f"name, 身份证号 \na,{CLASSIC}\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"no column 'sfzh'; the columns are: 'name', '身份证号'"):
        read_ids(path, "sfzh")
    assert read_ids(path, "身份证号").ids.tolist() == [CLASSIC.encode()]


def test_headerless_file_does_not_echo_a_number(tmp_path: Path) -> None:
    path = tmp_path / "parents.csv"
    path.write_text(f"{CLASSIC},a\n440524188001010014,b\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        read_ids(path, "id")
    assert "does the file have a header row?" in str(caught.value)
    assert_no_leak(str(caught.value), CLASSIC)


def test_unreadable_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="empty"):
        read_ids(empty, "id")
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes(f"姓名,id\n张三,{CLASSIC}\n".encode("gbk"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_ids(gbk, "id")
    twice = tmp_path / "twice.csv"
    twice.write_text("id,id\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError, match="appears 2 times"):
        read_ids(twice, "id")
    with pytest.raises(InputError, match="cannot write"):
        write_rejects(tmp_path / "no-such-dir" / "rejects.csv", [])


def test_summary_of_a_clean_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text(f"id\n{CLASSIC}\n", encoding="utf-8")
    expected = f"{path}, column 'id': 1 data rows, 1 valid, 0 blank, 0 rejected."
    assert summary(read_ids(path, "id")) == expected
