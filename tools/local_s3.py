"""A real S3 protocol server on this machine (moto's server mode), for tests and benchmarks.

    python tools/local_s3.py            # runs until Ctrl-C and prints the variables to export

The server is a separate process on a free 127.0.0.1 port, so it speaks HTTP to boto3, obstore
and litdata exactly as a remote store would, with nothing leaving the machine. It checks
credentials: one IAM user with full rights is created through the server's first requests, and
every later request must be signed with that user's key (a wrong key is refused as AWS would).
moto's signature check fails on signed query strings holding ``/`` (getmoto/moto#5948: every
listing under a prefix is refused), so it is on only with ``check_credentials=True``, for the
tests of wrong keys; otherwise the server takes any key, and the user's key is used all the same.
Needs ``moto[server]`` (in the ``dev`` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

_SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key: the only unsigned-checked calls


@dataclass(frozen=True)
class LocalS3:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    pid: int  # the server's process, for tests that stop or kill the store

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point every client at this server, and nothing else."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,  # this machine's own AWS files play no part
            "AWS_CONFIG_FILE": os.devnull,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name="us-east-1",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_s3(check_credentials: bool = False, timeout: float = 30.0) -> Iterator[LocalS3]:
    """Start the server, create the user, yield how to reach it; stop the server afterwards."""
    import boto3

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_CALLS if check_credentials else 1 << 62)}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the moto S3 server did not start on {endpoint} (exit status {server.poll()}); is moto[server] installed?"
                    ) from None
                time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="sprout")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="sprout", PolicyName="everything", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="sprout")["AccessKey"]
        yield LocalS3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], server.pid)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGCONT)  # a test may have stopped it
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    with local_s3() as s3:
        print("\n".join(f"export {k}={v}" for k, v in s3.env().items()), flush=True)
        print("# create a bucket: aws s3 mb s3://sprout-data   (Ctrl-C stops the server)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
