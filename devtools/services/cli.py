"""`enrich services up|down|status`: the local stack in the background, found again through a state file.

`up` starts Kafka + Redis (+ Triton on triton_repo/cpu when a model has been exported there) under
.cache/services/run and writes .cache/services/state.json (PIDs, ports, log paths, ENRICH_* settings);
`down` stops those PIDs; `status` prints them. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from devtools.paths import TRITON_CPU_REPO

__all__ = ["register"]

_DEFAULT_TRITON_REPO = TRITON_CPU_REPO


def _default_base_dir() -> Path:
    from devtools.services.kafka_jars import cache_root

    return cache_root() / "services"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("services", help="run Kafka, Redis and Triton locally in the background")
    parser.add_argument("--base-dir", type=Path, default=None,
                        help="where run folders and state.json live (default: .cache/services)")
    actions = parser.add_subparsers(dest="action", required=True)

    up = actions.add_parser("up", help="start the services and write the state file")
    up.add_argument("--kafka-nodes", type=int, choices=(1, 3), default=1)
    up.add_argument("--triton-repo", type=Path, default=None,
                    help="model repository to serve (default: triton_repo/cpu if a model is exported there)")
    up.add_argument("--no-triton", action="store_true", help="do not start tritonserver")
    up.add_argument("--secure", action="store_true",
                    help="Kafka with a SASL_SSL (SCRAM-SHA-512) listener and Redis with TLS + an ACL user; "
                    "certificates and passwords made now; the state's env points a worker at them")
    up.set_defaults(func=_up)

    down = actions.add_parser("down", help="stop the services started by `up`")
    down.set_defaults(func=_down)

    status = actions.add_parser("status", help="print the services, their PIDs and addresses")
    status.add_argument("--json", action="store_true", help="print the state file with liveness")
    status.set_defaults(func=_status)


def _state_path(args: argparse.Namespace) -> Path:
    return (args.base_dir or _default_base_dir()) / "state.json"


def _liveness(state: dict[str, Any]) -> dict[str, bool]:
    from devtools.services.stack import adopt_processes

    return {name: process.is_running() for name, process in adopt_processes(state).items()}


def _up(args: argparse.Namespace) -> int:
    from devtools.harness.stack import LocalStack
    from devtools.services.stack import stack_state, stop_from_state

    state_path = _state_path(args)
    if state_path.exists():
        alive = _liveness(json.loads(state_path.read_text()))
        if alive and all(alive.values()):
            print(f"services already up (state: {state_path}); `enrich services down` first to restart")
            return _status(args)
        stop_from_state(state_path)  # a half-dead stack from an earlier run
    triton_repo, triton_models = _choose_triton(args)
    run_dir = state_path.parent / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    stack = LocalStack(run_dir, triton_repo=triton_repo, kafka_nodes=args.kafka_nodes,
                       triton_models=triton_models, detached=True, secure=args.secure)
    stack.start()
    state_path.write_text(json.dumps(stack_state(stack), indent=2) + "\n")
    if triton_repo is None:
        print("tritonserver not started: no exported model in triton_repo/cpu (run `enrich export`) "
              "and no --triton-repo given")
    return _status(args)


def _choose_triton(args: argparse.Namespace) -> tuple[Path | None, list[str] | None]:
    """(repository, models): an explicit --triton-repo serves all its models; the default repository
    serves only the models exported into it, and is skipped when there are none."""
    from devtools.services.stack import exported_models

    if args.no_triton:
        return None, None
    if args.triton_repo is not None:
        return args.triton_repo, None
    models = exported_models(_DEFAULT_TRITON_REPO) if _DEFAULT_TRITON_REPO.is_dir() else []
    return (_DEFAULT_TRITON_REPO, models) if models else (None, None)


def _down(args: argparse.Namespace) -> int:
    from devtools.services.stack import stop_from_state

    state_path = _state_path(args)
    if not state_path.exists():
        print(f"no services recorded in {state_path}")
        return 0
    for name in stop_from_state(state_path):
        print(f"stopped {name}")
    return 0


def _status(args: argparse.Namespace) -> int:
    state_path = _state_path(args)
    if not state_path.exists():
        print(f"no services recorded in {state_path} (start them with `enrich services up`)")
        return 1
    state = json.loads(state_path.read_text())
    alive = _liveness(state)
    if getattr(args, "json", False):
        json.dump({**state, "alive": alive}, sys.stdout, indent=2)
        print()
        return 0 if all(alive.values()) else 1
    print(f"state: {state_path} (started {state['started_at']}, Kafka {state['kafka_version']})")
    for name, info in state["services"].items():
        extra = {k: v for k, v in info.items() if k not in ("pid", "marker", "log")}
        print(f"  {name:<14} pid {info['pid']:<8} {'running' if alive[name] else 'STOPPED':<8} "
              f"{json.dumps(extra)}  log: {info['log']}")
    for key, value in state["env"].items():
        print(f"export {key}={value}")
    return 0 if all(alive.values()) else 1
