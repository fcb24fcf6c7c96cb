"""tritonserver from the nvidia-pytriton wheel (Triton 2.51) on CPU with the python backend: the backend
folder assembled here, the wheel's libraries on LD_LIBRARY_PATH, the venv's python3 first on PATH,
explicit model control, readiness probed per model with a bounded wait.

Each server passes its own python-backend shared-memory prefix, so the /dev/shm regions it leaves after a
crash are known exactly and removed on stop without touching another server's.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from devtools.services.ports import LOOPBACK, free_ports
from devtools.services.process import ManagedProcess, ServiceError

__all__ = ["SHM_DIR", "TritonServer", "discover_models", "pytriton_paths", "remove_shm_regions"]

SHM_DIR = Path("/dev/shm")
_SHM_PREFIX_BASE = "triton_python_backend_shm_region_"


def pytriton_paths() -> dict[str, Path]:
    """Where the wheel keeps the server binary, its bundled libraries, backend files and stubs."""
    try:
        import pytriton
    except ImportError as exc:
        raise ServiceError("nvidia-pytriton is not installed in this environment (make setup)") from exc
    package = Path(pytriton.__file__).resolve().parent
    server = package / "tritonserver"
    python_tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = {
        "binary": server / "bin" / "tritonserver",
        "libs": package.parent / "nvidia_pytriton.libs",
        "python_backend": server / "backends" / "python",
        "stub": server / "python_backend_stubs" / python_tag / "triton_python_backend_stub",
        "caches": server / "caches",
    }
    missing = [str(path) for path in paths.values() if not path.exists()]
    if missing:
        raise ServiceError(f"nvidia-pytriton wheel lacks {missing} (Python {python_tag} supported?)")
    return paths


def discover_models(model_repository: Path) -> list[str]:
    """Model names in a repository: sub-folders holding a config.pbtxt."""
    return sorted(p.parent.name for p in Path(model_repository).glob("*/config.pbtxt"))


class TritonServer:
    """A tritonserver on free loopback ports serving `models` (default: all) from `model_repository`.

    `grpc_url` and `http_url` are `host:port`, as tritonclient expects; `metrics_url` is a full URL.
    """

    def __init__(self, run_dir: Path, model_repository: Path, *, models: Sequence[str] | None = None,
                 start_timeout_s: float = 180.0, detached: bool = False,
                 extra_args: Sequence[str] = ()) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise ServiceError(f"Triton model repository {self.model_repository} does not exist")
        self.models = list(models) if models is not None else discover_models(self.model_repository)
        self.start_timeout_s = start_timeout_s
        self.detached = detached
        self.extra_args = list(extra_args)
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.shm_prefix = f"{_SHM_PREFIX_BASE}{uuid.uuid4().hex[:12]}_"
        self.process: ManagedProcess | None = None
        self.started_in_s: float | None = None

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def start(self) -> TritonServer:
        started = time.monotonic()
        paths = pytriton_paths()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        backend_dir = self._assemble_backend_dir(paths)
        argv = [
            str(paths["binary"]), f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}", f"--cache-directory={paths['caches']}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--http-address={LOOPBACK}", f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={LOOPBACK}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--model-control-mode=explicit", "--strict-readiness=false",
            "--log-verbose=0", *(f"--load-model={name}" for name in self.models), *self.extra_args,
        ]
        self.process = ManagedProcess.spawn("tritonserver", argv, log_path=self.run_dir / "tritonserver.log",
                                            marker=self.shm_prefix, env=self._environment(paths),
                                            cwd=self.run_dir, detached=self.detached)
        try:
            self.process.wait_until(self._all_models_ready, what=f"ready with models {self.models}",
                                    timeout_s=self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - started
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (models unload, stubs exit), SIGKILL after `timeout_s`; then remove our shm regions."""
        if self.process is not None:
            self.process.stop(timeout_s)
        remove_shm_regions(self.shm_prefix)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def is_model_ready(self, name: str, version: str = "") -> bool:
        """Whether Triton serves `name` (any version), or its version `version` when given."""
        path = f"{name}/versions/{version}" if version else name
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{path}/ready", timeout=2) as reply:
                return bool(reply.status == 200)
        except urllib.error.HTTPError:
            return False

    def server_metadata(self) -> dict[str, object]:
        """GET /v2: name, version (e.g. '2.51.0'), extensions."""
        with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=5) as reply:
            return dict(json.load(reply))

    def _all_models_ready(self) -> bool:
        with urllib.request.urlopen(f"http://{self.http_url}/v2/health/live", timeout=2) as reply:
            if reply.status != 200:
                return False
        return all(self.is_model_ready(name) for name in self.models)

    def _assemble_backend_dir(self, paths: dict[str, Path]) -> Path:
        """The wheel's backends/python lacks the stub; build backends/python with all three files."""
        python_dir = self.run_dir / "backends" / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        sources = {
            "libtriton_python.so": paths["python_backend"] / "libtriton_python.so",
            "triton_python_backend_utils.py": paths["python_backend"] / "triton_python_backend_utils.py",
            "triton_python_backend_stub": paths["stub"],
        }
        for name, source in sources.items():
            link = python_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source)
        return python_dir.parent

    @staticmethod
    def _environment(paths: dict[str, Path]) -> dict[str, str]:
        env = dict(os.environ)
        # The stub links libpython3.X.so from the base interpreter, and the server needs the wheel's
        # bundled libraries (without them the stub fails to load and the server hangs, never ready).
        libdirs = [str(sysconfig.get_config_var("LIBDIR")), str(paths["libs"])]
        if env.get("LD_LIBRARY_PATH"):
            libdirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
        # The stub embeds Python in isolated mode and finds `python3` on PATH: make that the venv's.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env


def remove_shm_regions(prefix: str) -> list[Path]:
    """Delete /dev/shm files whose name starts with `prefix` (unique per server); return them."""
    if not prefix.startswith(_SHM_PREFIX_BASE) or prefix == _SHM_PREFIX_BASE:
        raise ValueError(f"refusing to remove shm regions for the shared prefix {prefix!r}")
    removed = []
    for path in SHM_DIR.glob(f"{prefix}*"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed
