"""The worker's Kafka security properties (librdkafka names, runtime/kafka_security.py) translated for
Faust/aiokafka: `broker_credentials` for `faust.App(broker_credentials=...)`, with an ssl context built from
the same CA, client certificate and key files, so the views need no settings of their own."""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import faust
from faust.types.auth import CredentialsT

from workers.contract.errors import ConfigError

__all__ = ["broker_credentials", "ssl_context"]

_SASL = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def ssl_context(properties: Mapping[str, str]) -> ssl.SSLContext:
    """The CA, client certificate and key of librdkafka's `ssl.*` properties, for an aiokafka client."""
    context = ssl.create_default_context(cafile=properties.get("ssl.ca.location") or None)
    if cert := properties.get("ssl.certificate.location"):
        context.load_cert_chain(cert, properties.get("ssl.key.location") or None,
                                properties.get("ssl.key.password") or None)
    if properties.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    return context


def broker_credentials(properties: Mapping[str, str]) -> CredentialsT | None:
    """None for PLAINTEXT; SSL (optionally mTLS) or SASL PLAIN/SCRAM over SSL or plaintext otherwise."""
    protocol = properties.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(properties) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    mechanism = properties.get("sasl.mechanism", "PLAIN").upper()
    if mechanism not in _SASL:
        raise ConfigError(f"sasl.mechanism {mechanism}: the views (aiokafka) take {', '.join(_SASL)} only")
    return faust.SASLCredentials(username=properties.get("sasl.username"),
                                 password=properties.get("sasl.password"), mechanism=mechanism,
                                 ssl_context=context)  # fmt: skip
