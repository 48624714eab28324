"""Reading JSON blocks: which lines pyarrow's refusals set aside, and what that costs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from headwater.columnar import jsonruns
from headwater.columnar.jsonruns import Refusal, parse_run, read_json


def _good(i: int) -> bytes:
    return b'{"id":"e%d","t":%d,"k":"x","amount":1.5}' % (i, i)


def _parse(
    lines: list[bytes], whole: tuple[str, ...] = (), odd_kinds: set | None = None
) -> tuple[list[int], list[int], int]:
    """``parse_run`` over ``lines``: (positions parsed, in order; positions set aside; calls)."""
    data = b"".join(line + b"\n" for line in lines)
    starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
    calls = 0

    def counted(view):
        nonlocal calls
        calls += 1
        return read_json(view)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jsonruns, "read_json", counted)
        tables, aside = parse_run(data, starts, whole, odd_kinds)
    parsed = []
    for positions, table in tables:
        assert table.num_rows == len(positions)
        assert table.column("id").to_pylist() == [f"e{p}" for p in positions]
        parsed.extend(positions.tolist())
    return sorted(parsed), aside, calls


def test_a_refused_piece_names_the_row_and_the_column_whose_kind_changed():
    """pyarrow's refusal names the odd row (0-based), the column and both kinds."""
    good = b'{"id":"a","t":1,"k":"x","amount":1.5}\n'
    odd = b'{"id":"b","t":2,"k":"x","amount":"12 EUR"}\n'
    assert read_json(good * 5 + odd + good * 3) == Refusal(5, "amount", "number", "string")
    assert read_json(good * 2 + b'{"id":"c",}\n') == Refusal(2)
    assert isinstance(read_json(good * 3), pa.Table)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_value_of_another_kind_sets_aside_only_its_line(where):
    """A string amount among numbers, first, in the middle or last: only its line is set aside."""
    lines = [_good(i) for i in range(300)]
    bad = {"start": 0, "middle": 150, "end": 299}[where]
    lines[bad] = b'{"id":"e%d","t":%d,"k":"x","amount":"12 EUR"}' % (bad, bad)
    parsed, aside, _ = _parse(lines)
    assert aside == [bad]
    assert parsed == [i for i in range(300) if i != bad]


def test_many_values_of_another_kind_cost_one_parse_per_column_not_one_per_line():
    """100 string amounts and 50 string times in 2,000 lines: three parses, all 150 set aside."""
    lines, odd = _with_odd_values(2_000)
    parsed, aside, calls = _parse(lines)
    assert aside == sorted(odd)
    assert len(parsed) == 2_000 - len(aside)
    assert calls == 3  # refused at the first odd amount, then the first odd time, then parsed


def _with_odd_values(count: int) -> tuple[list[bytes], set[int]]:
    """``count`` lines, one in 20 with a string amount and one in 40 with a string time."""
    lines = [_good(i) for i in range(count)]
    amounts, times = set(range(7, count, 20)), set(range(11, count, 40))
    for i in amounts:
        lines[i] = b'{"id":"e%d","t":%d,"k":"x","amount":"12 EUR"}' % (i, i)
    for i in times:
        lines[i] = b'{"id":"e%d","t":"yesterday","k":"x","amount":1}' % i
    return lines, amounts | times


def test_the_odd_kinds_a_run_found_are_set_aside_before_the_next_runs_first_parse():
    """The first run learns (amount, string) and (t, string); the next runs parse once and set
    aside exactly the lines the refusals would have."""
    lines, odd = _with_odd_values(2_000)
    learned: set = set()
    first = _parse(lines, odd_kinds=learned)
    assert learned == {("amount", "string"), ("t", "string")}
    assert first[2] == 3
    again = _parse(lines, odd_kinds=learned)
    assert again == (first[0], sorted(odd), 1)
    clean = [_good(i) for i in range(500)]  # known kinds that a run lacks cost no parse
    assert _parse(clean, odd_kinds=learned) == (list(range(500)), [], 1)


def test_a_known_odd_kind_held_by_most_lines_is_left_to_the_refusals():
    """When the kind learned as odd is most of a run (strings are this run's amounts), the
    pre-scan sets nothing aside and the refusal sets aside the few numbers instead."""
    lines = [b'{"id":"e%d","t":%d,"k":"x","amount":"%d"}' % (i, i, i) for i in range(300)]
    lines[5] = _good(5)
    parsed, aside, _ = _parse(lines, odd_kinds={("amount", "string")})
    assert aside == [5]
    assert parsed == [i for i in range(300) if i != 5]


def test_known_odd_kinds_too_many_together_are_still_set_aside_kind_by_kind():
    """Two learned odd kinds are found in one scan; when their lines together are most of the
    run, each kind is judged on its own: the few string times are set aside before the first
    parse, and the amounts (mostly strings here) are left to the one refusal."""
    lines = []
    for i in range(300):
        t = b'"t%d"' % i if i % 7 == 3 else b"%d" % i
        amount = b"%d" % i if i % 10 == 0 else b'"%d"' % i
        lines.append(b'{"id":"e%d","t":%s,"k":"x","amount":%s}' % (i, t, amount))
    known = {("amount", "string"), ("t", "string")}
    parsed, aside, calls = _parse(lines, odd_kinds=known)
    expected = sorted(i for i in range(300) if i % 7 == 3 or i % 10 == 0)
    assert aside == expected
    assert parsed == [i for i in range(300) if i not in set(expected)]
    assert calls == 2  # the refusal on the amounts, then the parse


def test_the_odd_kind_first_sets_aside_the_fewer_lines():
    """A piece whose first amount is a string sets that line aside, not the numbers after it."""
    lines = [b'{"id":"e0","t":0,"k":"x","amount":"12 EUR"}'] + [_good(i) for i in range(1, 500)]
    parsed, aside, calls = _parse(lines)
    assert aside == [0]
    assert parsed == list(range(1, 500))
    assert calls == 2


def test_every_kind_change_of_a_column_is_set_aside_by_line():
    """Strings, booleans, objects and arrays among numeric amounts: exactly those lines."""
    values = {40: b'"12"', 41: b"true", 90: b'{"v":1}', 91: b"[1]", 199: b"false"}
    lines = [_good(i) for i in range(200)]
    for i, value in values.items():
        lines[i] = b'{"id":"e%d","t":%d,"k":"x","amount":%s}' % (i, i, value)
    parsed, aside, _ = _parse(lines)
    assert aside == sorted(values)
    assert len(parsed) == 200 - len(values)


def test_a_syntax_error_inside_braces_sets_aside_its_line_only():
    """A line pyarrow cannot parse at all is cut out; the lines around it are still parsed."""
    lines = [_good(i) for i in range(600)]
    lines[123] = b'{"id":"e123","t":123,}'
    lines[456] = b'{"id":"e456" "t":456}'
    parsed, aside, calls = _parse(lines)
    assert aside == [123, 456]
    assert parsed == [i for i in range(600) if i not in (123, 456)]
    assert calls <= 5


def test_two_objects_on_one_line_set_aside_a_few_lines_around_it_not_the_piece():
    """More rows than lines (two objects on a line): bisected down to a small group of lines."""
    lines = [_good(i) for i in range(4_000)]
    lines[2_100] = _good(2_100) + _good(9_999)
    parsed, aside, _ = _parse(lines)
    assert 2_100 in aside
    assert len(aside) <= jsonruns.MIN_BISECT_LINES
    assert parsed == [i for i in range(4_000) if i not in aside]


def test_a_nested_column_changing_kind_still_parses_the_other_lines():
    """A type change in a nested member (no top-level name to scan for) cuts at its row."""
    lines = [_good(i)[:-1] + b',"m":{"n":%d}}' % i for i in range(300)]
    lines[77] = b'{"id":"e77","t":77,"k":"x","amount":1.5,"m":{"n":"x"}}'
    parsed, aside, _ = _parse(lines)
    assert aside == [77]
    assert len(parsed) == 299


def test_a_fraction_in_an_integer_column_sets_aside_its_line_not_the_piece():
    """One event time with a fraction among 500 ints: that line aside, the column stays int64."""
    lines = [_good(i) for i in range(500)]
    lines[250] = b'{"id":"e250","t":250.5,"k":"x","amount":1.5}'
    lines[251] = b'{"id":"e251","t":2.51e2,"k":"x","amount":1.5}'
    parsed, aside, calls = _parse(lines, whole=("t", "k"))
    assert aside == [250, 251]
    assert parsed == [i for i in range(500) if i not in (250, 251)]
    assert calls == 2
    data = b"".join(line + b"\n" for line in lines)
    starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
    tables, _ = parse_run(data, starts, ("t",))
    assert all(table.schema.field("t").type == pa.int64() for _, table in tables)


def test_floats_in_a_column_the_checks_take_as_floats_stay_in_the_piece():
    """Fractions in a column not named as integral (the amount) set nothing aside."""
    lines = [_good(i).replace(b"1.5", b"2") for i in range(100)]
    lines[50] = _good(50)
    parsed, aside, calls = _parse(lines, whole=("t", "k"))
    assert (aside, len(parsed), calls) == ([], 100, 1)


@pytest.mark.parametrize("column", ["amount", "a b", "a-b", "a.b", "a+b*", "x(1)", "a|b", "naïve"])
def test_kind_lines_finds_a_column_whatever_its_name_holds(column):
    """Names with regular-expression characters or UTF-8 match only their own lines."""
    import json

    rows = [{column: 1, "z": "q"}, {column: "s", "z": 1}, {"other": "s", "z": 2}]
    lines = [json.dumps(row, ensure_ascii=False).encode() for row in rows]
    data = b"".join(line + b"\n" for line in lines)
    starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
    assert jsonruns.kind_lines(data, starts, column, rb'"').tolist() == [1]
    assert jsonruns.kind_lines(data, starts, column, rb"[-0-9]").tolist() == [0]


@pytest.mark.parametrize("seed", range(4))
def test_invalid_utf8_lines_are_exactly_the_lines_that_do_not_decode(seed):
    """Random blocks of short lines (ASCII, valid and broken multi-byte sequences, lines of one
    byte inside an 8-byte word) and blocks with many valid non-ASCII lines: the lines found
    are the ones a line-by-line decode refuses."""
    import random

    from headwater.columnar.jsonruns import LineRanges, invalid_utf8_lines

    rng = random.Random(seed)
    parts = [b"a", b"{", b"}", b"\n", b"\xff", b"\xc3\xa9", b"\xe2\x82", b"\xac", b" ", b"\n\n"]
    blocks = [b"".join(rng.choice(parts) for _ in range(rng.randrange(60))) for _ in range(500)]
    many = [b'{"k":"caf\xc3\xa9"}'] * 600  # more non-ASCII lines than are decoded one by one
    blocks += [b"\n".join(many), b"\n".join([*many[:300], b"\xff", *many[300:]])]
    for block in blocks:
        block = block if block.endswith(b"\n") else block + b"\n"
        ranges = LineRanges(block)
        expected = []
        for line, (start, end) in enumerate(zip(ranges.starts, ranges.next_starts, strict=True)):
            try:
                block[start:end].decode("utf-8")
            except UnicodeDecodeError:
                expected.append(line)
        assert invalid_utf8_lines(block, ranges) == expected
