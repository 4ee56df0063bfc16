"""Arrow arrays built from Python values and numpy buffers, without `pa.array`.

`pa.array` (and every pyarrow constructor that calls it: `pa.table` of lists, `from_pylist`,
`empty_table`) imports pandas on its first call to ask whether the input is a pandas object:
0.25-0.28 CPU-s that an ingest has no other use for (measured; a Pulse or SRX benchmark ingest
is 2-7 CPU-s). The arrays an ingest hands to DuckDB (line numbers, the Postfix pending lines, the
already-seen message keys) are built here from their buffers instead; tests/test_source_arrow.py
checks they equal what `pa.array` gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_INT32_MAX = 2**31 - 1


def int64_range(first: int, count: int) -> pa.Array:
    """`count` consecutive int64 values from `first` (line numbers)."""
    return pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(np.arange(first, first + count, dtype=np.int64))])


def _validity(values: Sequence[object]) -> tuple[pa.Buffer | None, int]:
    valid = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    nulls = len(values) - int(valid.sum())
    return (pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None), nulls


def int64_array(values: Sequence[int | None]) -> pa.Array:
    """An int64 array of `values` (None: null)."""
    validity, nulls = _validity(values)
    data = np.fromiter((0 if v is None else v for v in values), dtype=np.int64, count=len(values))
    return pa.Array.from_buffers(pa.int64(), len(values), [validity, pa.py_buffer(data)], null_count=nulls)


def string_array(values: Sequence[str | None]) -> pa.Array:
    """A string array of `values` (None: null); large_string when the text passes 2 GiB."""
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    validity, nulls = _validity(values)
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    typ, offsets = (pa.string(), offsets.astype(np.int32)) if offsets[-1] <= _INT32_MAX else (pa.large_string(), offsets)
    return pa.Array.from_buffers(typ, len(encoded), [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                 null_count=nulls)
