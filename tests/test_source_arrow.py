"""Arrow arrays built from buffers (sources.arrow) are the arrays `pa.array` builds."""

from __future__ import annotations

import pyarrow as pa
from hypothesis import given, strategies as st

from exfilwatch.sources.arrow import int64_array, int64_range, string_array


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
