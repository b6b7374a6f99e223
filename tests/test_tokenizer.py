import hashlib

import pytest

from sprout.data.tokenizer import EOS_TOKEN, Tokenizer
from sprout.errors import SproutError

TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "def add(a, b):\n    return a + b\n",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Ünïcödé and emoji 🚀 must round-trip through a byte-level BPE.",
] * 20


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return Tokenizer.train_bpe(TEXTS, 300, tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_trained_bpe_round_trips_and_has_eos_zero(bpe):
    assert bpe.kind == "hf" and bpe.vocab_size == 300
    assert bpe.eos_id == 0 and bpe.decode([0]) == EOS_TOKEN
    for text in TEXTS[:4] + ["never seen: Zebra 12345 ∑"]:
        ids = bpe.encode(text)
        assert bpe.eos_id not in ids  # encode adds no BOS/EOS
        assert bpe.decode(ids) == text
    assert bpe.encode_batch(TEXTS[:4]) == [bpe.encode(t) for t in TEXTS[:4]]
    quoted = f"GPT-2 separates documents with {EOS_TOKEN} in its data."
    assert bpe.eos_id not in bpe.encode(quoted) and bpe.decode(bpe.encode(quoted)) == quoted


def test_training_is_deterministic_and_identity_hashes_the_file(bpe, tmp_path):
    again = Tokenizer.train_bpe(TEXTS, 300, tmp_path / "again.json")
    assert again.sha256 == bpe.sha256
    identity = bpe.identity
    assert identity == {
        "name": str(bpe.path.resolve()),
        "sha256": hashlib.sha256(bpe.path.read_bytes()).hexdigest(),
        "vocab_size": 300,
        "eos_id": 0,
    }
    other = Tokenizer.train_bpe(TEXTS, 320, tmp_path / "other.json")
    assert other.sha256 != bpe.sha256


def test_load_trained_file_and_folder(bpe, tmp_path):
    loaded = Tokenizer.load(bpe.path)
    assert loaded.encode(TEXTS[0]) == bpe.encode(TEXTS[0]) and loaded.sha256 == bpe.sha256
    assert Tokenizer.load(bpe.path.parent).path == bpe.path


def test_sentencepiece_model_loads_without_bos_eos(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS),
        model_prefix=str(tmp_path / "sp"),
        vocab_size=120,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        minloglevel=2,  # Llama-2's special ids
    )
    tok = Tokenizer.load(tmp_path / "sp.model")
    assert tok.kind == "sentencepiece" and tok.vocab_size == 120 and tok.eos_id == 2
    ids = tok.encode("a single man in possession of a good fortune")
    assert 1 not in ids and 2 not in ids
    assert tok.decode(ids) == "a single man in possession of a good fortune"
    assert tok.encode_batch(["a wife", "in May"]) == [tok.encode("a wife"), tok.encode("in May")]
    assert tok.identity["sha256"] == hashlib.sha256((tmp_path / "sp.model").read_bytes()).hexdigest()


def test_bad_tokenizer_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(SproutError, match="nope.json"):
        Tokenizer.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SproutError, match="broken.json"):
        Tokenizer.load(broken)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(SproutError, match="junk.model"):
        Tokenizer.load(junk)
    with pytest.raises(SproutError, match="empty_dir"):
        Tokenizer.load((tmp_path / "empty_dir").mkdir() or tmp_path / "empty_dir")
    with pytest.raises(SproutError, match="vocab_size 100"):
        Tokenizer.train_bpe(TEXTS, 100, tmp_path / "small.json")


def test_tokenizer_without_end_of_text_is_refused(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=280, show_progress=False))
    backend.save(str(tmp_path / "noeos.json"))
    with pytest.raises(SproutError, match="noeos.json.*end-of-text"):
        Tokenizer.load(tmp_path / "noeos.json")
