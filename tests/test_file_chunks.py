"""A log file read in chunks (`events.files.iter_line_chunks`) gives every line once, in order,
with its number and the byte offset after it, whatever the chunk size: lines longer than a chunk,
a last line without its newline, CR LF endings, NUL bytes and bytes that are not UTF-8 (each
such line reaches its parser with U+FFFD in their place), plain and gzip files alike."""

from __future__ import annotations

import gzip
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from exfilwatch.events.files import iter_line_chunks

# Bytes that matter to the reader: newlines, CR, NUL, ASCII, the parts of multi-byte UTF-8
# sequences (so that valid, cut and stray ones all occur) and bytes never valid in UTF-8.
PIECES = st.sampled_from([b"\n", b"\r\n", b"\r", b"\x00", b"a", b"Z", b" ", b"a line of 17 bytes", b"\xc3\xa9", b"\xe2\x82\xac", b"\xc3", b"\xa9",
                          b"\xff", b"\xf0\x9f\x98\x80"])
CONTENT = st.lists(PIECES, max_size=80).map(b"".join)


def reference_lines(data: bytes) -> list[tuple[str, int]]:
    """Each line (newline kept) as the parser gets it, and the byte offset just after it."""
    lines, offset = [], 0
    for raw in _split_on_newline(data):
        offset += len(raw)
        lines.append((raw.replace(b"\x00", "\ufffd".encode()).decode("utf-8", errors="replace"), offset))
    return lines


def _split_on_newline(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    return lines + ([parts[-1]] if parts[-1] else [])


def chunked(handle: io.BufferedIOBase, chunk_bytes: int, start_offset: int = 0, start_line: int = 0
            ) -> list[tuple[int, str, int]]:
    """(line number, line, offset after the chunk's last line) for every line read."""
    read = []
    for chunk in iter_line_chunks(handle, start_offset, start_line, chunk_bytes):
        for index, line in enumerate(chunk.lines.to_pylist()):
            read.append((chunk.first_line + index, line, chunk.end_offset))
    return read


@settings(max_examples=300, deadline=None)
@given(data=CONTENT, chunk_bytes=st.integers(1, 40))
def test_chunks_give_every_line_once_with_its_number_whatever_the_chunk_size(data, chunk_bytes):
    read = chunked(io.BufferedReader(io.BytesIO(data)), chunk_bytes)
    expected = reference_lines(data)
    assert [line for _, line, _ in read] == [line for line, _ in expected]
    assert [number for number, _, _ in read] == list(range(1, len(expected) + 1))
    # a chunk ends after a whole line: its offset is the offset after one of the lines
    assert {offset for _, _, offset in read} <= {offset for _, offset in expected}
    if expected:
        assert read[-1][2] == len(data)


@settings(max_examples=100, deadline=None)
@given(data=CONTENT, chunk_bytes=st.integers(1, 40))
def test_gzip_content_is_read_as_the_plain_file_is(data, chunk_bytes):
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb") as out:
        out.write(data)
    packed.seek(0)
    with gzip.GzipFile(fileobj=packed, mode="rb") as handle:
        assert chunked(handle, chunk_bytes) == chunked(io.BufferedReader(io.BytesIO(data)), chunk_bytes)


def test_reading_resumes_at_a_checkpoint_with_the_next_line_number():
    data = b"first\nsecond\nthird"
    handle = io.BufferedReader(io.BytesIO(data))
    handle.seek(6)
    assert chunked(handle, 4, start_offset=6, start_line=1) == [(2, "second\n", 13), (3, "third", 18)]
