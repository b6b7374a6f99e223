"""Prepared data in object storage: URLs, the few calls Sprout makes, and errors a user can act on.

``data.data_dir`` and ``tools/prepare_data.py --out_dir`` take a URL (``s3://bucket/prefix`` or
any other scheme litdata streams from: ``gs://``, ``azure://``, ``r2://``, ``hf://``). The chunks
themselves are streamed by litdata (``app.data.blocks``); this module does the rest: list the
prepared domains, fetch the small files (``meta.json``, the tokenizer, the split indexes), check
that every chunk an index lists is there with its size, and upload.

S3 (and every S3-compatible store) goes through boto3, so credentials and the endpoint come from
where every AWS tool looks (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/{credentials,config}``, ``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3``), with few retries and short connect timeouts: a wrong bucket,
endpoint or key fails in seconds with one paragraph naming the URL, not after litdata's thousand
retries. No message ever contains a credential. Other schemes are read through litdata's own
downloaders and cannot be listed or written: name ``data.domains`` for them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from app.data.shards import INDEX_FILE, META_FILE, SPLITS
from app.errors import SproutError

# litdata's downloaders (litdata.streaming.downloader._DOWNLOADERS), minus its "local:" alias
STREAM_SCHEMES = ("s3", "gs", "azure", "r2", "hf")
_CREDENTIAL_HELP = (
    "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys), or AWS_PROFILE "
    "naming a profile in ~/.aws/credentials"
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_DENIED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "403",
    "Forbidden",
    "InvalidClientTokenId",
}


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is an object-store URL rather than a local folder."""
    return urlparse(str(location)).scheme in STREAM_SCHEMES


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


@dataclass(frozen=True)
class RemoteObject:
    key: str  # relative to the store's prefix
    size: int


class ObjectStore:
    """A prefix in object storage, as a folder of files addressed by relative keys."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in STREAM_SCHEMES or not parsed.netloc:
            raise SproutError(
                f"{url} is not an object-store URL: use s3://BUCKET/PREFIX (or {', '.join(s + '://' for s in STREAM_SCHEMES[1:])})."
            )
        self.url = url.rstrip("/")
        self.scheme = parsed.scheme
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    def url_of(self, key: str) -> str:
        return join(self.url, key)

    def _key(self, key: str) -> str:
        """The full object key of ``key`` (relative to the prefix; a trailing ``/`` is kept)."""
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def writable(self) -> bool:
        return self.scheme == "s3"

    # -- S3 through boto3 ---------------------------------------------------------------------
    @functools.cached_property
    def _s3(self):
        if self.scheme != "s3":
            raise SproutError(
                f"{self.url}: listing and writing work on s3:// (and S3-compatible stores through AWS_ENDPOINT_URL) only; for {self.scheme}:// name the domains in data.domains."
            )
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60)
        try:
            return boto3.session.Session().client("s3", config=config)
        except Exception as err:  # e.g. half the credentials in the environment, a bad ~/.aws/config
            raise self.explain(err, "connecting") from None

    @property
    def endpoint(self) -> str:
        if self.scheme != "s3":
            return f"{self.scheme}://"
        if "_s3" in self.__dict__:
            return self._s3.meta.endpoint_url
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS's default"

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise self.explain(err, what) from None

    def explain(self, err: BaseException, what: str) -> BaseException:
        """The SproutError for a failed call on this store (or ``err`` itself if it is not about access)."""
        from botocore import exceptions as bex

        where = f"{self.url} ({what}, endpoint {self.endpoint})"
        if isinstance(err, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return SproutError(
                f"No credentials for {where}. {_CREDENTIAL_HELP}; Sprout reads them where every AWS tool does."
            )
        if isinstance(
            err, (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError, bex.ConnectionClosedError)
        ):
            return SproutError(
                f"Cannot reach the object store for {where}: {type(err).__name__}. Check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3, or endpoint_url "
                "in ~/.aws/config), that the store is running and that this machine can reach it."
            )
        if isinstance(err, bex.ClientError):
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and what.startswith("bucket")):
                return SproutError(
                    f"Bucket {self.bucket!r} does not exist for {where}. Create it (aws s3 mb s3://{self.bucket}) or fix the bucket name in the URL."
                )
            if code in _DENIED:
                return SproutError(
                    f"The object store refused access to {where}: {code} ({error.get('Message') or 'no message'}). The credentials are wrong, expired "
                    f"or lack permission for this bucket. {_CREDENTIAL_HELP}, with read (training) or read+write (preparation) rights on s3://{self.bucket}."
                )
            return SproutError(
                f"The object store failed on {where}: {code}: {error.get('Message', '')}. Check the URL and the store."
            )
        if isinstance(err, bex.BotoCoreError):
            return SproutError(
                f"Cannot use {where}: {type(err).__name__}: {err}. Check the URL and the AWS settings (AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws/config)."
            )
        return err

    def check(self) -> None:
        """Fail now, with the reason, if the bucket cannot be used (missing, unreachable, refused)."""
        if self.scheme == "s3":
            self._call("bucket check", self._s3.head_bucket, Bucket=self.bucket)

    def list(self, prefix: str = "", delimiter: bool = False) -> Iterator[RemoteObject | str]:
        """Objects whose relative key starts with ``prefix`` (``code/`` for a folder), or with
        ``delimiter`` the names of the sub-folders directly in the folder ``prefix``."""
        full = self._key(prefix)
        if delimiter and full and not full.endswith("/"):
            full += "/"
        base = len(self.prefix) + 1 if self.prefix else 0
        kwargs = {"Bucket": self.bucket, "Prefix": full, **({"Delimiter": "/"} if delimiter else {})}
        pages = self._s3.get_paginator("list_objects_v2").paginate(**kwargs)
        try:
            for page in pages:
                if delimiter:
                    yield from (p["Prefix"][base:].rstrip("/") for p in page.get("CommonPrefixes", []))
                else:
                    yield from (RemoteObject(o["Key"][base:], int(o["Size"])) for o in page.get("Contents", []))
        except Exception as err:
            raise self.explain(err, "listing") from None

    def read(self, key: str) -> bytes | None:
        """The object's content, or None when there is no such object."""
        if self.scheme != "s3":
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "object"
                return local.read_bytes() if self.download(key, local) else None
        from botocore.exceptions import ClientError

        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self.explain(err, f"reading {key}") from None
        except Exception as err:
            raise self.explain(err, f"reading {key}") from None

    def download(self, key: str, local: Path) -> bool:
        """Copy the object to ``local`` (written whole or not at all); False when there is none."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        try:
            if self.scheme == "s3":
                data = self.read(key)
                if data is None:
                    return False
                tmp.write_bytes(data)
            else:
                from litdata.streaming.downloader import get_downloader

                try:
                    get_downloader(self.url, str(local.parent), []).download_file(self.url_of(key), str(tmp))
                except FileNotFoundError:
                    return False
                except Exception as err:  # google/azure/hf clients raise their own types
                    if "not found" in str(err).lower() or "404" in str(err):
                        return False
                    raise SproutError(
                        f"Cannot read {self.url_of(key)}: {type(err).__name__}: {err}. Check the URL and that credentials for {self.scheme}:// are set."
                    ) from None
            os.replace(tmp, local)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def write(self, key: str, data: bytes) -> None:
        self._call(f"writing {key}", self._s3.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def upload(self, local: Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        self._call(
            f"uploading {key}",
            self._s3.upload_file,
            str(local),
            self.bucket,
            self._key(key),
            Config=TransferConfig(multipart_threshold=256 << 20),
        )

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self._call(
                "deleting", self._s3.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )


def local_cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """Where streamed data is cached on this machine (``data.cache_dir``, default ``~/.cache/sprout/streams``)."""
    return Path(cache_dir or Path("~/.cache/sprout/streams")).expanduser()


def mirror_folder(cache_root: Path, url: str) -> Path:
    """This URL's folder under the cache: readable, and distinct per bucket, prefix and endpoint."""
    store = ObjectStore(url)
    endpoint = (
        (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "")
        if store.scheme == "s3"
        else ""
    )
    tag = hashlib.sha256(f"{store.url}|{endpoint}".encode()).hexdigest()[:10]
    readable = "-".join(p for p in (store.scheme, store.bucket, *store.prefix.split("/")) if p)
    return cache_root / f"{readable[:80]}-{tag}"


def _refresh(store: ObjectStore, key: str, local: Path) -> bool:
    """Fetch ``key`` to ``local``; when a split's index changed, the chunks cached beside it are
    stale (the data was re-prepared) and are removed. False when the object does not exist."""
    data = store.read(key)
    if data is None:
        return False
    if local.is_file() and local.read_bytes() == data:
        return True
    if local.name == INDEX_FILE and local.parent.is_dir():
        shutil.rmtree(local.parent)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, local)
    return True


def remote_domains(store: ObjectStore) -> list[str]:
    """Domains whose upload finished (their ``meta.json``, written last, is there)."""
    return sorted(
        d for d in store.list(delimiter=True) if not d.startswith(".") and store.read(f"{d}/{META_FILE}") is not None
    )


def mirror(url: str, cache_root: Path, domains: list[str] | None) -> tuple[Path, list[str]]:
    """Bring the small files of the prepared data at ``url`` into a local folder laid out like a
    prepared ``data_dir`` (tokenizer, ``<domain>/meta.json``, ``<domain>/<split>/index.json``),
    where litdata then caches the chunks it streams. Returns the folder and the domains found
    (all prepared ones, or those of ``domains`` that are).

    Also checks that every chunk an index lists is in the store with the size the index says,
    so a half-uploaded or damaged copy fails here instead of in a DataLoader worker.
    """
    store = ObjectStore(url)
    store.check()
    folder = mirror_folder(cache_root, url)
    if domains is None:
        if not store.writable:
            raise SproutError(
                f"data.data_dir {url}: the domains under a {store.scheme}:// URL cannot be listed. Name them in data.domains."
            )
        found = remote_domains(store)
        if not found:
            raise SproutError(
                f"No prepared domains at data.data_dir {url} (no <domain>/{META_FILE} under it; a domain gets its {META_FILE} only once its upload has finished). "
                f"Prepare data with tools/prepare_data.py --out_dir {url}, wait for a running preparation to finish, or fix the URL."
            )
        for stale in folder.glob(f"*/{META_FILE}"):  # domains removed from the store since the last fetch
            if stale.parent.name not in found:
                stale.unlink()
    else:
        found = [d for d in domains if _refresh(store, f"{d}/{META_FILE}", folder / d / META_FILE)]
    for name in TOKENIZER_FILES:
        _refresh(store, name, folder / name)
    for domain in found:
        _refresh(store, f"{domain}/{META_FILE}", folder / domain / META_FILE)
        for split in SPLITS:
            if not _refresh(store, f"{domain}/{split}/{INDEX_FILE}", folder / domain / split / INDEX_FILE):
                raise SproutError(
                    f"{store.url_of(f'{domain}/{split}/{INDEX_FILE}')} is missing, though {store.url_of(f'{domain}/{META_FILE}')} is there. Re-run tools/prepare_data.py --out_dir {url} with --overwrite for domain {domain!r}."
                )
            if store.writable:
                check_chunks(store, f"{domain}/{split}", folder / domain / split / INDEX_FILE, url)
    return folder, found


def check_chunks(store: ObjectStore, split: str, index: Path, url: str) -> None:
    """Every chunk the split's index lists is in the store with the size the index says."""
    sizes = {o.key.rsplit("/", 1)[-1]: o.size for o in store.list(f"{split}/")}
    for chunk in json.loads(index.read_text())["chunks"]:
        size = sizes.get(chunk["filename"])
        if size != chunk["chunk_bytes"]:
            found = "missing" if size is None else f"{size:,} bytes"
            where = store.url_of(f"{split}/{chunk['filename']}")
            raise SproutError(
                f"Shard {where} is {found}, but its index.json says {chunk['chunk_bytes']:,} bytes: the upload is "
                f"incomplete or the object was changed. Re-run tools/prepare_data.py --out_dir {url} with --overwrite for this domain."
            )


def cache_budgets(total: str | int | None, split_bytes: list[int]) -> list[int | None]:
    """``data.cache_size`` shared among the streamed splits in proportion to their size (each
    litdata dataset keeps its own cache folder); None leaves litdata's default to each."""
    if total is None:
        return [None] * len(split_bytes)
    limit = parse_size(total)
    whole = sum(split_bytes) or 1
    return [max(1, limit * n // whole) for n in split_bytes]


def parse_size(size: str | int) -> int:
    """Bytes in ``size``: an int, or a string like ``200GB``, ``1.5T``, ``500MiB``."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGTP]?)(i?B?)\s*", str(size), re.IGNORECASE)
    if not match or size in ("", "."):
        raise SproutError(
            f"data.cache_size={size!r} is not a size: write bytes as a number, or e.g. 500MB, 200GB, 2TB."
        )
    value, unit = float(match[1]), match[2].upper()
    return int(value * 1024 ** "KMGTP".find(unit) * 1024) if unit else int(value)


def upload_complete(
    store: ObjectStore,
    local_root: Path,
    keys: list[str],
    marker: str,
    owned: list[str],
    verify: Callable[[], None] | None = None,
) -> bool:
    """Upload the files ``keys`` (paths relative to ``local_root`` and to the store), then
    ``marker`` last: readers take what a marker covers as complete only once the marker is
    there. Returns False when the store already holds this very marker (nothing to do).

    An interrupted upload is resumed: ``<marker>.uploading`` names the build being uploaded (the
    sha256 of its marker), and a re-run of the same build skips the objects already there with
    their size (an object is stored whole or not at all). For another build, the objects of the
    earlier one under the ``owned`` key prefixes are deleted first, and everything is uploaded.
    ``verify`` runs before the marker is written (and may refuse to write it by raising).
    """
    content = (local_root / marker).read_bytes()
    if store.read(marker) == content:
        return False
    build, pending = hashlib.sha256(content).hexdigest().encode(), f"{marker}.uploading"
    store.delete([marker])  # from here on readers see the folder as incomplete
    present = {o.key: o.size for prefix in owned for o in store.list(prefix) if o.key != pending}
    if store.read(pending) != build:
        wanted = set(keys)
        store.delete([k for k in present if k not in wanted])
        present = {}
        store.write(pending, build)
    for key in keys:
        local = local_root / key
        if present.get(key) != local.stat().st_size:
            store.upload(local, key)
    if verify is not None:
        verify()
    store.upload(local_root / marker, marker)
    store.delete([pending])
    return True


def publish_tokenizer(store: ObjectStore, local: Path, overwrite: bool) -> None:
    """Put the data's tokenizer file at the top of the prefix, where training looks for it."""
    theirs = store.read(local.name)
    if theirs == local.read_bytes():
        return
    if theirs is not None and not overwrite:
        raise SproutError(
            f"{store.url_of(local.name)} is another tokenizer than {local}. Choose another --out_dir, or pass --overwrite to replace it (and rebuild the domains)."
        )
    store.upload(local, local.name)


def publish_domain(store: ObjectStore, local_root: Path, domain: str) -> bool:
    """Upload one prepared domain (``local_root/<domain>``), its ``meta.json`` last, so training
    sees it only once it is complete. False when the store already had it as it is."""
    folder = local_root / domain
    keys = sorted(
        str(p.relative_to(local_root))
        for p in folder.rglob("*")
        if p.is_file() and p.name != META_FILE and not p.name.startswith(".")
    )
    return upload_complete(store, local_root, keys, f"{domain}/{META_FILE}", owned=[f"{domain}/"])


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
