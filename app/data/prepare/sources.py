"""Which files feed which domain: a preparation's ``Source`` list resolved into files, and the
files grouped into tasks of about equal size."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sprout.data.readers import detect_format
from sprout.errors import SproutError

SOURCE_FORMATS = ("auto", "slimpajama", "starcoder", "jsonl", "parquet", "text")
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_AUTO_DIR_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.zstd", ".parquet", ".txt")
_DIR_SUFFIXES = {
    "slimpajama": (".jsonl", ".jsonl.zst", ".jsonl.zstd"),
    "jsonl": (".jsonl", ".jsonl.zst", ".jsonl.zstd"),
    "starcoder": (".parquet",),
    "parquet": (".parquet",),
}


@dataclass
class Source:
    """One input of ``prepare``: which files, how to read them, which domain they feed.

    Args:
        paths: files, folders (searched recursively) or glob patterns.
        format: ``auto`` decides per file name: ``.jsonl[.zst]`` is ``slimpajama`` when no
            ``domain`` is given, else ``jsonl``; ``.parquet`` is ``starcoder`` when no
            ``domain`` is given, else ``parquet``; anything else is ``text``.
            ``slimpajama``: JSON lines with ``text``, domain from ``meta.redpajama_set_name``
            (``RedPajamaC4`` -> ``c4`` ...). ``starcoder``: parquet ``content`` column, domain =
            the file's folder (the language). ``jsonl``, ``parquet`` and ``text`` need ``domain``.
            In a folder, ``auto`` picks up .jsonl, .jsonl.zst, .parquet and .txt files and
            ``text`` every file that is not hidden.
        domain: output domain name; for slimpajama/starcoder it merges every natural domain
            (set name / language) into this one.
        text_fields: record fields or columns joined with a newline into one document
            (default ``text`` for JSON lines, ``content`` for parquet), e.g. GSM8K's
            ``[question, answer]``.
        max_doc_chars: text files longer than this are cut at paragraph breaks into several
            documents (default: one document per file).
        include: keep only these natural domains (SlimPajama short names, Starcoderdata
            language folders).
        exclude: drop these natural domains (TinyLlama dropped SlimPajama's ``github``).
    """

    paths: list[str] | str
    format: Literal["auto", "slimpajama", "starcoder", "jsonl", "parquet", "text"] = "auto"
    domain: str | None = None
    text_fields: list[str] | None = None
    max_doc_chars: int | None = None
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.paths, (str, os.PathLike)):
            self.paths = [self.paths]
        self.paths = [str(p) for p in self.paths]


@dataclass(frozen=True)
class SourceFile:
    """One input file, resolved: how to read it and where its documents go."""

    path: str
    read_format: str  # jsonl | parquet | text
    domain: str | None  # output domain; None: from each record's natural domain
    text_fields: tuple[str, ...] | None
    record_domains: bool  # read SlimPajama's set name from every record
    max_doc_chars: int | None
    include: frozenset[str] | None
    exclude: frozenset[str]
    size: int


def check_domain_name(name: str, what: str) -> str:
    if not _DOMAIN_NAME.match(name):
        raise SproutError(
            f"Domain name {name!r} ({what}) is not usable as a folder name: use letters, digits, '_', '.' or '-', starting with a letter or digit."
        )
    return name


def _list_files(pattern: str, fmt: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if glob.has_magic(str(path)):
        found = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
    elif path.exists():
        found = [path]
    else:
        raise SproutError(
            f"Source path {path} does not exist. Fix the path (files, folders and glob patterns are accepted)."
        )
    files: list[Path] = []
    for p in found:
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            suffixes = _DIR_SUFFIXES.get(fmt, _AUTO_DIR_SUFFIXES if fmt == "auto" else None)
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [
                    Path(root) / n
                    for n in sorted(names)
                    if not n.startswith(".") and (suffixes is None or n.lower().endswith(suffixes))
                ]
    if not files:
        raise SproutError(
            f"Source path {pattern!r} matched no {'' if fmt in ('auto', 'text') else fmt + ' '}input files. Fix the path or the source format."
        )
    return files


def resolve(source: Source) -> list[SourceFile]:
    if source.format not in SOURCE_FORMATS:
        raise SproutError(
            f"Unknown source format {source.format!r} for {source.paths}; choose one of {', '.join(SOURCE_FORMATS)}."
        )
    if source.domain is not None:
        check_domain_name(source.domain, f"source {source.paths}")
    if source.max_doc_chars is not None and source.max_doc_chars < 1:
        raise SproutError(
            f"max_doc_chars must be a positive number of characters (got {source.max_doc_chars}) for source {source.paths}."
        )
    files = []
    for pattern in source.paths:
        for path in _list_files(pattern, source.format):
            read_format = {"slimpajama": "jsonl", "starcoder": "parquet", "auto": detect_format(path)}.get(
                source.format, source.format
            )
            kind = source.format
            if kind == "auto":
                kind = (
                    {"jsonl": "slimpajama", "parquet": "starcoder"}.get(read_format, "text")
                    if source.domain is None
                    else read_format
                )
            if kind in ("jsonl", "parquet", "text") and source.domain is None:
                raise SproutError(
                    f"{path} is read as {kind} and needs a domain name: set the source's domain (--domain NAME)."
                )
            if kind not in ("slimpajama", "starcoder") and (source.include is not None or source.exclude):
                raise SproutError(
                    f"include/exclude select SlimPajama sets or Starcoderdata languages, but {path} is read as {kind}. Remove them from this source."
                )
            include = frozenset(source.include) if source.include is not None else None
            exclude = frozenset(source.exclude)
            domain = source.domain
            if kind == "starcoder":  # the language folder is the natural domain: filter whole files
                language = path.resolve().parent.name
                if (include is not None and language not in include) or language in exclude:
                    continue
                domain = domain or check_domain_name(language, f"folder of {path}")
            files.append(
                SourceFile(
                    path=str(path.resolve()),
                    read_format=read_format,
                    domain=domain,
                    text_fields=tuple(source.text_fields) if source.text_fields else None,
                    record_domains=kind == "slimpajama",
                    max_doc_chars=source.max_doc_chars,
                    include=include,
                    exclude=exclude,
                    size=path.stat().st_size,
                )
            )
    if not files:
        raise SproutError(
            f"Source {source.paths} has no files left after include={source.include} / exclude={source.exclude}. Check the language or set names."
        )
    return files


def contiguous_runs(sizes: list[int], n: int) -> list[int]:
    """Group index of each item: n contiguous runs of about equal total size, in order.

    A group index never skips one (a large item cannot leave a group empty) and the last
    items are spread so that every group gets at least one item when there are enough.
    """
    n = max(1, min(n, len(sizes)))
    total, done, group, groups = sum(sizes) or 1, 0, 0, []
    for i, size in enumerate(sizes):
        target = min(n - 1, done * n // total)
        group = max(group, min(target, group + 1), n - (len(sizes) - i))
        groups.append(group)
        done += size
    return groups


def split_tasks(files: list[SourceFile], n_tasks: int) -> list[list[SourceFile]]:
    """Contiguous runs of files with about equal bytes each (order kept, so output is stable)."""
    groups: dict[int, list[SourceFile]] = {}
    for f, g in zip(files, contiguous_runs([f.size for f in files], n_tasks)):
        groups.setdefault(g, []).append(f)
    return list(groups.values())
