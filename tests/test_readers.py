import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from sprout.data.readers import BadRecord, Document, detect_format, read_documents, slimpajama_domain, split_text

SETS = ["RedPajamaC4", "RedPajamaGithub", "RedPajamaArXiv"]


def slimpajama_lines(n: int) -> list[bytes]:
    return [
        json.dumps({"text": f"document {i} " + "word " * (i % 7), "meta": {"redpajama_set_name": SETS[i % 3]}}).encode()
        for i in range(n)
    ]


def write_zst(path: Path, lines: list[bytes]) -> bytes:
    data = zstandard.ZstdCompressor(write_checksum=True).compress(b"\n".join(lines) + b"\n")  # as the zstd CLI writes
    path.write_bytes(data)
    return data


def slimpajama(path: Path) -> list:
    return list(read_documents(path, "jsonl", domain_field="meta.redpajama_set_name"))


def test_slimpajama_zst_streams_every_record_with_its_set(tmp_path):
    lines = slimpajama_lines(300)
    write_zst(tmp_path / "chunk_0.jsonl.zst", lines)
    docs = slimpajama(tmp_path / "chunk_0.jsonl.zst")
    assert all(isinstance(d, Document) for d in docs)
    assert [d.text for d in docs] == [json.loads(line)["text"] for line in lines]
    assert [d.line for d in docs] == list(range(1, 301))
    assert {d.domain for d in docs} == set(SETS)
    assert [slimpajama_domain(s) for s in SETS] == ["c4", "github", "arxiv"]
    assert slimpajama_domain("RedPajamaNewSet 2") == "newset_2"


def test_multi_frame_zst_is_read_to_the_end(tmp_path):
    lines = slimpajama_lines(40)
    c = zstandard.ZstdCompressor()
    (tmp_path / "two.jsonl.zst").write_bytes(
        c.compress(b"\n".join(lines[:20]) + b"\n") + c.compress(b"\n".join(lines[20:]) + b"\n")
    )
    assert len([d for d in slimpajama(tmp_path / "two.jsonl.zst") if isinstance(d, Document)]) == 40


def test_truncated_zst_reports_where_it_stops(tmp_path):
    # incompressible text so that cutting the file in half loses about half the lines
    lines = [
        json.dumps(
            {"text": bytes(range(i % 50, i % 50 + 200)).hex() + str(i), "meta": {"redpajama_set_name": "RedPajamaC4"}}
        ).encode()
        for i in range(2000)
    ]
    data = write_zst(tmp_path / "full.jsonl.zst", lines)
    (tmp_path / "cut.jsonl.zst").write_bytes(data[: len(data) // 2])
    out = slimpajama(tmp_path / "cut.jsonl.zst")
    *docs, bad = out
    assert all(isinstance(d, Document) for d in docs) and 0 < len(docs) < 2000
    assert [d.text for d in docs] == [
        json.loads(line)["text"] for line in lines[: len(docs)]
    ]  # no partial line slips through
    assert isinstance(bad, BadRecord) and "truncated" in bad.reason and bad.line == len(docs) + 1
    (tmp_path / "garbage.jsonl.zst").write_bytes(data[:100] + b"\xff" * 300 + data[400:])
    assert "corrupt" in slimpajama(tmp_path / "garbage.jsonl.zst")[-1].reason


def test_bad_json_lines_are_reported_with_line_numbers(tmp_path):
    rows = [
        '{"text": "fine", "meta": {"redpajama_set_name": "RedPajamaC4"}}',
        "{not json",
        '{"meta": {"redpajama_set_name": "RedPajamaBook"}}',
        '["a list"]',
        "",
        '{"text": "", "meta": {"redpajama_set_name": "RedPajamaC4"}}',
        '{"text": "no set"}',
        '{"text": "fine again", "meta": {"redpajama_set_name": "RedPajamaC4"}}',
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(rows) + "\n")
    out = slimpajama(tmp_path / "mixed.jsonl")
    assert [(type(o).__name__, o.line) for o in out] == [
        ("Document", 1),
        ("BadRecord", 2),
        ("BadRecord", 3),
        ("BadRecord", 4),
        ("BadRecord", 6),
        ("BadRecord", 7),
        ("Document", 8),
    ]
    assert "not valid JSON" in out[1].reason
    assert "'text'" in out[2].reason and out[2].domain == "RedPajamaBook"  # the set is still known
    assert "empty text" in out[4].reason and "redpajama_set_name" in out[5].reason
    assert out[1].describe().startswith(f"{tmp_path / 'mixed.jsonl'}, line 2")


def test_jsonl_text_fields_are_joined(tmp_path):
    (tmp_path / "gsm.jsonl").write_text(json.dumps({"question": "What is 2+2?", "answer": "4\n#### 4"}) + "\n")
    (doc,) = read_documents(tmp_path / "gsm.jsonl", "jsonl", text_fields=["question", "answer"])
    assert doc.text == "What is 2+2?\n4\n#### 4" and doc.domain is None


def test_empty_files_are_bad(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    (tmp_path / "e.txt").write_text("  \n")
    write_zst(tmp_path / "e.jsonl.zst", [])
    for name, fmt in [("e.jsonl", "jsonl"), ("e.txt", "text"), ("e.jsonl.zst", "jsonl")]:
        (bad,) = read_documents(tmp_path / name, fmt)
        assert isinstance(bad, BadRecord) and bad.line is None and "empty" in bad.reason


def test_parquet_is_read_in_batches_with_bad_rows_reported(tmp_path):
    contents = [f"def f{i}():\n    return {i}\n" for i in range(1300)]
    contents[700] = None
    pq.write_table(
        pa.table({"content": contents, "size": list(range(1300))}), tmp_path / "train.parquet", row_group_size=256
    )
    out = list(read_documents(tmp_path / "train.parquet", "parquet"))
    assert len(out) == 1300
    bad = out[700]
    assert isinstance(bad, BadRecord) and bad.line == 701 and "null" in bad.reason
    assert [d.text for d in out if isinstance(d, Document)] == [c for c in contents if c is not None]
    (missing,) = read_documents(tmp_path / "train.parquet", "parquet", text_fields=["text"])
    assert "no column 'text'" in missing.reason
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (broken,) = read_documents(tmp_path / "broken.parquet", "parquet")
    assert "not a readable parquet" in broken.reason


def test_text_files_and_splitting(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "Some words here. " * (i % 9 + 1) for i in range(200)]
    text = "\n\n".join(paragraphs) + "\n"
    pieces = split_text(text, 1000)
    assert "".join(pieces) == text and len(pieces) > 5
    assert all(len(p) <= 1000 for p in pieces)
    assert all(p.startswith("Paragraph") for p in pieces)  # cut at blank lines
    assert split_text("x" * 2500, 1000) == ["x" * 1000, "x" * 1000, "x" * 500]  # no break: hard cut
    assert split_text(text, None) == [text]
    (tmp_path / "book.txt").write_text(text)
    docs = list(read_documents(tmp_path / "book.txt", "text", max_doc_chars=1000))
    assert [d.text for d in docs] == pieces and [d.line for d in docs] == list(range(1, len(pieces) + 1))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (bad,) = read_documents(tmp_path / "latin1.txt", "text")
    assert "not UTF-8" in bad.reason


def test_detect_format():
    assert [detect_format(Path(n)) for n in ["a.jsonl.zst", "a.jsonl", "b.json", "c.parquet", "d.txt", "e.py"]] == [
        "jsonl",
        "jsonl",
        "jsonl",
        "parquet",
        "text",
        "text",
    ]


def test_unknown_format_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        list(read_documents(tmp_path / "x", "csv"))
