"""Sprout's patches of litdata internals, kept here and checked against the litdata they were written for.

litdata 0.2.76 has no public way to do three things Sprout needs when it streams from a store:
reach an ``http://`` S3 endpoint (a local MinIO, moto, a proxy) with its obstore client, read
blocks in random order across chunks without a race in its ``TokensLoader``, and keep quiet
about a download failure that Sprout waits out. They reach into litdata's private names
(``downloader._DOWNLOADERS``, ``S3Downloader._get_store``, ``_OBSTORE_CLIENT_OPTIONS``,
``_obstore_credential_provider``, ``_cached_obstore_store``, ``TokensLoader._chunk_filepaths``
and ``_wait_until_chunk_ready``, ``PrepareChunksThread._report_crash``, and the loader's class
name, which litdata checks against its index). Private names change between releases without notice,
so importing this module checks the installed version first and fails in words on any other.
"""

from __future__ import annotations

import os
import threading
from importlib.metadata import PackageNotFoundError, version

from litdata import TokensLoader

from app.data.store.retry import transient
from app.errors import SproutError

LITDATA_VERSION = "0.2.76"  # the release whose internals the patches below were written against


def _check_version() -> None:
    try:
        found = version("litdata")
    except PackageNotFoundError:
        found = "none"
    if found != LITDATA_VERSION:
        raise SproutError(
            f"Package litdata is version {found}, but Sprout's patches of its internals (app/data/store/litdata_patch.py) "
            f"were written for litdata {LITDATA_VERSION}: they replace private parts of its S3 downloader and TokensLoader, "
            f"which change between releases without notice. Install the pinned version (pip install litdata=={LITDATA_VERSION}), "
            "or update that module for the new release and its version check with it."
        )


_check_version()


def allow_plain_http_endpoints() -> None:
    """Let litdata's chunk downloads reach an ``http://`` S3 endpoint (a local MinIO, moto, a proxy).

    litdata 0.2.76 fetches S3 chunks with obstore, whose client refuses plain HTTP unless told
    ``allow_http``, which litdata never tells it: every chunk GET from such an endpoint fails
    with "builder error". This replaces litdata's ``s3://`` downloader by one that builds the
    obstore store with ``allow_http`` for http endpoints, and is otherwise litdata's own. It is
    called wherever a remote split is opened, so DataLoader workers (forked or spawned) have it.
    """
    from litdata.streaming import downloader

    if getattr(downloader._DOWNLOADERS.get("s3://"), "sprout_http", False):
        return

    class HttpS3Downloader(downloader.S3Downloader):
        sprout_http = True

        def _get_store(self, bucket: str):
            meta = self._client.client.meta
            if not (meta.endpoint_url or "").startswith("http://"):
                return super()._get_store(bucket)
            from obstore.store import S3Store

            def build():
                config = {
                    "endpoint": meta.endpoint_url,
                    "virtual_hosted_style_request": False,
                    **({"region": meta.region_name} if meta.region_name else {}),
                }
                options = {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": True}
                return S3Store(
                    bucket,
                    config=config,
                    client_options=options,
                    credential_provider=downloader._obstore_credential_provider(self._client),
                )

            return downloader._cached_obstore_store(self, build)

    downloader.register_downloader("s3://", HttpS3Downloader, overwrite=True)


def quiet_passing_faults() -> None:
    """Keep litdata from printing a traceback when a chunk download fails for a passing reason.

    litdata 0.2.76's download thread prints every failure's traceback (``PrepareChunksThread._report_crash``)
    before the reader raises it; ``app.data.store.retry`` waits such a failure out with a line of
    its own, or ends the run in one paragraph, so its traceback is noise. Others are printed as before.
    """
    from litdata.streaming import reader

    report = reader.PrepareChunksThread._report_crash
    if getattr(report, "sprout_quiet", False):
        return

    def report_lasting(self, exc: BaseException) -> None:
        if not transient(exc):
            report(self, exc)

    report_lasting.sprout_quiet = True
    reader.PrepareChunksThread._report_crash = report_lasting


class LockedTokensLoader(TokensLoader):
    """litdata's ``TokensLoader`` with its chunk bookkeeping behind a lock.

    For a remote split litdata's download thread maps each chunk it fetched (``pre_load_chunk``)
    and unmaps evicted ones (``delete``) while the reading thread maps and unmaps chunks as it
    goes; litdata 0.2.76 does both on the same dicts without a lock, and reading blocks in random
    order across chunks, as Sprout does, meets the race within seconds (``KeyError`` in
    ``close``). Here the download thread does not pre-map (the reader maps a chunk when it first
    reads it), and every change to the dicts holds the lock; waiting for a download does not, so
    the download thread is never blocked by a reader that waits for it.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()

    def pre_load_chunk(self, chunk_index: int, chunk_filepath: str) -> None:
        pass

    def load_item_from_chunk(self, index: int, chunk_index: int, chunk_filepath: str, begin: int, filesize_bytes: int):
        if chunk_filepath not in self._chunk_filepaths or not os.path.isfile(chunk_filepath):
            self._wait_until_chunk_ready(int(chunk_index), chunk_filepath, filesize_bytes)
        with self._lock:
            return super().load_item_from_chunk(index, chunk_index, chunk_filepath, begin, filesize_bytes)

    def close(self, *args, **kwargs):
        with self._lock:
            return super().close(*args, **kwargs)

    def delete(self, *args, **kwargs):
        with self._lock:
            return super().delete(*args, **kwargs)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()


LockedTokensLoader.__name__ = "TokensLoader"  # litdata accepts the loader its index names, by class name
