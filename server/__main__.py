"""``python -m server`` / ``visionsearch-server``: run the gRPC server."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from embedder.errors import AssetMissing
from server import logs, memory
from server.app import AddressUnavailable, serve
from server.auth import KeyFileError
from server.config import Config
from server.tls import TlsConfigError, UnsafeBind


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = Config.load(argv)
    except ValueError as e:
        print(f"visionsearch-server: {e}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    memory.return_large_frees_to_the_os()
    try:
        serve(config)
    except (UnsafeBind, TlsConfigError, KeyFileError) as e:
        print(f"visionsearch-server: {e}", file=sys.stderr)
        return 2
    except (AssetMissing, AddressUnavailable) as e:
        print(f"visionsearch-server: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
