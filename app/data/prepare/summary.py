"""The table a preparation prints at its end: per domain, what was prepared or reused, and how fast."""

from __future__ import annotations

import sys
from collections import Counter

from sprout.data.prepare.worker import TaskResult
from sprout.data.shards import SPLITS


def print_summary(
    metas: dict, prepared: dict, reused: set[str], results: list[TaskResult], wall: float, num_workers: int
) -> None:
    rows = [("domain", "status", "train docs", "val docs", "tokens", "skipped", "worker-s", "tok/s/worker")]
    total_tokens = 0
    for name in sorted(set(metas) | set(prepared)):
        meta = metas.get(name)
        if meta is None:
            rows.append((name, "EMPTY", "0", "0", "0", str(prepared[name]["skipped"]), "", ""))
            continue
        tokens = sum(meta["splits"][s]["tokens"] for s in SPLITS)
        status = prepared[name]["status"] if name in prepared else "reused"
        seconds = prepared[name]["seconds"] if name in prepared else None
        if name in prepared:
            total_tokens += prepared[name]["new_tokens"]
        rows.append(
            (
                name,
                status,
                f"{meta['splits']['train']['documents']:,}",
                f"{meta['splits']['val']['documents']:,}",
                f"{tokens:,}",
                f"{meta['skipped']['count']:,}",
                f"{seconds:.1f}" if seconds is not None else "",
                f"{prepared[name]['new_tokens'] / seconds:,.0f}" if seconds else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    if prepared:
        lines.append(
            f"prepared {total_tokens:,} tokens in {wall:.1f} s wall with {num_workers} worker(s): {total_tokens / max(wall, 1e-9):,.0f} tokens/s"
        )
    else:
        lines.append(
            "nothing new to prepare: every file given was prepared already, unchanged, with this tokenizer (--overwrite rebuilds)"
        )
    excluded = sum((r.excluded for r in results), Counter())
    if excluded:
        lines.append(
            "left out by include/exclude: " + ", ".join(f"{k} {v:,} docs" for k, v in sorted(excluded.items()))
        )
    for name, meta in metas.items():
        if meta["splits"]["val"]["documents"] == 0 and name in prepared:
            lines.append(
                f"warning: domain {name!r} has no validation documents (only {meta['splits']['train']['documents']} document(s) in all); raise val_fraction or split its files with max_doc_chars."
            )
        for ex in meta["skipped"]["examples"][:3] if name in prepared else []:
            lines.append(
                f"skipped in {name}: {ex['file']}"
                + (f", line {ex['line']}" if ex["line"] is not None else "")
                + f": {ex['reason']}"
            )
    for r in results:
        for bad in r.unattributed:
            lines.append(f"skipped (fed no domain): {bad.describe()}")
    print("\n".join(lines), file=sys.stdout, flush=True)
