"""One error root for the worker; `retriable` says whether waiting and trying again can help, `exit_code`
which documented exit status (`ExitCode`) an `enrich` command ends with when the error stops it."""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "DeliveryFailed",
    "EnrichError",
    "ExitCode",
    "InferenceFailed",
    "KafkaOperationFailed",
    "KafkaSecurityError",
    "ModelMismatch",
    "ReasonCode",
    "ServiceUnreachable",
    "TopicMissing",
    "ValidationFailed",
]


class ExitCode(IntEnum):
    """The exit statuses of every `enrich` command, in one place (docs/operations.md has the table).

    Distinct codes let an orchestrator or a script tell "fix the settings" (3, 5) from "wait for the
    service" (4) without reading logs; 128+N stays the shell's "killed by signal N".
    """

    OK = 0
    ERROR = 1  # unexpected error (a traceback is printed); chaos: a scenario could not run
    USAGE = 2  # argparse: unknown flag, bad flag value
    CONFIG = 3  # bad setting, missing model file, model/label-map mismatch
    UNREACHABLE = 4  # Kafka (or Triton) did not answer at start within the bounded wait
    MISSING_TOPIC = 5  # the broker answered but a configured topic does not exist
    DATA_LOSS = 6  # chaos: a produced listing never came out
    CHECK_FAILED = 7  # chaos: another check failed (duplicates beyond the bound, unknown records...)


class EnrichError(Exception):
    """Root of every error the worker raises on purpose."""

    retriable: bool = False
    exit_code: ExitCode = ExitCode.ERROR


class BackendUnavailable(EnrichError):
    """Triton / ONNX Runtime not reachable or timed out; the pipeline pauses and retries."""

    retriable = True


class InferenceFailed(EnrichError):
    """The backend answered, but with an error or malformed outputs: retrying the same batch won't help."""

    retriable = False


class ReasonCode:
    """Dead-letter reason codes (dead-letter v1 `error.code`)."""

    EMPTY_PAYLOAD = "empty_payload"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    SCHEMA_VIOLATION = "schema_violation"
    MISSING_KEY = "missing_key"
    KEY_MISMATCH = "key_mismatch"


class ValidationFailed(EnrichError):
    """An input record that can never be processed; it goes to the dead-letter topic with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class DeliveryFailed(EnrichError):
    """The broker did not acknowledge a produced record; offsets must not be committed past it."""

    def __init__(
        self, topic: str, key: bytes | None, reason: str, *, fatal: bool = False, fenced: bool = False
    ) -> None:
        key_text = key.decode("utf-8", "replace") if key is not None else None
        super().__init__(
            f"delivery to topic {topic!r} (key {key_text!r}) failed: {reason}. Nothing past the source "
            "offset was committed; restart the worker to retry from the last committed offset."
        )
        self.topic = topic
        self.key = key
        self.reason = reason
        self.fatal, self.fenced = fatal, fenced  # librdkafka's: the producer is unusable / was fenced


class KafkaOperationFailed(EnrichError):
    """A Kafka client call failed (consume, commit, transaction); wraps the library error with context."""

    def __init__(
        self,
        operation: str,
        detail: str,
        *,
        retriable: bool = False,
        fatal: bool = False,
        fenced: bool = False,
    ) -> None:
        super().__init__(f"kafka {operation} failed: {detail}")
        self.operation = operation
        self.retriable = retriable
        self.fatal, self.fenced = fatal, fenced  # librdkafka's: the producer is unusable / was fenced


class ConfigError(EnrichError):
    """Invalid configuration; the message names the setting (env var / flag) to fix."""

    exit_code = ExitCode.CONFIG


class ModelMismatch(EnrichError):
    """The model directory or served model does not fit the worker's settings (buckets, outputs, labels)."""

    exit_code = ExitCode.CONFIG


class ServiceUnreachable(EnrichError):
    """A required service did not answer at start within the bounded wait; the message names the setting.

    Only at start: once running, the worker waits and retries an outage instead (never exits, never drops).
    """

    exit_code = ExitCode.UNREACHABLE


class TopicMissing(EnrichError):
    """The broker answered, but a configured topic does not exist (topics are never auto-created)."""

    exit_code = ExitCode.MISSING_TOPIC


class KafkaSecurityError(ConfigError):
    """The broker refused the credentials, or the TLS handshake failed: retrying cannot help (a
    configuration error, exit 3, the message naming the setting: never a retry loop)."""
