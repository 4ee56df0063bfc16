"""Arrow arrays and tables built from buffers (sources.arrow) are the ones `pa.array` and `pa.table` build."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest
from hypothesis import given, strategies as st

from exfilwatch.sources.arrow import (array_of, int64_array, int64_range, string_array, string_list_array, table_of,
                                      timestamp_array)

UTC_US = pa.timestamp("us", tz="UTC")
# Aware (in any zone) and naive (UTC, as for `pa.array`) times, far enough from year 1 and 9999
# that their UTC instant exists.
TIMES = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                     timezones=st.none() | st.just(timezone.utc) | st.timezones())
# Each type a pipeline table holds, with values of it and None.
VALUES = {
    pa.string(): st.none() | st.text(),
    pa.list_(pa.string()): st.none() | st.lists(st.none() | st.text(), max_size=4),
    pa.int8(): st.none() | st.integers(-(2**7), 2**7 - 1),
    pa.int32(): st.none() | st.integers(-(2**31), 2**31 - 1),
    pa.int64(): st.none() | st.integers(-(2**63), 2**63 - 1),
    pa.uint64(): st.none() | st.integers(0, 2**64 - 1),
    pa.float64(): st.none() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False),
    UTC_US: st.none() | TIMES,
}


@given(st.lists(st.none() | st.text()))
def test_string_array_is_pa_array(values: list[str | None]) -> None:
    built = string_array(values)
    assert built.to_pylist() == values
    assert built.equals(pa.array(values, pa.string()))


@given(st.lists(st.none() | st.integers(-(2**63), 2**63 - 1)))
def test_int64_array_is_pa_array(values: list[int | None]) -> None:
    built = int64_array(values)
    assert built.to_pylist() == values
    assert built.equals(pa.array(values, pa.int64()))


@given(st.integers(-(2**40), 2**40), st.integers(0, 3000))
def test_int64_range_counts_from_first(first: int, count: int) -> None:
    assert int64_range(first, count).equals(pa.array(range(first, first + count), pa.int64()))


@given(st.lists(VALUES[pa.list_(pa.string())]))
def test_string_list_array_is_pa_array(values: list[list[str | None] | None]) -> None:
    built = string_list_array(values)
    assert built.to_pylist() == values
    assert built.equals(pa.array(values, pa.list_(pa.string())))


@given(st.lists(VALUES[UTC_US]))
def test_timestamp_array_is_pa_array(values: list[datetime | None]) -> None:
    built = timestamp_array(values)
    assert built.equals(pa.array(values, UTC_US))
    # as UTC on both sides: == of aware times in different zones is False for a time in a gap or fold (PEP 495)
    in_utc = [None if v is None else (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
              for v in values]
    assert built.to_pylist() == in_utc


@given(st.sampled_from(list(VALUES)).flatmap(lambda typ: st.tuples(st.just(typ), st.lists(VALUES[typ]))))
def test_array_of_is_pa_array(typed: tuple[pa.DataType, list]) -> None:
    typ, values = typed
    built = array_of(values, typ)
    assert built.type == typ
    assert built.equals(pa.array(values, typ))


SCHEMA = pa.schema([(f"c{i}", typ) for i, typ in enumerate(VALUES)])


@st.composite
def columns(draw: st.DrawFn) -> dict[str, list]:
    rows = draw(st.integers(0, 8))
    return {field.name: draw(st.lists(VALUES[field.type], min_size=rows, max_size=rows)) for field in SCHEMA}


@given(columns())
def test_table_of_is_pa_table(data: dict[str, list]) -> None:
    built = table_of(data, SCHEMA)
    assert built.schema == SCHEMA
    assert built.equals(pa.table(data, schema=SCHEMA))


def test_a_type_without_a_builder_is_refused() -> None:
    with pytest.raises(TypeError, match="no Arrow builder for bool"):
        array_of([True], pa.bool_())
