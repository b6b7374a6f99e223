"""Preparation split across machines: three parts plus the merge write what one run writes (the
same documents, token counts, statistics and token stream); a missing part or a part number
out of range is named."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from test_prepare_restart import stream

from sprout.data.prepare import Source, merge_parts, prepare
from sprout.data.prepare.parts import share
from sprout.data.prepare.sources import resolve
from sprout.errors import SproutError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
DOMAINS = {"email": sorted((STDLIB / "email").glob("*.py"))[:12], "json": sorted((STDLIB / "json").glob("*.py"))}


def sources() -> list[Source]:
    return [Source([str(p) for p in paths], format="text", domain=name) for name, paths in DOMAINS.items()]


def written(out: Path) -> dict:
    """Per domain: meta.json, the unigram counts, and per split (tokens, sha256) of the token stream."""
    found = {}
    for meta_path in sorted(out.glob("*/meta.json")):
        domain = meta_path.parent
        found[domain.name] = {
            "meta": json.loads(meta_path.read_text()),
            "unigram": np.load(domain / "unigram.npy").tolist(),
            "pairs": {k: v.tolist() for k, v in np.load(domain / "pairs.npz").items()},
            **{split: stream(domain / split) for split in ("train", "val")},
        }
    return found


# val_fraction 1e-12: every domain gets its validation document by the fallback, cut out of a part's chunks
@pytest.mark.parametrize("val_fraction", [0.2, 1e-12])
def test_three_parts_and_merge_write_what_one_run_writes(val_fraction, tiny_data, tmp_path):
    tok = tiny_data / "tokenizer.json"
    options = {"val_fraction": val_fraction, "chunk_tokens": 2048, "progress": False}
    prepare(sources(), tok, tmp_path / "one", num_workers=1, summary=False, **options)
    one = written(tmp_path / "one")
    assert set(one) == set(DOMAINS) and all(d["val"][0] > 0 for d in one.values())

    files = [f for s in sources() for f in resolve(s)]
    shares = [share(files, i, 3) for i in range(3)]
    assert sorted(f.path for s in shares for f in s) == sorted(f.path for f in files)  # nothing missed or twice
    assert all(shares)
    for i in (2, 0, 1):  # any order, any worker count
        workers = 2 if i else 1
        assert prepare(sources(), tok, tmp_path / "parts", num_parts=3, part=i, num_workers=workers, **options) == {}
        assert not list((tmp_path / "parts").glob("*/meta.json"))  # no domain visible before the merge
    metas = merge_parts(tmp_path / "parts", 3)
    assert written(tmp_path / "parts") == one
    assert metas == {name: d["meta"] for name, d in one.items()}

    prepare(sources(), tok, tmp_path / "two", num_workers=2, summary=False, **options)  # and the worker count
    assert written(tmp_path / "two") == one


def test_bad_part_numbers_and_missing_parts_are_named(tiny_data, tmp_path):
    tok = tiny_data / "tokenizer.json"
    with pytest.raises(SproutError, match=r"--part 3 is outside 0\.\.2 for --num_parts 3"):
        prepare(sources(), tok, tmp_path / "out", num_parts=3, part=3, progress=False)
    with pytest.raises(SproutError, match=r"--part -1 is outside 0\.\.2"):
        prepare(sources(), tok, tmp_path / "out", num_parts=3, part=-1, progress=False)
    prepare(sources(), tok, tmp_path / "out", num_parts=4, part=1, num_workers=1, progress=False)
    with pytest.raises(SproutError, match=r"part\(s\) 0, 2, 3 of --num_parts 4 are not finished") as err:
        merge_parts(tmp_path / "out", 4)
    assert "--part N" in str(err.value) and not list((tmp_path / "out").glob("*/meta.json"))
    prepare(sources(), tok, tmp_path / "out", num_parts=4, part=0, num_workers=1, val_fraction=0.3, progress=False)
    for part in (2, 3):
        prepare(sources(), tok, tmp_path / "out", num_parts=4, part=part, num_workers=1, progress=False)
    with pytest.raises(SproutError, match=r"part\(s\) \[1, 2, 3\] were prepared with another val_fraction than part 0"):
        merge_parts(tmp_path / "out", 4)


def test_a_merged_domain_takes_an_append_as_one_run_would(tiny_data, tmp_path):
    """Parts keep per-file records and pair counts, so a plain re-run with an added file appends to
    the merged domains, and the result is what one run over all the files writes."""
    tok = tiny_data / "tokenizer.json"
    options = {"val_fraction": 0.2, "chunk_tokens": 2048, "progress": False, "summary": False, "num_workers": 1}
    for i in range(2):
        prepare(sources(), tok, tmp_path / "parts", num_parts=2, part=i, **options)
    merge_parts(tmp_path / "parts", 2)
    added = tmp_path / "added.py"
    added.write_text((STDLIB / "textwrap.py").read_text())
    more = [*sources(), Source([str(added)], format="text", domain="json")]
    appended = prepare(more, tok, tmp_path / "parts", **options)
    assert appended["json"]["files"][str(added)]["documents"] > 0
    prepare(more, tok, tmp_path / "whole", **options)
    assert written(tmp_path / "parts") == written(tmp_path / "whole")
    for index in (tmp_path / "parts").glob(
        "*/*/index.json"
    ):  # a split the append added nothing to keeps litdata's config
        assert json.loads(index.read_text())["config"] is not None, index
