"""One tokenizer interface over Hugging Face ``tokenizer.json`` files and SentencePiece models.

Shards record the tokenizer's identity (the sha256 of its file), so training can refuse
data made with a different vocabulary. ``encode`` never adds BOS/EOS: preparation appends
the EOS id itself as the separator between documents.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from sprout.errors import SproutError
from sprout.files import replacing

EOS_TOKEN = "<|endoftext|>"
# End-of-text spellings of common tokenizer.json files, tried in this order.
_EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")


class Tokenizer:
    """A loaded tokenizer file: HF ``tokenizers`` (``.json``) or SentencePiece (``.model``)."""

    def __init__(self, path: Path, backend, kind: str, eos_id: int, vocab_size: int) -> None:
        self.path = path
        self.kind = kind  # "hf" or "sentencepiece"
        self._backend = backend
        self._eos_id = eos_id
        self._vocab_size = vocab_size
        self._sha256: str | None = None
        # SentencePiece batch-encoding threads (None: its default); preparation workers set 1.
        self.num_threads: int | None = None

    @classmethod
    def load_trained(cls, path: str | os.PathLike, identity: dict | None, vocab_size: int, model: str) -> Tokenizer:
        """Load the tokenizer ``model`` was trained with, refusing another: ``identity`` is the
        checkpoint's record of its tokenizer (name, sha256), and the model's embedding must hold
        every token id. Scores or exports made with another vocabulary mean nothing."""
        tokenizer = cls.load(path)
        if identity and identity.get("sha256") and identity["sha256"] != tokenizer.sha256:
            raise SproutError(
                f"Tokenizer {tokenizer.path} (sha256 {tokenizer.sha256[:12]}) is not the one {model} was trained with "
                f"({identity.get('name')}, sha256 {identity['sha256'][:12]}); pass --tokenizer with that file."
            )
        if tokenizer.vocab_size > vocab_size:
            raise SproutError(
                f"Tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but {model}'s vocab_size is {vocab_size}; "
                "it is not the tokenizer this model was trained with, pass --tokenizer with the right one."
            )
        return tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load ``tokenizer.json`` or a SentencePiece ``.model``; a folder is searched for either."""
        path = Path(path).expanduser()
        if path.is_dir():
            found = [path / name for name in ("tokenizer.json", "tokenizer.model") if (path / name).is_file()]
            if not found:
                raise SproutError(
                    f"Tokenizer folder {path} has neither tokenizer.json nor tokenizer.model. Point the tokenizer option at a tokenizer file."
                )
            path = found[0]
        if not path.is_file():
            raise SproutError(
                f"Tokenizer file {path} does not exist. Fix the tokenizer path, or train one with Tokenizer.train_bpe."
            )
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SproutError(f"Cannot read tokenizer file {path}: {err}. Check its permissions.") from None
        if path.suffix == ".json" or (path.suffix != ".model" and data.lstrip().startswith(b"{")):
            return cls._load_hf(path, data)
        return cls._load_sentencepiece(path)

    @classmethod
    def _load_hf(cls, path: Path, data: bytes) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception, whose text gives no line for broken JSON
            try:
                json.loads(data)
            except ValueError as bad:  # JSONDecodeError, or bytes that are not UTF-8
                where = f" at line {bad.lineno}, column {bad.colno}" if isinstance(bad, json.JSONDecodeError) else ""
                raise SproutError(
                    f"Tokenizer file {path} is not valid JSON: {getattr(bad, 'msg', bad)}{where}. "
                    "It is truncated or was edited by hand; re-create or re-download it (a tokenizer.json is written by Hugging Face tokenizers)."
                ) from None
            raise SproutError(
                f"{path} is valid JSON but not a Hugging Face tokenizer.json: {err}. Re-create or re-download the file."
            ) from None
        eos_id = next((backend.token_to_id(t) for t in _EOS_CANDIDATES if backend.token_to_id(t) is not None), None)
        if eos_id is None:
            raise SproutError(
                f"Tokenizer {path} has no end-of-text token (looked for {', '.join(_EOS_CANDIDATES)}); documents need one as separator. Add one as a special token."
            )
        # A document that spells "<|endoftext|>" must not get a separator in its middle:
        # special tokens are only ever inserted by id (SentencePiece behaves so already).
        backend.encode_special_tokens = True
        return cls(path, backend, "hf", eos_id, backend.get_vocab_size(with_added_tokens=True))

    @classmethod
    def _load_sentencepiece(cls, path: Path) -> Tokenizer:
        import sentencepiece as spm

        try:
            backend = spm.SentencePieceProcessor(model_file=str(path))
        except Exception as err:  # sentencepiece raises RuntimeError/OSError with C++ text
            raise SproutError(
                f"{path} is not a valid SentencePiece model: {err}. Re-create or re-download the file."
            ) from None
        if backend.eos_id() < 0:
            raise SproutError(
                f"SentencePiece model {path} has no EOS piece (eos_id = -1); documents need one as separator. Train it with eos_id >= 0."
            )
        return cls(path, backend, "sentencepiece", backend.eos_id(), backend.get_piece_size())

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, out_path: str | os.PathLike) -> Tokenizer:
        """Train a byte-level BPE (GPT-2 style) with ``<|endoftext|>`` as id 0 and save it.

        Byte-level means every string is encodable (no unknown token); training is
        deterministic for the same texts in the same order.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise SproutError(
                f"vocab_size {vocab_size} is too small for a byte-level BPE: it needs at least {len(alphabet) + 1} (256 bytes + end-of-text)."
            )
        backend = HFTokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=alphabet, show_progress=False
        )
        backend.train_from_iterator(texts, trainer=trainer)
        out_path = Path(out_path).expanduser()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out_path) as tmp:
            backend.save(str(tmp))
        return cls.load(out_path)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return self._sha256

    @property
    def identity(self) -> dict:
        """What shards record about the tokenizer; equal ``sha256`` means the same vocabulary."""
        return {
            "name": str(self.path.resolve()),
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
        }

    def encode(self, text: str) -> list[int]:
        if self.kind == "hf":
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._backend.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.kind == "hf":
            return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self._backend.encode(texts, num_threads=self.num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if self.kind == "hf":
            return self._backend.decode(ids, skip_special_tokens=False)
        return self._backend.decode(ids)

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, {self.kind}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"
