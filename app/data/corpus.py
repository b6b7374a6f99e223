"""The quick start's embedded corpus: two real domains built from the running Python install.

``code`` is the standard library's own ``.py`` sources; ``text`` is English prose from it:
the ``pydoc_data`` help topics, then module, class and function docstrings pulled out with
``ast`` (nothing is imported). No download and no shared folder is needed, and the same
Python install always gives the same bytes. Each domain is written as a few JSON-lines
shards (``{"text", "source"}``), so preparation can spread them over workers.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from sprout.data.prepare.sources import contiguous_runs
from sprout.data.tokenizer import Tokenizer
from sprout.files import write_json

CORPUS_VERSION = 1
DEFAULT_MAX_BYTES = 8 * 2**20  # per domain
DEFAULT_SHARDS = 8
MANIFEST = "manifest.json"
# Tests, installed packages and the help-topic data module (used as prose) are not stdlib code.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"}
_MIN_DOCSTRING_WORDS = 6  # shorter ones ("Return self.") are not prose


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """Every stdlib ``.py`` file outside test folders and site-packages, in a fixed order.

    The order is by a hash of the relative path, a deterministic shuffle, so that a size
    cap takes a sample from all packages rather than the alphabetically first ones.
    """
    root = stdlib_root()
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".")]
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(files, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())


def _read_source(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # a handful of stdlib files are not UTF-8; the corpus does without them


def code_documents(max_bytes: int) -> Iterator[tuple[str, str]]:
    """(relative path, source) of stdlib files until ``max_bytes`` of UTF-8 is reached."""
    root, total = stdlib_root(), 0
    for path in stdlib_files():
        source = _read_source(path)
        if not source or not source.strip():
            continue
        total += len(source.encode())
        if total > max_bytes:
            return
        yield path.relative_to(root).as_posix(), source


def docstrings(source: str) -> list[str]:
    """The module, class and function docstrings of one source file, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    found = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc.split()) >= _MIN_DOCSTRING_WORDS:
            found.append(doc)
    return found


def text_documents(max_bytes: int) -> Iterator[tuple[str, str]]:
    """(source label, prose): pydoc help topics first, then one document of docstrings per module."""
    from pydoc_data.topics import topics

    root, total = stdlib_root(), 0

    def capped(label: str, text: str):
        nonlocal total
        total += len(text.encode())
        return None if total > max_bytes else (label, text)

    for name in sorted(topics):
        if topics[name].strip():
            if (doc := capped(f"pydoc_data.topics:{name}", topics[name])) is None:
                return
            yield doc
    for path in stdlib_files():
        source = _read_source(path)
        found = docstrings(source) if source else []
        if found:
            if (doc := capped(path.relative_to(root).as_posix(), "\n\n".join(found))) is None:
                return
            yield doc


def _write_shards(folder: Path, name: str, docs: list[tuple[str, str]], shards: int) -> list[Path]:
    """Contiguous runs of documents with about equal bytes per shard, in document order."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = contiguous_runs([len(text) for _, text in docs], shards)
    paths = [folder / f"{name}-{i:02d}.jsonl" for i in range(max(groups, default=0) + 1)]
    outs = [open(p, "w", encoding="utf-8") for p in paths]
    try:
        for (label, text), group in zip(docs, groups):
            outs[group].write(json.dumps({"text": text, "source": label}, ensure_ascii=False) + "\n")
    finally:
        for f in outs:
            f.close()
    return paths


def build_default_corpus(
    out_dir: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES, shards: int = DEFAULT_SHARDS
) -> dict[str, list[Path]]:
    """Write ``code`` and ``text`` JSON-lines shards under ``out_dir``; returns ``{domain: [files]}``.

    A finished corpus (its ``manifest.json`` matching this Python and these settings) is
    reused as it is. Feed the files to ``prepare`` as ``Source(files, format="jsonl", domain=name)``.
    """
    out_dir = Path(out_dir).expanduser()
    settings = {
        "version": CORPUS_VERSION,
        "python": sys.version,
        "stdlib": str(stdlib_root()),
        "max_bytes": max_bytes,
        "shards": shards,
    }
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        files = {d: [out_dir / f for f in info["files"]] for d, info in manifest.get("domains", {}).items()}
        if manifest.get("settings") == settings and all(p.is_file() for paths in files.values() for p in paths):
            return files
    manifest_path.unlink(missing_ok=True)  # written last: present means complete
    built, domains = {}, {}
    for name, docs in (("code", code_documents(max_bytes)), ("text", text_documents(max_bytes))):
        docs = list(docs)
        for old in (out_dir / name).glob(f"{name}-*.jsonl"):
            old.unlink()
        built[name] = _write_shards(out_dir / name, name, docs, shards)
        domains[name] = {
            "files": [p.relative_to(out_dir).as_posix() for p in built[name]],
            "documents": len(docs),
            "chars": sum(len(t) for _, t in docs),
        }
    write_json(manifest_path, {"settings": settings, "domains": domains})
    return built


def corpus_texts(files: Iterable[str | os.PathLike], max_chars: int | None = None) -> Iterator[str]:
    """The ``text`` of every record of JSON-lines files, stopping after ``max_chars``."""
    total = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                yield text
                total += len(text)
                if max_chars is not None and total >= max_chars:
                    return


def train_default_tokenizer(
    corpus: dict[str, list[Path]],
    out_path: str | os.PathLike,
    vocab_size: int = 4096,
    max_chars_per_domain: int = 3_000_000,
) -> Tokenizer:
    """Train the quick start's byte-level BPE on an equal share of every domain of ``corpus``."""
    texts = (text for name in sorted(corpus) for text in corpus_texts(corpus[name], max_chars_per_domain))
    return Tokenizer.train_bpe(texts, vocab_size, out_path)
