"""An object-store prefix as a folder of files: the few calls Sprout makes, and errors a user can act on.

``data.data_dir`` and ``sprout prepare --out_dir`` take a URL (``s3://bucket/prefix`` or
any other scheme litdata streams from: ``gs://``, ``azure://``, ``r2://``, ``hf://``).

S3 (and every S3-compatible store) goes through boto3, so credentials and the endpoint come from
where every AWS tool looks (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/{credentials,config}``, ``AWS_ENDPOINT_URL``
or ``AWS_ENDPOINT_URL_S3``), with short connect timeouts: a wrong bucket or key fails in
seconds with one paragraph naming the URL, while a store that does not answer (refused, reset,
timed out, 5xx, throttled) is waited for up to ``retry_seconds`` (``sprout.data.store.retry``). No message ever contains a credential. Other schemes are read through litdata's own
downloaders and cannot be listed or written: name ``data.domains`` for them.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from sprout.data.store.retry import DEFAULT_SECONDS, patiently
from sprout.errors import SproutError

READ_TIMEOUT_SECONDS = 60  # a stalled store counts as failing (and is retried) after this long without a byte
# litdata's downloaders (litdata.streaming.downloader._DOWNLOADERS), minus its "local:" alias
STREAM_SCHEMES = ("s3", "gs", "azure", "r2", "hf")
_CREDENTIAL_HELP = (
    "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys), or AWS_PROFILE "
    "naming a profile in ~/.aws/credentials"
)
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


def configured_endpoint() -> str | None:
    """The S3 endpoint the environment names (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``), as boto3 reads it."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


class ObjectStore:
    """A prefix in object storage, as a folder of files addressed by relative keys."""

    def __init__(self, url: str, retry_seconds: float = DEFAULT_SECONDS) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in STREAM_SCHEMES or not parsed.netloc:
            raise SproutError(
                f"{url} is not an object-store URL: use s3://BUCKET/PREFIX (or {', '.join(s + '://' for s in STREAM_SCHEMES[1:])})."
            )
        self.url = url.rstrip("/")
        self.scheme = parsed.scheme
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.retry_seconds = retry_seconds  # how long a transient failure is retried (sprout.data.store.retry)

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

        config = Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=READ_TIMEOUT_SECONDS
        )
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
        return configured_endpoint() or "AWS's default"

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return patiently(
                self.url, f"{what}, endpoint {self.endpoint}", self.retry_seconds, lambda: fn(*args, **kwargs)
            )
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
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            pages = patiently(self.url, "listing", self.retry_seconds, lambda: list(paginator.paginate(**kwargs)))
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
            return patiently(
                self.url_of(key),
                "reading",
                self.retry_seconds,
                lambda: self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read(),
            )
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

                downloader = get_downloader(self.url, str(local.parent), [])
                try:
                    patiently(
                        self.url_of(key),
                        "downloading",
                        self.retry_seconds,
                        lambda: downloader.download_file(self.url_of(key), str(tmp)),
                    )
                except FileNotFoundError:
                    return False
                except SproutError:  # the store did not come back within retry_seconds
                    raise
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
