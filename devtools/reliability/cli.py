"""`enrich chaos <scenario> [--size N] [--quick]`: run fault scenarios and print the accounting table."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from workers.contract.errors import ExitCode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from devtools.reliability.run import ScenarioResult
    from devtools.reliability.scenarios import ChaosOptions

__all__ = ["EXIT_CODES", "exit_code", "options_for", "register"]

SCENARIO_NAMES = ("kill", "kill-unique", "redis-outage", "triton-outage", "broker-restart", "broker-failover",
                  "hostile", "exactly-once", "exactly-once-failover", "zombie", "slow-redis", "slow-triton",
                  "partition", "soak", "model-swap")  # fmt: skip
# The codes of every `enrich` command (workers.contract.errors.ExitCode); 2 is argparse's usage error.
EXIT_OK, EXIT_DATA_LOSS = int(ExitCode.OK), int(ExitCode.DATA_LOSS)
EXIT_CHECK_FAILED, EXIT_SCENARIO_BROKE = int(ExitCode.CHECK_FAILED), int(ExitCode.ERROR)
EXIT_CODES = f"""exit codes (the first that applies):
  {EXIT_DATA_LOSS}  data loss: a produced listing never came out (no attribute event, no DLQ record)
  {EXIT_CHECK_FAILED}  a scenario failed another check: duplicates beyond the bound (the sum of the in-flight
     windows of its faults, 0 for exactly-once and for outages that must not re-deliver); unknown records
     (attribute events or DLQ records for no produced input); a wrong outcome; a record the harness
     failed to produce; or not every record accounted for in time (INCOMPLETE)
  {EXIT_SCENARIO_BROKE}  a scenario could not run (its traceback is printed) and none failed a check
  {EXIT_OK}  every scenario ran and passed its checks
  2  usage error"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "chaos", help="fault scenarios (kill -9, outages, failover, hostile input): prove nothing is lost",
        description="Runs a worker subprocess against real Kafka/Redis/Triton, injects faults and accounts "
                    "for every produced listing.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("scenario", choices=(*SCENARIO_NAMES, "all"))
    parser.add_argument("--quick", action="store_true", help="the small CI-sized version")
    parser.add_argument("--size", type=int, default=None, help="valid listings to produce")
    parser.add_argument("--rate", type=float, default=None, help="listings/s produced (0: all at once)")
    parser.add_argument("--kills", type=int, default=None, help="kill -9 count (kill, exactly-once)")
    parser.add_argument("--unique-titles", action="store_true", default=None,
                        help="every title unique (no cache hit: kills land on inference in flight)")
    parser.add_argument("--outage", type=float, default=None, help="outage seconds")
    parser.add_argument("--duration", type=float, default=None, help="seconds of paced traffic (soak)")
    parser.add_argument("--hostile", type=int, default=None, help="hostile records (hostile)")
    parser.add_argument("--huge", type=int, default=None, help="of the hostile records, how many are 10 MB")
    parser.add_argument("--huge-kinds", default=None,
                        help="comma-separated kinds of oversized records (payload_10mb, control_bytes_300kb, "
                             "control_bytes_key_200kb, key_2mb); default all")  # fmt: skip
    parser.add_argument("--model-dir", type=Path, default=None, help="exported model (default: tiny)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.set_defaults(func=_chaos)


def options_for(scenario: str, quick: bool) -> ChaosOptions:
    """Defaults per scenario: the full figures of issue 5, or the quick (CI-sized) version."""
    from devtools.reliability.scenarios import SMALL_WINDOW, ChaosOptions

    if quick:
        base = ChaosOptions(size=3000, rate=150, kills=3, kill_delay_s=(0.5, 2.0), outage_s=8, hostile=1000,
                            huge_payloads=2, session_timeout_ms=3000, timeout_s=240)  # fmt: skip
    else:
        base = ChaosOptions()
    # Full: traffic paced so that it still flows during the last of the 10 kills (a kill costs the session
    # timeout plus a start, ~8 s, and a random 1-8 s pause); outages mid-stream in 20k-listing streams.
    # Quick kills: a small in-flight window, so a worker that stopped committing fails the duplicate bound.
    kills = {"worker_env": SMALL_WINDOW} if quick else {"size": 100_000, "rate": 700}
    per_scenario = {
        "kill": kills,
        "kill-unique": {**kills, "unique_titles": True},
        "exactly-once": {} if quick else {"size": 20_000, "rate": 150},
        "hostile": {"size": 3000} if quick else {"size": 20_000, "rate": 0},
        # Soak: `size` is the capacity pass's backlog (a few seconds of work). Quick: 30 s, as a kill costs
        # ~8 s of downtime that takes ~2.3x as long again to work off at 30 % headroom: in 20 s no quarter
        # of the run would be left fault-free to judge growth by.
        "soak": {"size": 10_000, "duration_s": 30, "kills": 1, "outage_s": 2, "unique_titles": True} if quick
        else {"size": 50_000, "duration_s": 1800, "kills": 3, "outage_s": 30, "unique_titles": True},
        # Three swaps (kill_delay_s: the random wait before each) and one kill -9 during one of them.
        "model-swap": {"size": 2000, "rate": 100, "kills": 1, "kill_delay_s": (1.0, 3.0)} if quick
        else {"size": 20_000, "rate": 200, "kills": 1, "kill_delay_s": (5.0, 20.0)},
    }
    outage = {"size": 3000, "rate": 150} if quick else {"size": 20_000, "rate": 250}
    return dataclasses.replace(base, **per_scenario.get(scenario, outage))


def _chaos(args: argparse.Namespace) -> int:
    from devtools.harness.stack import LocalStack
    from devtools.paths import CACHE_DIR
    from devtools.reliability.report import format_details, format_table
    from devtools.reliability.run import services_for
    from devtools.reliability.scenarios import run_scenario

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = list(SCENARIO_NAMES) if args.scenario == "all" else [args.scenario]
    model_dir = args.model_dir or _tiny_model()
    run_dir = CACHE_DIR / "chaos" / time.strftime("%Y%m%d-%H%M%S")
    results, failed = [], []
    with LocalStack(run_dir, triton_model_dir=model_dir,
                    announce=lambda what: print(f"  starting {what} ...", flush=True)) as stack:  # fmt: skip
        for name in names:
            options = options_for(name, args.quick)
            overrides = {"size": args.size, "rate": args.rate, "kills": args.kills, "outage_s": args.outage,
                         "duration_s": args.duration,
                         "hostile": args.hostile, "huge_payloads": args.huge,
                         "huge_kinds": _kinds(args.huge_kinds),
                         "unique_titles": args.unique_titles}  # fmt: skip
            options = dataclasses.replace(options, **{k: v for k, v in overrides.items() if v is not None})
            print(f"[{name}] {options}", flush=True)
            try:
                result = run_scenario(name, services_for(stack, name, model_dir), options)
            except Exception:  # one broken scenario must not hide the figures of the others
                print(f"  {name} FAILED to run:\n{traceback.format_exc()}", flush=True)
                failed.append(name)
                continue
            print("  " + format_details(result), flush=True)
            results.append(result)
    print()
    print(format_table(results, markdown=args.markdown))
    print(f"\nworker logs and service logs: {run_dir}")
    return exit_code(results, broke=failed)


def exit_code(results: Sequence[ScenarioResult], *, broke: Sequence[str] = ()) -> int:
    """EXIT_CODES: data loss outranks any other failed check, which outranks a scenario that could not run
    (all are printed)."""
    failed = [f"{r.scenario}: {', '.join(r.problems())}" for r in results if r.problems()]
    for line in failed:
        print(f"FAILED {line}", flush=True)
    if any(r.tally.lost for r in results):
        return EXIT_DATA_LOSS
    if failed:
        return EXIT_CHECK_FAILED
    return EXIT_SCENARIO_BROKE if broke else EXIT_OK


def _kinds(text: str | None) -> tuple[str, ...] | None:
    from devtools.reliability.hostile import HUGE_KINDS

    if text is None:
        return None
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in HUGE_KINDS]
    if unknown:
        raise SystemExit(f"enrich chaos: unknown --huge-kinds {unknown}; choose from {list(HUGE_KINDS)}")
    return kinds


def _tiny_model() -> Path:
    from devtools.paths import FIXTURE_OFFERS, MODELS_DIR
    from training.build import ensure_model

    print("finding or training the tiny model ...", file=sys.stderr, flush=True)
    return ensure_model(MODELS_DIR, FIXTURE_OFFERS, "tiny")
