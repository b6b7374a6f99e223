"""Check prepared data against the checksums its indexes record, one line per domain:

python tools/verify_data.py data/tiny
python tools/verify_data.py s3://my-bucket/prepared --domains '[code, text]'
"""

from __future__ import annotations

from app.data.verify import verify
from tools.cli import run_tool


def main(args: list[str] | None = None) -> None:
    run_tool(verify, args)


if __name__ == "__main__":
    main()
