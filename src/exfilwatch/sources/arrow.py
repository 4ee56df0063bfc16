"""Arrow arrays and tables built from Python values and numpy buffers, without `pa.array`.

`pa.array` (and every pyarrow constructor that calls it: `pa.table` of lists, `from_pylist`,
`empty_table`, even `pa.array` of a numpy array) imports pandas on its first call to ask whether
the input is a pandas object: 0.25-0.28 CPU-s that neither an ingest nor a `run` has any other
use for (measured; a Pulse or SRX benchmark ingest is 2-7 CPU-s; 0.19-0.25 CPU-s on 2026-12-04 in
a process that had imported the pipeline). Every table the pipeline hands to DuckDB from Python
values is built here instead: the ingest's line numbers, Postfix pending lines and already-seen
message keys; a run's asset inventory and lake addresses, identity and domain maps, departments
and risk events (`table_of`). Building them all costs a 1000-user x 30-day first run 0.02 CPU-s.
Arrow rather than SQL: for the 10,351-row identity map, Arrow and CREATE TABLE AS took 12 ms,
one `VALUES` statement 719 ms and `executemany` 2.4 s (26 rows: 3.6, 3.0 and 6.8 ms).
tests/test_source_arrow.py checks each builder against what `pa.array` and `pa.table` give, and
tests/test_run_imports.py that a run leaves pandas unimported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from exfilwatch.timeexpr import epoch_us

_INT32_MAX = 2**31 - 1

# The fixed-width types a table may hold, with the numpy type of their data buffer.
_FIXED_WIDTH = {pa.int8(): np.int8, pa.int32(): np.int32, pa.int64(): np.int64, pa.uint64(): np.uint64,
                pa.float64(): np.float64}


def int64_range(first: int, count: int) -> pa.Array:
    """`count` consecutive int64 values from `first` (line numbers)."""
    return pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(np.arange(first, first + count, dtype=np.int64))])


def _validity(values: Sequence[object]) -> tuple[pa.Buffer | None, int]:
    valid = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    nulls = len(values) - int(valid.sum())
    return (pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None), nulls


def _fixed_width(values: Sequence[object], typ: pa.DataType) -> pa.Array:
    validity, nulls = _validity(values)
    data = np.fromiter((0 if v is None else v for v in values), dtype=_FIXED_WIDTH[typ], count=len(values))
    return pa.Array.from_buffers(typ, len(values), [validity, pa.py_buffer(data)], null_count=nulls)


def int64_array(values: Sequence[int | None]) -> pa.Array:
    """An int64 array of `values` (None: null)."""
    return _fixed_width(values, pa.int64())


def timestamp_array(values: Sequence[datetime | None]) -> pa.Array:
    """A timestamp[us, tz=UTC] array of `values` (None: null; a naive datetime is UTC, as for `pa.array`)."""
    validity, nulls = _validity(values)
    data = np.fromiter((0 if v is None else epoch_us(v if v.tzinfo else v.replace(tzinfo=timezone.utc))
                        for v in values), dtype=np.int64, count=len(values))
    return pa.Array.from_buffers(pa.timestamp("us", tz="UTC"), len(values), [validity, pa.py_buffer(data)],
                                 null_count=nulls)


def string_array(values: Sequence[str | None]) -> pa.Array:
    """A string array of `values` (None: null); large_string when the text passes 2 GiB."""
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    validity, nulls = _validity(values)
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    typ, offsets = (pa.string(), offsets.astype(np.int32)) if offsets[-1] <= _INT32_MAX else (pa.large_string(), offsets)
    return pa.Array.from_buffers(typ, len(encoded), [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                 null_count=nulls)


def string_list_array(values: Sequence[Sequence[str | None] | None]) -> pa.Array:
    """A list<string> array of `values` (None: a null list; a None inside a list: a null item)."""
    validity, nulls = _validity(values)
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int32, count=len(values)),
              out=offsets[1:])
    items = string_array([item for v in values if v is not None for item in v])
    return pa.Array.from_buffers(pa.list_(pa.string()), len(values), [validity, pa.py_buffer(offsets)],
                                 null_count=nulls, children=[items])


def array_of(values: Sequence[object], typ: pa.DataType) -> pa.Array:
    """`pa.array(values, typ)` for the types the pipeline's tables hold: string, list<string>,
    int8/int32/int64/uint64, float64 and timestamp[us, tz=UTC]."""
    if typ == pa.string():
        return string_array(values)  # type: ignore[arg-type]
    if typ == pa.list_(pa.string()):
        return string_list_array(values)  # type: ignore[arg-type]
    if typ == pa.timestamp("us", tz="UTC"):
        return timestamp_array(values)  # type: ignore[arg-type]
    if typ in _FIXED_WIDTH:
        return _fixed_width(values, typ)
    raise TypeError(f"no Arrow builder for {typ}")


def table_of(columns: Mapping[str, Sequence[object]], schema: pa.Schema) -> pa.Table:
    """`pa.table(columns, schema=schema)`: one array per field of `schema` from the column of that name."""
    return pa.Table.from_arrays([array_of(columns[field.name], field.type) for field in schema], schema=schema)
