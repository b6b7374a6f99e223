"""Turn raw corpora into Sprout's per-domain token shards (litdata, one folder per domain).

    # SlimPajama without its GitHub part, as TinyLlama trained (one domain per RedPajama set)
    sprout prepare --tokenizer tokenizer.model --out_dir data/tinyllama \\
        --slimpajama /data/SlimPajama-627B/train --drop_github true
    # Starcoderdata, some languages, merged into one "code" domain (default: a domain per language)
    sprout prepare --tokenizer tokenizer.model --out_dir data/tinyllama \\
        --starcoder /data/starcoderdata --languages '[python, java]' --starcoder_domain code
    # plain text files or JSON lines, the domain named by you (one domain per run)
    sprout prepare --tokenizer tok.json --out_dir data/demo \\
        --text ../shared/corpus/books --domain books --max_doc_chars 50000
    sprout prepare --tokenizer tok.json --out_dir data/demo \\
        --jsonl ../shared/corpus/math/gsm8k_train.jsonl --domain math --text_fields '[question, answer]'
    # several inputs: --text a.txt --text+ b.txt, or --text '[a.txt, b.txt]'
    # any number of sources from a YAML file (keys as below, "sources:" a list of Source fields)
    sprout prepare --config prepare.yaml
    # straight to object storage: staged locally, each domain uploaded once finished (meta.json last)
    sprout prepare --config prepare.yaml --out_dir s3://my-bucket/tinyllama
    # split over 32 machines (docs/scaling.md: SLURM array, ssh), then merge once all parts are done
    sprout prepare --config prepare.yaml --num_parts 32 --part $SLURM_ARRAY_TASK_ID
    sprout prepare --config prepare.yaml --num_parts 32 --merge true

Re-running prepares only files added since (their documents are appended to the domains) and
refuses a prepared file that changed or is missing; --overwrite rebuilds the domains from the files given.
"""

from __future__ import annotations

from pathlib import Path

from sprout.data.prepare import DEFAULT_CHUNK_TOKENS, Source, merge_parts, prepare
from sprout.data.prepare import publish as remote
from sprout.data.store.client import is_remote
from sprout.errors import SproutError


def prepare_data(
    tokenizer: str,
    out_dir: str,
    slimpajama: list[str] | str | None = None,
    drop_github: bool = False,
    starcoder: list[str] | str | None = None,
    languages: list[str] | str | None = None,
    starcoder_domain: str | None = None,
    text: list[str] | str | None = None,
    jsonl: list[str] | str | None = None,
    domain: str | None = None,
    text_fields: list[str] | str | None = None,
    max_doc_chars: int | None = None,
    sources: list[Source] | None = None,
    val_fraction: float = 0.01,
    num_workers: int | None = None,
    overwrite: bool = False,
    skip_bad_records: bool = False,
    seed: int = 0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: bool = True,
    num_parts: int = 1,
    part: int | None = None,
    merge: bool = False,
    stage_dir: str | None = None,
) -> dict[str, dict]:
    """Tokenize corpora into OUT_DIR/<domain>/{train,val}/ litdata shards plus meta.json.

    Every document is encoded and followed by the tokenizer's EOS id. Bad input (a line that
    is not JSON, a record without the text field, a truncated .zst, an empty file) stops the
    run with the file and line, unless --skip_bad_records is given.

    Args:
        tokenizer: tokenizer.json (Hugging Face) or SentencePiece .model file, or a folder
            holding one; the Llama-2 tokenizer.model works as it is. It is copied into OUT_DIR.
        out_dir: output folder; one sub-folder per domain. Or an s3:// URL (any S3-compatible
            store; credentials and endpoint from the standard AWS variables and files): the
            shards are staged in --stage_dir and each domain is uploaded once finished, its
            meta.json last, so training never sees a half-uploaded domain. Run the command
            again to resume an interrupted upload.
        slimpajama: SlimPajama folders, files or globs (*.jsonl.zst or *.jsonl); the domain of
            each record is its meta.redpajama_set_name (commoncrawl, c4, github, book, arxiv,
            wikipedia, stackexchange).
        drop_github: leave out SlimPajama's RedPajamaGithub records (TinyLlama did, and took
            code from Starcoderdata instead).
        starcoder: Starcoderdata folders, files or globs (*.parquet with a 'content' column);
            the domain is the language folder name.
        languages: only these Starcoderdata language folders (default: all).
        starcoder_domain: put all Starcoderdata languages into this one domain.
        text: plain-text files, folders or globs for the domain --domain; a file is one
            document (see --max_doc_chars).
        jsonl: JSON-lines files (.jsonl or .jsonl.zst) for the domain --domain; see --text_fields.
        domain: domain name for --text and --jsonl inputs.
        text_fields: JSON fields (or parquet columns) joined with a newline into one document
            (default: text for JSON lines, content for parquet).
        max_doc_chars: split text files longer than this many characters into several documents
            at paragraph breaks (default: one document per file).
        sources: further inputs, each a Source (paths, format, domain, text_fields,
            max_doc_chars, include, exclude), usually given in a --config YAML file.
        val_fraction: share of documents held out for validation, chosen by a hash of each
            document's text (a domain with 2+ documents always gets at least one).
        num_workers: worker processes (default: every usable core); parallelism is over files.
        overwrite: rebuild domains that are already prepared (also those made with another tokenizer).
        skip_bad_records: skip bad records instead of stopping; they are counted and listed in
            the summary and in each domain's meta.json.
        seed: key of the validation-split hash; another seed picks other validation documents.
        chunk_tokens: tokens per shard chunk file (int32, so 4 bytes each).
        progress: show a progress bar with documents/s and tokens/s.
        num_parts: split the input files into this many parts, one per machine (with --part
            or --merge); every machine must be given the same inputs and options.
        part: prepare only this part, 0 .. num_parts - 1: a deterministic share of the input
            files (contiguous runs of about equal bytes), disjoint from the other parts.
        merge: once all parts are done, write each domain's indexes, statistics and
            meta.json from them (inputs are not read again).
        stage_dir: local folder for a preparation into an s3:// --out_dir (default:
            ~/.cache/sprout/stage/<bucket-prefix>); it keeps the shards this machine prepared.
    """
    if merge:
        if part is not None:
            raise SproutError("--merge and --part exclude each other: run every --part first, then one --merge.")
        if is_remote(out_dir):
            metas = remote.merge_in_store(
                remote.open_store(out_dir), remote.staging_root(out_dir, stage_dir), num_parts
            )
        else:
            metas = merge_parts(Path(out_dir).expanduser().resolve(), num_parts)
        print(
            f"Merged {num_parts} parts into {out_dir}; point a recipe's data.data_dir at it (domains: {', '.join(metas)})."
        )
        return metas
    languages, text_fields = _as_list(languages), _as_list(text_fields)
    all_sources = list(sources or [])
    if slimpajama:
        all_sources.append(Source(slimpajama, format="slimpajama", exclude=["github"] if drop_github else []))
    if starcoder:
        all_sources.append(Source(starcoder, format="starcoder", include=languages, domain=starcoder_domain))
    if (text or jsonl) and not domain:
        raise SproutError("--text and --jsonl inputs need --domain NAME (the folder their shards go to).")
    if text:
        all_sources.append(Source(text, format="text", domain=domain, max_doc_chars=max_doc_chars))
    if jsonl:
        all_sources.append(Source(jsonl, format="jsonl", domain=domain, text_fields=text_fields))
    if not all_sources:
        raise SproutError(
            "Nothing to prepare: give --slimpajama, --starcoder, --text or --jsonl inputs, or sources in a --config file."
        )
    store = remote.open_store(out_dir) if is_remote(out_dir) else None  # a wrong URL fails before any work
    stage = remote.staging_root(out_dir, stage_dir) if store is not None else Path(out_dir)
    metas = prepare(
        all_sources,
        tokenizer,
        stage,
        val_fraction=val_fraction,
        num_workers=num_workers,
        overwrite=overwrite,
        skip_bad_records=skip_bad_records,
        seed=seed,
        chunk_tokens=chunk_tokens,
        progress=progress,
        num_parts=num_parts,
        part=part,
    )
    if store is not None and part is not None:
        remote.publish_part(store, stage.expanduser().resolve(), num_parts, part, overwrite)
    elif store is not None:
        remote.publish(store, stage.expanduser().resolve(), metas, overwrite)
    if part is None:
        print(f"Shards are in {out_dir}; point a recipe's data.data_dir at it (domains: {', '.join(metas)}).")
    return metas


def _as_list(value: list[str] | str | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value
