"""Server settings: every flag is also an environment variable (VISIONSEARCH_<NAME>), gathered in one frozen
dataclass. Precedence: command-line flag, then environment, then the default below."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "VISIONSEARCH_"
# embedder.backbones.BACKBONES's names, kept here so that reading a configuration does not import torch
# (tests/test_config.py checks that the two agree).
BACKBONE_NAMES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Config:
    address: str = _setting(
        "127.0.0.1:50051",
        "host:port to listen on; port 0 picks a free port. A non-loopback host needs --tls-cert, --tls-key "
        "and --api-keys, or --insecure",
    )
    tls_cert: str = _setting("", "PEM certificate chain of the server (TLS); reloaded when the file changes")
    tls_key: str = _setting("", "PEM private key of the server (TLS); reloaded when the file changes")
    tls_client_ca: str = _setting(
        "", "PEM CA certificates: with it, clients must present a certificate it signed (mTLS)"
    )
    api_keys: str = _setting(
        "",
        "key file of API keys with roles (visionsearch-admin keys add); reloaded on change or SIGHUP",
    )
    insecure: bool = _setting(
        False,
        "allow a non-loopback --address without TLS and API keys (anyone who can reach it has full access)",
    )
    metrics_address: str = _setting("", "host:port to serve Prometheus /metrics on; empty: no metrics")
    otlp_endpoint: str = _setting("", "OpenTelemetry collector (OTLP/gRPC) to export traces to; empty: none")
    milvus_uri: str = _setting(
        "",
        "Milvus for collections with backend 'milvus': http(s)://host:19530, or a .db file (Milvus Lite)",
    )
    milvus_token: str = _setting("", "Milvus credentials: user:password or an API token")
    trace: bool = _setting(False, "open OpenTelemetry spans for every call (implied by --otlp-endpoint)")
    data_dir: Path = _setting(Path("data"), "where collections are persisted")  # noqa: RUF009 - immutable
    server_mode: str = _setting(
        "aio", "aio (one event loop; calls that wait on models or disk go to a pool) or sync (a thread pool)"
    )
    workers: int = _setting(16, "threads for calls that wait (aio) or for every call (sync)")
    event_loop: str = _setting("asyncio", "the aio server's event loop: asyncio or uvloop")
    # Measured by bench/embed_throughput.py on 2 cores: two one-thread forwards side by side embed more than
    # twice the images per second of one two-thread forward, and in their own processes they do not wait for
    # the serving process's GIL between layers.
    torch_threads: int = _setting(1, "threads torch uses inside one forward pass")
    embed_processes: int = _setting(
        os.cpu_count() or 1, "embedding worker processes (forwards side by side); 0 runs them in the server"
    )
    # efficientnet_lite1: the cheapest backbone within 0.01 mean P@10 of the best on the tuning queries
    # (bench/results/zero_shot/calibration.json), at about half MobileNetV2's images/s (bench/backbones.py).
    backbone: str = _setting(
        "efficientnet_lite1",
        "image backbone of Embed, Tag and the default collection: mobilenet_v2 or efficientnet_lite0/1/2",
    )
    max_message_bytes: int = _setting(16 * 1024 * 1024, "largest request or response message")
    max_pixels: int = _setting(
        40_000_000, "largest image (width x height) accepted; guards decompression bombs"
    )
    max_k: int = _setting(1000, "largest k a search may ask for")
    fsync: bool = _setting(True, "fsync the write-ahead log before acknowledging an upsert or delete")
    snapshot_wal_bytes: int = _setting(
        64 * 1024 * 1024, "write a snapshot when a collection's log grows past this"
    )
    default_collection: bool = _setting(True, "build (once) and serve the embedded default collection")
    fashion_sample: int = _setting(
        1000, "Fashion-MNIST test photos in the default collection (spread over classes)"
    )
    # 2: EfficientNet-Lite1 on one thread embeds fastest per image at batch 2 (79 images/s on two streams,
    # 49 at batch 8; bench/embed_throughput.py's sweep), and a worker per core already overlaps batches.
    embed_max_batch: int = _setting(2, "images one dynamically batched torch forward may gather")
    embed_max_wait_ms: float = _setting(
        2.0, "how long the embedding worker waits for more images after the first of a batch"
    )
    embed_queue: int = _setting(
        64, "images that may wait for the embedding worker; beyond that calls get RESOURCE_EXHAUSTED"
    )
    grace_seconds: float = _setting(10.0, "on SIGTERM, how long in-flight calls may take to finish")
    handshake_timeout_s: float = _setting(
        10.0, "close a connection that has not completed its TLS and HTTP/2 handshake within this time"
    )
    max_decoding_pixels: int = _setting(
        0, "pixels all concurrent image decodes may hold at once (0: max_pixels, one largest image at a time)"
    )
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR")

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))  # accept a str from callers in code
        positive = (
            "workers",
            "torch_threads",
            "max_message_bytes",
            "max_pixels",
            "max_k",
            "snapshot_wal_bytes",
            "embed_max_batch",
            "embed_queue",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONE_NAMES)}, got {self.backbone!r}")
        if self.event_loop not in ("asyncio", "uvloop"):
            raise ValueError(f"event_loop must be asyncio or uvloop, got {self.event_loop!r}")
        if self.server_mode not in ("aio", "sync"):
            raise ValueError(f"server_mode must be aio or sync, got {self.server_mode!r}")
        if self.embed_processes < 0:
            raise ValueError(f"embed_processes must be >= 0, got {self.embed_processes}")
        if self.embed_max_wait_ms < 0:
            raise ValueError(f"embed_max_wait_ms must be >= 0, got {self.embed_max_wait_ms}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both (or neither)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mTLS) needs TLS: set tls_cert and tls_key too")
        if self.max_decoding_pixels < 0:
            raise ValueError(f"max_decoding_pixels must be >= 0, got {self.max_decoding_pixels}")
        if self.fashion_sample < 0:
            raise ValueError(f"fashion_sample must be >= 0, got {self.fashion_sample}")

    @classmethod
    def load(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        parser = argparse.ArgumentParser(
            prog="visionsearch-server",
            description="visionsearch gRPC server. Each flag can also be set as VISIONSEARCH_<FLAG>.",
        )
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            env_name = ENV_PREFIX + f.name.upper()
            help_text = f"{f.metadata['help']} (env {env_name}, default {f.default})"
            if f.type in ("bool", bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                parser.add_argument(flag, default=None, help=help_text)
        args = vars(parser.parse_args(argv))
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = args[f.name]
            if raw is None:
                raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.default, raw)
        return cls(**values)


def _parse(name: str, default: Any, raw: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        low = str(raw).strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true or false, got {raw!r}")
    try:
        return type(default)(raw)
    except ValueError:
        raise ValueError(f"{name}: expected {type(default).__name__}, got {raw!r}") from None
