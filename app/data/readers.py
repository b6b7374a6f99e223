"""Readers: input files in, documents out, one file at a time.

Three file formats cover SlimPajama (JSON lines, zstd-compressed or not), Starcoderdata
(parquet) and plain text. JSON lines and parquet are streamed (line by line, record batch
by record batch), never held whole in memory; a plain-text file is one document, so it is
read whole and then cut by ``max_doc_chars``.

A reader never raises on bad data: it yields a ``BadRecord`` saying where and why, and the
caller decides whether that stops the run or is counted and reported. A stream that cannot
go on (truncated ``.zst``, unreadable file) yields one ``BadRecord`` and ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READ_FORMATS = ("jsonl", "parquet", "text")

# SlimPajama's meta.redpajama_set_name -> domain folder name.
SLIMPAJAMA_DOMAINS = {
    "RedPajamaCommonCrawl": "commoncrawl",
    "RedPajamaC4": "c4",
    "RedPajamaGithub": "github",
    "RedPajamaBook": "book",
    "RedPajamaArXiv": "arxiv",
    "RedPajamaWikipedia": "wikipedia",
    "RedPajamaStackExchange": "stackexchange",
}
SLIMPAJAMA_DOMAIN_FIELD = "meta.redpajama_set_name"

_ZST_SUFFIXES = (".zst", ".zstd")
_READ_BYTES = 1 << 18  # compressed bytes per read; bounds memory even for very compressible data
_PARQUET_BATCH_ROWS = 512


@dataclass(frozen=True)
class Document:
    text: str
    line: int  # 1-based line (JSON lines), row (parquet) or piece (text): where it came from
    domain: str | None = None  # the record's own domain value, when the reader was asked for one


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int | None  # None: the whole file
    reason: str
    domain: str | None = None  # when the record still said which domain it belongs to

    def describe(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


def detect_format(path: Path) -> str:
    """The read format from the file name: ``.jsonl[.zst]`` / ``.json[.zst]``, ``.parquet``, else text."""
    name = path.name.lower()
    for suffix in _ZST_SUFFIXES:
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def slimpajama_domain(set_name: str) -> str:
    """Short lowercase domain for a RedPajama set name; unknown names are lowercased as they are."""
    if set_name in SLIMPAJAMA_DOMAINS:
        return SLIMPAJAMA_DOMAINS[set_name]
    return re.sub(r"[^a-z0-9]+", "_", set_name.lower().removeprefix("redpajama")).strip("_") or "unknown"


def read_documents(
    path: str | Path,
    fmt: str,
    *,
    text_fields: list[str] | None = None,
    domain_field: str | None = None,
    max_doc_chars: int | None = None,
) -> Iterator[Document | BadRecord]:
    """Documents (and bad records) of one file, in file order.

    ``text_fields`` are joined with a newline (GSM8K: ``question`` + ``answer``); the
    defaults are ``text`` for JSON lines and ``content`` for parquet. ``domain_field`` is a
    dotted path into each JSON record (SlimPajama: ``meta.redpajama_set_name``).
    ``max_doc_chars`` splits long text files at paragraph breaks (see ``split_text``).
    """
    path = Path(path)
    if fmt == "jsonl":
        yield from _jsonl_documents(path, text_fields or ["text"], domain_field)
    elif fmt == "parquet":
        yield from _parquet_documents(path, text_fields or ["content"])
    elif fmt == "text":
        yield from _text_documents(path, max_doc_chars)
    else:
        raise ValueError(f"unknown read format {fmt!r}; expected one of {READ_FORMATS}")


class _StreamError(Exception):
    """The byte stream of a file cannot be read to its end."""


def _zst_lines(path: Path) -> Iterator[bytes]:
    """Lines of a zstd file, streamed; raises ``_StreamError`` if it is corrupt or truncated.

    zstandard's ``stream_reader`` silently ends at a truncated frame, so this drives a
    decompression object by hand and checks that the last frame was complete.
    """
    import zstandard

    carry = b""
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    in_frame = False  # bytes of the current frame have been fed
    try:
        with open(path, "rb") as f:
            while raw := f.read(_READ_BYTES):
                while raw:
                    in_frame = True
                    out = frame.decompress(raw)
                    raw = b""
                    if frame.eof:  # a frame ended; what follows starts the next one
                        raw, frame, in_frame = frame.unused_data, decompressor.decompressobj(), False
                    if out:
                        lines = (carry + out).split(b"\n")
                        carry = lines.pop()
                        yield from lines
    except zstandard.ZstdError as err:
        raise _StreamError(f"corrupt zstd data ({err}); the rest of the file cannot be read") from None
    if in_frame:
        raise _StreamError("truncated zstd stream (the file ends inside a frame); the rest of the file is lost")
    if carry:
        yield carry


def _plain_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f


def _field(record: dict, dotted: str):
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _jsonl_documents(path: Path, text_fields: list[str], domain_field: str | None) -> Iterator[Document | BadRecord]:
    lines = _zst_lines(path) if path.name.lower().endswith(_ZST_SUFFIXES) else _plain_lines(path)
    file, lineno, records = str(path), 0, 0
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            break
        except (_StreamError, OSError) as err:
            yield BadRecord(file, lineno + 1, str(err))
            return
        lineno += 1
        if not raw.strip():
            continue  # a blank line holds no record
        records += 1
        try:
            record = json.loads(raw)
        except ValueError as err:  # includes invalid UTF-8
            yield BadRecord(file, lineno, f"not valid JSON ({err})")
            continue
        if not isinstance(record, dict):
            yield BadRecord(file, lineno, f"a JSON {type(record).__name__}, not an object")
            continue
        domain = None
        if domain_field is not None:
            domain = _field(record, domain_field)
            if not isinstance(domain, str) or not domain:
                yield BadRecord(file, lineno, f"no string field {domain_field!r} to take the domain from")
                continue
        parts = [record.get(name) for name in text_fields]
        wrong = next((name for name, part in zip(text_fields, parts) if not isinstance(part, str)), None)
        if wrong is not None:
            yield BadRecord(file, lineno, _not_text(record, wrong), domain)
            continue
        text = "\n".join(parts)
        if not text:
            yield BadRecord(file, lineno, "empty text", domain)
            continue
        yield Document(text, lineno, domain)
    if records == 0:
        yield BadRecord(file, None, "empty file: no JSON records")


def _not_text(record: dict, name: str) -> str:
    """Why ``record[name]`` is no text: absent, null, or another JSON type."""
    if name not in record:
        return f"no string field {name!r} (keys: {', '.join(sorted(record)) or 'none'})"
    value = record[name]
    if value is None:
        return f"field {name!r} is null, not a string"
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )
    return f"field {name!r} is {kind}, not a string"


def _parquet_documents(path: Path, columns: list[str]) -> Iterator[Document | BadRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        yield BadRecord(file, None, f"not a readable parquet file ({err})")
        return
    missing = [c for c in columns if c not in parquet.schema_arrow.names]
    if missing:
        yield BadRecord(file, None, f"no column {missing[0]!r} (columns: {', '.join(parquet.schema_arrow.names)})")
        return
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            for parts in zip(*(batch.column(c).to_pylist() for c in columns)):
                row += 1
                wrong = next((c for c, p in zip(columns, parts) if not isinstance(p, str)), None)
                if wrong is not None:
                    value = parts[columns.index(wrong)]
                    yield BadRecord(
                        file,
                        row,
                        f"column {wrong!r} is {'null' if value is None else type(value).__name__}, not a string",
                    )
                    continue
                text = "\n".join(parts)
                if not text:
                    yield BadRecord(file, row, "empty text")
                    continue
                yield Document(text, row)
    except (pa.ArrowException, OSError) as err:
        yield BadRecord(file, row + 1, f"corrupt parquet data ({err}); the rest of the file cannot be read")
        return
    if row == 0:
        yield BadRecord(file, None, "empty file: no rows")


def split_text(text: str, max_chars: int | None) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars``, preferring blank lines, then newlines.

    The pieces concatenate back to ``text`` exactly. A cut is only placed in the second
    half of a window so pieces do not get tiny; with no break there, the cut is hard.
    """
    if not max_chars or len(text) <= max_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > max_chars:
        end = start + max_chars
        lo = start + max_chars // 2
        cut = text.rfind("\n\n", lo, end)
        if cut >= 0:
            cut = _skip_newlines(text, cut, end)
        else:
            cut = text.rfind("\n", lo, end)
            cut = cut + 1 if cut >= 0 else end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _skip_newlines(text: str, i: int, limit: int) -> int:
    while i < limit and text[i] == "\n":
        i += 1
    return i


def _text_documents(path: Path, max_doc_chars: int | None) -> Iterator[Document | BadRecord]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        yield BadRecord(file, None, f"not UTF-8 text ({err})")
        return
    except OSError as err:
        yield BadRecord(file, None, f"cannot read ({err})")
        return
    if not text.strip():
        yield BadRecord(file, None, "empty file")
        return
    for i, piece in enumerate(split_text(text, max_doc_chars), 1):
        yield Document(piece, i)
