"""The LightningDataModule: per-domain shards, a mixture policy, per-domain validation."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from sprout import registry
from sprout.data.blocks import DomainBlocks, SequentialBlocks
from sprout.data.cache import ChunkCache, ReadAhead
from sprout.data.location import open_location
from sprout.data.sampler import MixtureBatchSampler
from sprout.data.scores import check_scores, describe, scores_folder
from sprout.data.shards import META_FILE, domain_stats, read_meta
from sprout.data.store.retry import DEFAULT_SECONDS, take_waited
from sprout.data.tokenizer import Tokenizer
from sprout.errors import SproutError, check_option, is_count, is_number
from sprout.protocols import DomainStats, MixturePolicy, Preparation


class SproutDataModule(L.LightningDataModule):
    """Streams prepared domains (``<data_dir>/<domain>/{train,val}``) mixed by a policy.

    Args:
        data_dir: folder of prepared domains, as written by ``sprout prepare``, or their
            URL in object storage (``s3://bucket/prefix``, or any scheme litdata streams from):
            then ``meta.json``, the tokenizer and the indexes are fetched into ``cache_dir`` and
            the chunks are downloaded there as they are about to be read.
        tokenizer: the tokenizer file the shards must have been made with
            (default: the tokenizer.json or tokenizer.model that preparation put in ``data_dir``).
        domains: domains to train on (default: every prepared domain in ``data_dir``).
        mixture: a ``mixture`` plugin choosing domain weights (default ``natural``).
        seq_len: tokens per training sequence.
        batch_size: sequences per micro-batch on each device.
        val_blocks: validation sequences per domain (``null`` for all).
        prepare: builds ``data_dir`` on first use when it is missing (e.g. the quick start's
            embedded corpus); a prepared ``data_dir`` is reused.
        reference_scores: folder of offline reference losses written by
            ``sprout score`` for these domains; training samples then carry
            ``ref_loss`` and Rho-1 needs no reference forward pass.
        cache_dir: where shards streamed from a ``data_dir`` URL are cached on this machine
            (default ``~/.cache/sprout/streams``); every node needs its own local one.
        cache_size: most bytes of streamed chunks kept in ``cache_dir`` (``200GB``, ``2TB``)
            beyond those in use, shared among the ranks of a machine; chunks read longest ago go
            first. It must hold ``window + prefetch`` chunks per domain. Default: 75% of the
            disk free under ``cache_dir``.
        window: training chunks of a domain whose blocks are shuffled together. Each epoch a
            domain's chunks are read in a new random order, ``window`` at a time (see
            ``sprout.data.order``); larger is closer to a full shuffle and needs more cache.
        prefetch: chunks per domain downloaded ahead of the window being read (data in object
            storage), so training does not wait for a chunk when the store keeps up.
        store_retry_seconds: how long a download, read or listing of a ``data_dir`` URL that fails
            for a passing reason (connection refused or reset, timeout, 5xx, throttling) is
            retried before the run ends; the console says while it waits.
    """

    def __init__(
        self,
        data_dir: str,
        tokenizer: str | None = None,
        domains: list[str] | None = None,
        mixture: MixturePolicy | None = None,
        seq_len: int = 256,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_blocks: int | None = 64,
        num_workers: int = 0,
        seed: int = 42,
        prepare: Preparation | None = None,
        reference_scores: str | None = None,
        cache_dir: str | None = None,
        cache_size: str | int | None = None,
        window: int = 8,
        prefetch: int = 8,
        store_retry_seconds: float = DEFAULT_SECONDS,
    ) -> None:
        super().__init__()
        check_option(is_count(seq_len), "data.seq_len", seq_len, "a positive number of tokens per sequence")
        check_option(
            is_count(batch_size), "data.batch_size", batch_size, "a positive number of sequences per micro-batch"
        )
        check_option(
            val_batch_size is None or is_count(val_batch_size),
            "data.val_batch_size",
            val_batch_size,
            "a positive number of sequences, or null for data.batch_size",
        )
        check_option(
            val_blocks is None or is_count(val_blocks),
            "data.val_blocks",
            val_blocks,
            "a positive number of validation sequences per domain, or null for all of them",
        )
        check_option(
            is_count(num_workers, 0),
            "data.num_workers",
            num_workers,
            "a number of DataLoader worker processes >= 0 (0 reads in the main process)",
        )
        check_option(is_count(seed, 0) and seed < 2**32, "data.seed", seed, "an integer in [0, 2**32)")
        check_option(is_count(window), "data.window", window, "a positive number of chunks shuffled together")
        check_option(is_count(prefetch, 0), "data.prefetch", prefetch, "a number of chunks >= 0 downloaded ahead")
        check_option(
            is_number(store_retry_seconds),
            "data.store_retry_seconds",
            store_retry_seconds,
            "a number of seconds >= 0 (0 fails at the first error)",
        )
        self.store_retry_seconds = store_retry_seconds
        self.location = open_location(data_dir, domains, cache_dir, cache_size, store_retry_seconds)
        # for a URL: the local folder holding its small files (and the streamed chunks)
        self.data_dir = self.location.folder
        self._tokenizer_arg = Path(tokenizer).expanduser() if tokenizer else None
        self.requested_domains = domains
        self.mixture = mixture if mixture is not None else registry.create("mixture", "natural")
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_blocks = val_blocks
        self.num_workers = num_workers
        self.seed = seed
        self.window = window
        self.prefetch = prefetch
        self.preparation = prepare
        self.reference_scores = Path(reference_scores).expanduser() if reference_scores else None
        self.reference_scores_identity: dict[str, Any] | None = None  # the reference that made them
        self.domains: list[str] = []
        self.stats: dict[str, DomainStats] = {}
        self.sampler: MixtureBatchSampler | None = None
        self._consumed = 0  # training batches the loop has taken
        self._resume: dict[str, Any] | None = None
        self._cache: ChunkCache | None = None  # remote data: the training chunks on this machine

    # -- preparation and checks ------------------------------------------------------
    def prepare_data(self) -> None:
        """Runs once per node before ``setup``: builds a missing local ``data_dir``, or fetches the
        small files of a remote one (so the node's ranks never fetch them at the same time)."""
        self.location.fetch(self.preparation, self.tokenizer_path)

    @property
    def data_location(self) -> str:
        """``data.data_dir`` as the user wrote it (the URL for remote data), for messages."""
        return self.location.where

    def _discover_domains(self) -> list[str]:
        found = self.location.found(fetched=self.trainer is not None)
        if self.requested_domains is None:
            return found
        missing = [d for d in self.requested_domains if d not in found]
        if missing:
            raise SproutError(
                f"data.domains names {missing}, which are not prepared in {self.data_location} (no <domain>/{META_FILE} there; "
                f"prepared: {found or 'none'}). Fix data.domains or prepare those domains."
            )
        return list(self.requested_domains)

    @property
    def tokenizer_path(self) -> Path:
        """``data.tokenizer``, else the one ``sprout prepare`` copied into ``data_dir``."""
        if self._tokenizer_arg is not None:
            return self._tokenizer_arg
        spm = self.data_dir / "tokenizer.model"
        return spm if spm.is_file() else self.data_dir / "tokenizer.json"

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_path)

    def setup(self, stage: str | None = None) -> None:
        if self.domains:
            return
        self.domains = self._discover_domains()
        identity = self.tokenizer.identity
        self.tokenizer_identity = identity
        for name in self.domains:
            meta = read_meta(self.data_dir / name)
            shard_tok = meta.get("tokenizer", {})
            if shard_tok.get("sha256") != identity["sha256"]:
                raise SproutError(
                    f"Domain {name!r} in {self.data_location} was tokenized with {shard_tok.get('name')} (sha256 {str(shard_tok.get('sha256'))[:12]}), "
                    f"but the recipe's tokenizer is {self.tokenizer_path} (sha256 {identity['sha256'][:12]}). Re-prepare the shards with this tokenizer or point data.tokenizer at the one they were made with."
                )
            if (
                meta["splits"]["train"]["tokens"] < self.seq_len + 1
            ):  # before the validation check: more held-out data cannot help
                raise SproutError(
                    f"Domain {name!r} in {self.data_location} has less than one training sequence of {self.seq_len + 1} tokens: too little data. Add data, drop the domain from data.domains, or lower data.seq_len."
                )
            if meta["splits"]["val"]["tokens"] < self.seq_len + 1:
                raise SproutError(
                    f"Domain {name!r} in {self.data_location} has no validation sequence of {self.seq_len + 1} tokens. Re-prepare it with a larger --val_fraction, or lower data.seq_len."
                )
            self.stats[name] = domain_stats(name, meta)
            self.location.check(name)
        self.train_blocks = self._train_blocks()
        self.chunks = self.train_blocks.chunks()
        self.sizes = [c.total for c in self.chunks]
        world = self.trainer.world_size if self.trainer else 1
        empty = [d for d, n in zip(self.domains, self.sizes) if n < world]
        if empty:
            raise SproutError(
                f"Domain(s) {empty} in {self.data_location} have fewer than {world} training sequences of {self.seq_len + 1} tokens: too little data. Add data, drop the domain from data.domains, or lower data.seq_len."
            )
        if self.reference_scores is not None:
            self._use_reference_scores(identity)

    def _use_reference_scores(self, tokenizer: dict[str, Any]) -> None:
        """Check every domain's offline reference scores and have training samples carry them."""
        metas = [
            check_scores(self.reference_scores, d, self.data_dir / d / "train", tokenizer, self.seq_len + 1, n)
            for d, n in zip(self.domains, self.sizes)
        ]
        first = metas[0]["reference"]
        for name, meta in zip(self.domains, metas):
            if meta["reference"]["sha256"] != first["sha256"]:
                raise SproutError(
                    f"data.reference_scores={self.reference_scores} mixes reference models: domain {self.domains[0]!r} was scored by "
                    f"{describe(first)} but domain {name!r} by {describe(meta['reference'])}. Re-score the domains with one reference."
                )
        self.reference_scores_identity = first
        self.train_blocks = self._train_blocks([scores_folder(self.reference_scores, d, "train") for d in self.domains])

    def _train_blocks(self, score_dirs: list[Path] | None = None) -> DomainBlocks:
        urls = [self.location.split_url(d, "train") for d in self.domains]
        split_dirs = [self.data_dir / d / "train" for d in self.domains]
        return DomainBlocks(split_dirs, self.seq_len + 1, score_dirs, urls, self.store_retry_seconds)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # -- mixture ------------------------------------------------------------------------
    def _policy_weights(self, step: int, feedback: dict[str, float] | None = None) -> list[float]:
        weights = self.mixture.weights(step, self.stats, feedback)
        if set(weights) != set(self.domains):
            raise SproutError(
                f"The mixture policy {type(self.mixture).__name__} returned weights for {sorted(weights)} but the domains are {self.domains}. Make its weights name exactly the data domains."
            )
        values = [float(weights[d]) for d in self.domains]
        if any(not (v >= 0) for v in values) or sum(values) <= 0:
            raise SproutError(
                f"The mixture policy {type(self.mixture).__name__} returned invalid weights {weights}: they must be non-negative and not all zero."
            )
        total = sum(values)
        return [v / total for v in values]

    @property
    def mixture_weights(self) -> dict[str, float]:
        weights = self.sampler.weights if self.sampler else self._policy_weights(0)
        return dict(zip(self.domains, weights))

    def update_mixture(self, step: int, feedback: dict[str, float]) -> None:
        """Give a dynamic policy its feedback (``sprout.callbacks.MixtureFeedback`` calls this every
        ``mixture.update_every`` steps); new weights apply from the next batch drawn."""
        if self.sampler is None or not self.mixture.dynamic:
            return
        self.sampler.set_weights(self._policy_weights(step, feedback), from_batch=self.sampler.state["batch_no"])

    # -- loaders ------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        self.sampler = MixtureBatchSampler(
            [c.blocks for c in self.chunks],
            self._policy_weights(0),
            self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world,
            window=self.window,
        )
        if self._resume is not None:
            self.sampler.load_state(self._resume["sampler"])
            self._consumed = self._resume["consumed"]
            self._resume = None
        if self._cache is not None:
            self._cache.close()
        ranks_here = self.trainer.num_devices if self.trainer else 1
        lookahead = 2 * self.num_workers + 1  # batches the DataLoader draws before the oldest is read
        self._cache = self.location.cache(self.chunks, ranks_here, lookahead, self.window, self.prefetch)
        return DataLoader(
            self.train_blocks,
            batch_sampler=ReadAhead(self.sampler, self._cache, self.prefetch),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return [
            DataLoader(
                SequentialBlocks(
                    self.data_dir / d / "val",
                    self.seq_len + 1,
                    i,
                    self.val_blocks,
                    rank,
                    world,
                    self.location.split_url(d, "val"),
                    self.store_retry_seconds,
                ),
                batch_size=self.val_batch_size,
                num_workers=self.num_workers,
            )
            for i, d in enumerate(self.domains)
        ]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and "batch_no" in batch:
            self._consumed = int(batch["batch_no"][0]) + 1
            waited = take_waited()  # by this process's downloads: the training chunks are fetched here
            if waited > 0 and self.trainer.logger is not None:
                self.trainer.logger.log_metrics({"data/store_wait_seconds": waited}, step=self.trainer.global_step)
        return batch

    # -- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.sampler is None:
            return {}
        return {
            "consumed": self._consumed,
            "sampler": self.sampler.snapshot(self._consumed),
            "mixture": self.mixture.state_dict(),
            "domains": self.domains,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("domains") and self.domains and state["domains"] != self.domains:
            raise SproutError(
                f"The checkpoint was trained on domains {state['domains']} but the recipe has {self.domains}; resume with the same data.domains."
            )
        self.mixture.load_state_dict(state.get("mixture", {}))
        self._resume = state
