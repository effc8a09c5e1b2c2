"""Operator tools on a stopped node's store (the node holds the LevelDB lock while running).

    python -m storage verify DIR             # full checksum + whole-chain scan
    python -m storage find-marker DIR HEX    # where do these bytes occur, files included

Exit status 0 when the check passes, 1 with one line on stderr when it does
not, 2 when the store cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ledger.errors import CorruptionError, LedgerError
from storage.scan import find_marker
from storage.store import open_leveldb


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check every checksum and the chain's shape")
    verify.add_argument("dir")
    find = sub.add_parser("find-marker", help="search keys, values and raw files for bytes")
    find.add_argument("dir")
    find.add_argument("marker_hex")
    args = parser.parse_args(argv)
    try:
        with open_leveldb(args.dir, create=False) as store:
            if args.command == "verify":
                report = store.verify()
                print(
                    json.dumps(
                        {
                            "keys": report.keys,
                            "bytes": report.bytes,
                            "base_height": report.base_height,
                            "last_height": report.last_height,
                            "namespaces": dict(report.per_namespace),
                        }
                    )
                )
                return 0
            try:
                marker = bytes.fromhex(args.marker_hex)
            except ValueError:
                print("error: marker is not hex", file=sys.stderr)
                return 2
            hits = find_marker(store.kv, marker, leveldb_dir=args.dir)
    except CorruptionError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except LedgerError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    for hit in hits:
        print(hit)
    if hits:
        print(f"error: marker found in {len(hits)} places", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
