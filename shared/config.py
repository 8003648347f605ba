"""Settings, read from `RANKSTREAM_*` environment variables (CLI flags override them)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EMBEDDED_NATS_PORT = 4222
# One set of message-size limits, each inside the next:
#   gateway_max_body_bytes (4 MiB) < max_message_bytes (8 MiB) <= the server's max_payload (8 MiB)
# The server's `max_payload` is what the embedded server (workers/local.py) and every shipped
# config (infra/nats/nats-server.conf, infra/k8s/nats/nats-cluster.yaml) set: 8 MiB, the most
# nats-server takes without a warning (its own default, 1 MiB, is too small for a deep
# candidate set). A gateway body becomes a message a little larger than itself (an id per
# document, the reply subject), hence the room between the first two. A message the connected
# server cannot carry is refused by the client before it is published (RankstreamClient).
NATS_MAX_PAYLOAD_BYTES = 8 << 20
# JetStream's fsync policy in the servers rankstream starts itself (every shipped config sets
# the same): `always` syncs each write before the ack, so an acknowledged query survives a
# power loss. nats-server's default syncs every 2 minutes, and Jepsen (NATS 2.12.1) lost 14%
# of acknowledged messages with it. `default` leaves the server's choice; a duration
# (`10s`, `2m`) sets the period.
NATS_SYNC_ALWAYS = "always"
NATS_SYNC_SERVER_DEFAULT = "default"
NATS_SYNC_INTERVAL_PATTERN = r"^(always|default|[0-9]+(ms|s|m|h))$"
# URL schemes nats-py connects with; `tls` and `wss` turn TLS on.
NATS_SCHEMES = ("nats", "tls", "ws", "wss")
TLS_SCHEMES = ("tls", "wss")


def split_nats_servers(url: str) -> list[str]:
    """`RANKSTREAM_NATS_URL` as a list of server URLs: comma-separated, blanks around each
    ignored, a bare `host:port` read as `nats://host:port` (as nats-py does)."""
    return [
        server if "://" in server else f"nats://{server}"
        for server in (part.strip() for part in url.split(","))
        if server
    ]


def _without_credentials(server: str) -> str:
    """A server URL fit for an error message (no `user:password@`)."""
    scheme, _, rest = server.rpartition("://")
    host = rest.rpartition("@")[2]
    return f"{scheme}://***@{host}" if "@" in rest else server


class Settings(BaseSettings):
    """Everything a worker, the client or a CLI verb can be told.

    `nats_url=None` means "local": `rankstream up`/`demo` start an embedded nats-server on
    `embedded_nats_port`, and clients connect to it on loopback.
    """

    # hide_input_in_errors: a bad setting's error must not echo it (a NATS URL, a token
    # list may carry secrets).
    model_config = SettingsConfigDict(
        env_prefix="RANKSTREAM_", extra="ignore", hide_input_in_errors=True
    )

    # --- NATS ---
    # One server or several, comma-separated (`nats://a:4222,nats://b:4222`): the members of
    # one NATS cluster, tried in turn at connect and on every reconnect.
    nats_url: str | None = None
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    embedded_nats_port: int = DEFAULT_EMBEDDED_NATS_PORT
    # The embedded/local servers' `sync_interval` (NATS_SYNC_ALWAYS above); a server at
    # RANKSTREAM_NATS_URL keeps its own config's.
    nats_sync_interval: str = Field(default=NATS_SYNC_ALWAYS, pattern=NATS_SYNC_INTERVAL_PATTERN)
    subject_prefix: str = Field(default="rankstream", pattern=r"^[A-Za-z0-9_-]+$")
    # Copies of each JetStream stream the workers create: 1 on one server, 3 on a cluster.
    stream_replicas: int = Field(default=1, ge=1, le=5)

    # --- NATS security (rankstream/wire/connection.py turns these into connection arguments) ---
    # One way to authenticate at most: user/password, token, an NKey seed file, or a `.creds`
    # file (a user JWT and its seed); NKeys and `.creds` need the `nkeys` package.
    nats_nkey_seed_file: Path | None = None
    nats_creds_file: Path | None = Field(default=None, validate_default=True)
    # TLS is on when a CA file is given (the server's certificate is verified against it) or
    # the URL is `tls://` (verified against the system's CAs). A client certificate and its
    # key are for servers that verify clients (`verify: true`).
    nats_tls_ca_file: Path | None = None
    nats_tls_cert_file: Path | None = None
    nats_tls_key_file: Path | None = Field(default=None, validate_default=True)
    # The name the server's certificate must carry, when it differs from the URL's host.
    nats_tls_hostname: str | None = None

    @field_validator("nats_url")
    @classmethod
    def _nats_servers_parse(cls, url: str | None) -> str | None:
        """Each comma-separated server must be a URL nats-py can connect to, and all of them
        TLS or none (one connection fails over between them with one TLS setting). Messages
        never repeat a password that may be written into a URL."""
        if url is None:
            return None
        servers = split_nats_servers(url)
        if not servers:
            raise ValueError("RANKSTREAM_NATS_URL names no server")
        for server in servers:
            shown = _without_credentials(server)
            try:
                parts = urlsplit(server)
                parts.port  # noqa: B018 - raises ValueError on a port that is not a number
            except ValueError:
                raise ValueError(f"RANKSTREAM_NATS_URL: {shown} has no valid port") from None
            if parts.scheme not in NATS_SCHEMES:
                raise ValueError(
                    f"RANKSTREAM_NATS_URL: {shown}: scheme {parts.scheme!r} is not one of "
                    f"{', '.join(NATS_SCHEMES)}"
                )
            if not parts.hostname:
                raise ValueError(f"RANKSTREAM_NATS_URL: {shown} names no host")
        if len({urlsplit(server).scheme in TLS_SCHEMES for server in servers}) > 1:
            raise ValueError(
                "RANKSTREAM_NATS_URL mixes TLS (tls://, wss://) and plain servers: "
                "the servers of one cluster are reached the same way"
            )
        return url

    # Checked field by field, never on the whole model: a model-level error would print every
    # input, the password and token included.
    @field_validator(
        "nats_nkey_seed_file", "nats_creds_file", "nats_tls_ca_file", "nats_tls_cert_file",
        "nats_tls_key_file",
    )  # fmt: skip
    @classmethod
    def _nats_file_exists(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"RANKSTREAM_{(info.field_name or '').upper()}={path}: no such file")
        needs_nkeys = info.field_name in ("nats_nkey_seed_file", "nats_creds_file")
        if path is not None and needs_nkeys and find_spec("nkeys") is None:
            raise ValueError("NKey and .creds authentication need: pip install 'nats-py[nkeys]'")
        return path

    @field_validator("nats_creds_file")
    @classmethod
    def _one_nats_auth(cls, creds: Path | None, info: ValidationInfo) -> Path | None:
        given = info.data
        if (given.get("nats_user") is None) != (given.get("nats_password") is None):
            raise ValueError("RANKSTREAM_NATS_USER and RANKSTREAM_NATS_PASSWORD go together")
        ways = [
            name
            for name, value in (
                ("RANKSTREAM_NATS_USER/PASSWORD", given.get("nats_user")),
                ("RANKSTREAM_NATS_TOKEN", given.get("nats_token")),
                ("RANKSTREAM_NATS_NKEY_SEED_FILE", given.get("nats_nkey_seed_file")),
                ("RANKSTREAM_NATS_CREDS_FILE", creds),
            )
            if value is not None
        ]
        if len(ways) > 1:
            raise ValueError(f"set one way to authenticate to NATS, not {' and '.join(ways)}")
        return creds

    @field_validator("nats_tls_key_file")
    @classmethod
    def _cert_with_key(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        if (info.data.get("nats_tls_cert_file") is None) != (key is None):
            raise ValueError(
                "RANKSTREAM_NATS_TLS_CERT_FILE and RANKSTREAM_NATS_TLS_KEY_FILE go together: "
                "a client certificate is presented with its private key"
            )
        return key

    @field_validator("max_request_pairs")
    @classmethod
    def _request_fits_the_worker(cls, pairs: int | None, info: ValidationInfo) -> int | None:
        inflight = info.data.get("max_inflight_pairs")
        if pairs is not None and inflight is not None and pairs > inflight:
            raise ValueError(
                f"RANKSTREAM_MAX_REQUEST_PAIRS ({pairs}) exceeds RANKSTREAM_MAX_INFLIGHT_PAIRS "
                f"({inflight}): a request that large could never be admitted"
            )
        return pairs

    # --- models ---
    # "packaged:<name>", a Hugging Face id, or a local path (see rankstream/models/registry.py).
    embedder_model: str = "packaged:all-MiniLM-L6-v2"
    reranker_model: str = "packaged:ms-marco-MiniLM-L-12-v2-int8"
    # The `student@K` stage's cross-encoder, e.g. a folder `rankstream distill` wrote (its
    # `onnx-int8/` subfolder for CPU serving); None: no student stage.
    student_model: str | None = None
    # The `maxsim@K` stage's token-embedding model (a sentence-transformers
    # MultiVectorEncoder folder or Hugging Face id); None: no maxsim stage.
    late_interaction_model: str | None = None
    device: str = "cpu"
    dtype: str = Field(default="float32", pattern=r"^(float32|float16|bfloat16)$")
    max_length: int = Field(default=512, ge=16, le=8192)
    model_cache_dir: Path = Path.home() / ".cache" / "rankstream"

    # --- rerank micro-batching ---
    max_batch_pairs: int = Field(default=64, ge=1)
    # Padded tokens per batch. Small on CPU, where pairs/s peaks at one or two pairs per call
    # (`rankstream bench` measures it: README, "Throughput"); raise it on a GPU, where bigger
    # batches are the whole gain.
    max_batch_tokens: int = Field(default=768, ge=16)
    # How long the oldest pair may wait for company while the model is idle. 0 = continuous
    # batching: a batch is whatever queued while the model was busy, so an idle worker adds
    # no delay and a busy one still fills its batches.
    max_batch_wait_ms: float = Field(default=0.0, ge=0)
    max_inflight_requests: int = Field(default=64, ge=1)
    # Pairs a rerank worker holds at once (queued + in the model); past it, it stops pulling.
    max_inflight_pairs: int = Field(default=2048, ge=1)
    # Pairs one request's cascade may score, every stage and MaxP window counted; a plan over
    # it is refused at admission. At most max_inflight_pairs, so any admitted request fits
    # (None: max_inflight_pairs; see `request_pair_cap`).
    max_request_pairs: int | None = Field(default=None, ge=1)
    # Priority lanes: a request waiting this long moves up a lane, so batch work never starves
    # behind interactive traffic (0: never).
    priority_ageing_s: float = Field(default=5.0, ge=0)
    # Padded tokens in a batch of a less urgent lane while interactive requests are about (one
    # submitted in the last 2 s). A model call cannot be interrupted, so this is the most model
    # work an interactive request arriving mid-batch waits for (0: max_batch_tokens).
    priority_yield_tokens: int = Field(default=512, ge=0)
    # How many of the oldest queued pairs are grouped by length (0 = 4 x max_batch_pairs).
    batch_sort_window: int = Field(default=0, ge=0)
    # What a request whose deadline passes before scoring gets: its retrieval order marked
    # `degraded`, or an `expired` error.
    on_deadline: Literal["degraded", "expired"] = "degraded"
    # Workers act this long before a request's deadline (at most a quarter of its timeout),
    # so that a degraded, expired or overloaded answer reaches a client that gives up at the
    # deadline itself.
    deadline_margin_ms: float = Field(default=250.0, ge=0)
    # Answer `overloaded` at once when the pairs queued ahead would not be scored before the
    # request's deadline (at the model's recent speed), instead of letting it wait and miss.
    shed_load: bool = True
    # How long an idle worker's JetStream fetch lingers before asking again. A message that
    # arrives meanwhile is delivered at once, whatever this is; a short wait only costs the
    # CPU of asking again.
    fetch_wait_ms: float = Field(default=1000.0, gt=0)

    # --- delivery and limits ---
    ack_wait_s: float = Field(default=60.0, gt=0)
    max_deliver: int = Field(default=5, ge=1)
    # Delay before redelivering after an unexpected failure, by delivery (last one repeats).
    retry_backoff_s: list[float] = Field(default=[1.0, 5.0, 15.0, 30.0], min_length=1)
    # Workers refuse a message over this (see NATS_MAX_PAYLOAD_BYTES for how it fits the rest).
    max_message_bytes: int = Field(default=NATS_MAX_PAYLOAD_BYTES, ge=1024)
    max_query_chars: int = Field(default=2048, ge=1)
    # On SIGTERM: stop pulling, finish and acknowledge held messages within this many seconds.
    shutdown_grace_s: float = Field(default=25.0, ge=0)

    # --- retrieval ---
    max_embed_batch: int = Field(default=32, ge=1)
    max_embed_wait_ms: float = Field(default=0.0, ge=0)  # as max_batch_wait_ms
    default_top_k: int = Field(default=10, ge=1)
    default_depth: int | Literal["auto"] = 20
    max_depth: int = Field(default=1000, ge=1)
    default_timeout_ms: int = Field(default=30_000, ge=1)
    # The longest timeout a request may ask for (a longer one is refused at admission).
    max_timeout_ms: int = Field(default=600_000, ge=1)
    default_retrieval: Literal["dense", "bm25", "hybrid"] = "dense"
    # Hybrid search without a fitted weight (the request's or the profile's): weighted
    # reciprocal rank fusion of the dense and BM25 lists (retrieval/fusion.py); every fusion
    # reads each list's top `hybrid_fusion_depth`.
    hybrid_dense_weight: float = Field(default=1.0, ge=0)
    hybrid_bm25_weight: float = Field(default=1.0, ge=0)
    hybrid_fusion_depth: int = Field(default=100, ge=1)
    # Depth `auto`: a policy maps the retrieval's confidence to a depth in [0, max_auto_depth]
    # (planning/adaptive_depth.py), fitted on your collection's train split (`rankstream
    # calibrate-depth`, or inside a profile); None and no profile: `auto` is refused.
    max_auto_depth: int = Field(default=50, ge=1)
    auto_depth_policy: Path | None = None
    # A profile written by `rankstream tune` (rankstream.planning.profile): its pipeline is
    # the default plan, its depth policy resolves `auto` (and replaces auto_depth_policy).
    profile: Path | None = None

    # --- token budgets (rerank) ---
    # Document tokens a pair may hold (the query is never cut); None: what max_length leaves.
    default_max_doc_tokens: int | None = Field(default=None, ge=8)
    # A document over the budget: `head` keeps its first tokens; `maxp` scores windows of the
    # budget's size (half-overlapping, at most `maxp_max_windows`) and keeps the best score.
    default_long_docs: Literal["head", "maxp", "best"] = "head"
    maxp_max_windows: int = Field(default=4, ge=1, le=64)
    # Scorers a request's stages may name besides `ce` (the reranker above), loaded at start.
    preload_scorers: list[str] = Field(default_factory=list)

    # --- result cache (a NATS JetStream key-value bucket shared by every replica) ---
    cache_ttl_s: float = Field(default=600.0, ge=0)  # 0 turns the cache off
    cache_max_bytes: int = Field(default=256 << 20, ge=1 << 20)

    # --- stream bounds (rankstream.wire.streams): disk a flood of requests can take ---
    # Results: the oldest answers (long delivered) are dropped when full.
    results_max_bytes: int = Field(default=256 << 20, ge=1 << 20)
    # Dead letters: new ones are refused when full (the first ones, the evidence, are kept);
    # each refused one is logged and counted in rankstream_dead_letters_dropped_total.
    dead_letters_max_bytes: int = Field(default=256 << 20, ge=1 << 20)
    # Semantic tier: reuse the answer of a cached query whose embedding is at least this
    # cosine-similar (same table, models and pipeline); None turns it off.
    semantic_cache_threshold: float | None = Field(default=None, gt=0, le=1)

    # --- LanceDB ---
    lancedb_uri: str = str(Path.home() / ".cache" / "rankstream" / "lancedb")
    table: str = "documents"
    # Smaller tables are scanned; why small tables get an index: DocumentStore.ensure_ann_index.
    ann_min_rows: int = Field(default=1_000, ge=1)
    # How stale a worker's view of the table may be: rows another process (`rankstream
    # index`) writes are searched within this many seconds (LanceDB read consistency).
    read_consistency_s: float = Field(default=5.0, ge=0)

    # --- HTTP gateway (`rankstream gateway`): Cohere, Jina/vLLM and TEI rerank APIs ---
    # Loopback unless told otherwise: set RANKSTREAM_GATEWAY_HOST=0.0.0.0 (with
    # RANKSTREAM_GATEWAY_TOKENS) to serve other machines.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    # Bearer tokens the gateway accepts (a JSON list in the environment); empty: no auth.
    gateway_tokens: list[SecretStr] = Field(default_factory=list)
    # Under max_message_bytes, with room for what the gateway adds (NATS_MAX_PAYLOAD_BYTES).
    gateway_max_body_bytes: int = Field(default=4 << 20, ge=1024)
    # Documents (texts) one rerank request may bring, on every route; more get 413. None: as
    # many as the workers take (`max_depth` and `request_pair_cap`, 1,000 by default: what
    # Cohere documents; Jina, vLLM and TEI promise no more, TEI's 32 is a server setting).
    gateway_max_texts: int | None = Field(default=None, ge=1)
    # Readiness (`/readyz`, `/health`): how long one check of NATS and the workers' consumers
    # is reused, so a storm of probes asks NATS at most once per period.
    gateway_ready_cache_s: float = Field(default=1.0, ge=0)
    # The workers the gateway is ready without: a rerank-only deployment (the rerank APIs,
    # no `/v1/search`) sets ["rerank"].
    gateway_ready_workers: list[Literal["retrieval", "rerank"]] = Field(
        default=["retrieval", "rerank"], min_length=1
    )
    # One log line per HTTP request (logger `rankstream.gateway.access`): method, path,
    # status, milliseconds.
    gateway_access_log: bool = True

    @field_validator("gateway_tokens")
    @classmethod
    def _tokens_not_blank(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        # A blank token would let `Authorization: Bearer ` (nothing after it) through.
        if any(not token.get_secret_value().strip() for token in tokens):
            raise ValueError(
                "a gateway token is empty or blank: remove it from RANKSTREAM_GATEWAY_TOKENS "
                "(e.g. '[\"s3cret\"]'), or leave the list empty to run without auth"
            )
        return tokens

    @field_validator("gateway_max_body_bytes")
    @classmethod
    def _body_fits_a_message(cls, limit: int, info: ValidationInfo) -> int:
        message_limit = info.data.get("max_message_bytes")
        if message_limit is not None and limit >= message_limit:
            raise ValueError(
                f"RANKSTREAM_GATEWAY_MAX_BODY_BYTES ({limit}) must be under "
                f"RANKSTREAM_MAX_MESSAGE_BYTES ({message_limit}): a body becomes a larger message"
            )
        return limit

    # --- observability ---
    metrics_port: int = Field(default=9464, ge=0, le=65535)

    @property
    def effective_nats_url(self) -> str:
        """The configured URL (one server or several, comma-separated), else the embedded
        server's."""
        return self.nats_url or f"nats://127.0.0.1:{self.embedded_nats_port}"

    @property
    def request_pair_cap(self) -> int:
        """The most pairs one request may have scored (`max_request_pairs`, by default
        `max_inflight_pairs`)."""
        return min(self.max_request_pairs or self.max_inflight_pairs, self.max_inflight_pairs)

    @property
    def nats_servers(self) -> list[str]:
        """`effective_nats_url` as one URL per server."""
        return split_nats_servers(self.effective_nats_url)
