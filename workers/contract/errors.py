"""One error root for the worker; `retriable` says whether waiting and trying again can help."""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "DeliveryFailed",
    "EnrichError",
    "InferenceFailed",
    "KafkaOperationFailed",
    "KafkaSecurityError",
    "ModelMismatch",
    "ReasonCode",
    "ValidationFailed",
]


class EnrichError(Exception):
    """Root of every error the worker raises on purpose."""

    retriable: bool = False
    exit_code: int = 2  # of the `enrich` command that stops on it


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

    def __init__(self, topic: str, key: bytes | None, reason: str) -> None:
        key_text = key.decode("utf-8", "replace") if key is not None else None
        super().__init__(
            f"delivery to topic {topic!r} (key {key_text!r}) failed: {reason}. Nothing past the source "
            "offset was committed; restart the worker to retry from the last committed offset."
        )
        self.topic = topic
        self.key = key
        self.reason = reason


class KafkaOperationFailed(EnrichError):
    """A Kafka client call failed (consume, commit, transaction); wraps the library error with context."""

    def __init__(self, operation: str, detail: str, *, retriable: bool = False) -> None:
        super().__init__(f"kafka {operation} failed: {detail}")
        self.operation = operation
        self.retriable = retriable


class ConfigError(EnrichError):
    """Invalid configuration; the message names the setting (env var / flag) to fix."""


class ModelMismatch(EnrichError):
    """The model directory or served model does not fit the worker's settings (buckets, outputs, labels)."""


class KafkaSecurityError(ConfigError):
    """The broker refused the credentials, or the TLS handshake failed: retrying cannot help.

    Its own exit code (`enrich worker`, `tail`, `produce-sample`), so a deployment tells a wrong secret
    or CA from an unreachable broker at a glance."""

    exit_code = 6
