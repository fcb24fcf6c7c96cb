"""What a secured local stack needs: certificates made on the spot with openssl, SCRAM users, and the
client properties file a worker (or any `enrich` command) is pointed at with ENRICH_KAFKA_PROPERTIES_FILE.

    security = StackSecurity.create(run_dir / "security")  # a CA, a broker/redis certificate, passwords
    KafkaCluster(..., security=security)   # SASL_SSL listener, SCRAM-SHA-512 users `admin` and `enrich`
    RedisServer(..., security=security)    # TLS only (--port 0), ACL user `enrich`, default user off

EC P-256 keys: generating the lot takes ~50 ms, where RSA-2048 took ~10x that on this machine. The broker
gets a PKCS#12 keystore (Kafka's PEM keystore file would need an encrypted PKCS#8 key) and reads the CA as
a PEM truststore. Passwords are random per stack and live only in files under the stack's run folder.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devtools.services.process import ServiceStartError

__all__ = ["StackSecurity", "make_ca"]

MECHANISM = "SCRAM-SHA-512"
CLIENT_USER = "enrich"
ADMIN_USER = "admin"


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServiceStartError(f"openssl {args[0]} failed ({done.returncode}): {done.stderr.strip()}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path),
             cwd=path.parent)


def make_ca(directory: Path, name: str = "enrich-local-ca") -> Path:
    """A self-signed CA (`ca.pem`, `ca.key`) in `directory`; returns the certificate's path."""
    directory.mkdir(parents=True, exist_ok=True)
    _key(directory / "ca.key")
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "7",
             "-subj", f"/CN={name}", cwd=directory)
    return directory / "ca.pem"


@dataclass(frozen=True)
class StackSecurity:
    """The files of one secured stack, all under `directory`."""

    directory: Path

    @classmethod
    def create(cls, directory: Path) -> StackSecurity:
        """CA, a server certificate for 127.0.0.1/localhost (Kafka and Redis), its PKCS#12 keystore, and
        random passwords for the keystore, the Kafka users and the Redis user."""
        d = Path(directory).resolve()
        make_ca(d)
        _key(d / "server.key")
        _openssl("req", "-new", "-key", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "server.pem", "-days", "7", "-extfile", "san.ext", cwd=d)
        for name in ("keystore", ADMIN_USER, CLIENT_USER, "redis"):
            path = d / f"{name}.password"
            path.write_text(secrets.token_hex(16) + "\n")
            path.chmod(0o600)
        security = cls(d)
        _openssl("pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca.pem",
                 "-out", "server.p12", "-passout", f"pass:{security.password('keystore')}", cwd=d)
        security.client_properties_path.write_text(
            "# written by `enrich services up --secure`: point ENRICH_KAFKA_PROPERTIES_FILE here\n"
            + "".join(f"{k}={v}\n" for k, v in security.client_properties(secret_file=True).items())
        )
        return security

    # ---- files ---------------------------------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def client_properties_path(self) -> Path:
        return self.directory / "client.properties"

    def password_path(self, name: str) -> Path:
        return self.directory / f"{name}.password"

    def password(self, name: str) -> str:
        return self.password_path(name).read_text().strip()

    # ---- Kafka ---------------------------------------------------------------------------------------------

    def client_properties(self, user: str = CLIENT_USER, *, secret_file: bool = False) -> dict[str, str]:
        """librdkafka properties for `user` over SASL_SSL; `secret_file`: the password as `_FILE`."""
        password = ({"sasl.password_FILE": str(self.password_path(user))} if secret_file
                    else {"sasl.password": self.password(user)})
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": MECHANISM, "sasl.username": user,
                **password, "ssl.ca.location": str(self.ca_path)}

    def scram_format_args(self) -> list[str]:
        """`kafka-storage format` arguments creating the SCRAM users before the broker first starts."""
        return [arg for user in (ADMIN_USER, CLIENT_USER)
                for arg in ("--add-scram", f"{MECHANISM}=[name={user},password={self.password(user)}]")]

    def broker_properties(self, broker_port: int, controller_port: int, host: str) -> dict[str, str]:
        """A SASL_SSL listener for clients and brokers (SCRAM, user `admin` between brokers); the controller
        listener stays PLAINTEXT on loopback."""
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN_USER}" '
                f'password="{self.password(ADMIN_USER)}";')
        return {
            "listeners": f"SASL_SSL://{host}:{broker_port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{host}:{broker_port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.directory / "server.p12"),
            "ssl.keystore.password": self.password("keystore"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_path),
        }

    # ---- Redis ---------------------------------------------------------------------------------------------

    def redis_args(self, port: int) -> list[str]:
        """redis-server options: TLS only on `port`, ACL user `enrich`, the default user switched off."""
        d = self.directory
        return ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(d / "server.pem"),
                "--tls-key-file", str(d / "server.key"), "--tls-ca-cert-file", str(self.ca_path),
                "--tls-auth-clients", "no", "--user", CLIENT_USER, "on", f">{self.password('redis')}", "~*",
                "&*", "+@all", "--user", "default", "off"]

    def redis_env(self) -> dict[str, str]:
        """The worker's ENRICH_REDIS_* settings for the secured redis-server (URL set by the caller)."""
        return {"ENRICH_REDIS_USERNAME": CLIENT_USER,
                "ENRICH_REDIS_PASSWORD_FILE": str(self.password_path("redis")),
                "ENRICH_REDIS_CA_FILE": str(self.ca_path)}

    def redis_client_options(self) -> dict[str, str]:
        return {"username": CLIENT_USER, "password": self.password("redis"),
                "ssl_ca_certs": str(self.ca_path)}
