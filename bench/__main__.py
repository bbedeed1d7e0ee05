"""Benchmark: ours (MindSpore) vs the reference (torch + diffusers/transformers/peft) on the same weights and data.

    python -m bench                      every case (full-size ones take the shared memory lock)
    python -m bench --quick              the tiny cases + generation (a few minutes)
    python -m bench --cases ti_step_tiny_sd1,gen_tiny_sd1_20steps --repeats 5
    python -m bench --extras             latent caching, recompute, data parallel, compile time, quick start
    python -m bench --list               the cases and what each measures

Prints a table and writes bench_results.json at the repository root (see bench/README.md).
"""
import argparse
import ast
import os
import sys
import time

from .cases import CASES, default_cases
from .harness import run_case
from .results import format_table, machine_state, write_results
from .threads import default_threads, describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the tiny cases and generation")
    parser.add_argument("--cases", type=str, default=None, help="comma-separated case names (see --list)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per side after the first (default 10; full-size cases 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="compute threads for both frameworks (default: the cores this process may use)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a case parameter (e.g. --set latent=32 --set spec_name=tiny-sd15); results are "
                             "stored under 'case[key=value,...]'")
    parser.add_argument("--extras", nargs="?", const="all", default=None, metavar="NAMES",
                        help="run the extra measurements (not part of --quick); optionally only some, comma-separated: "
                             "latent_caching,recompute,data_parallel,compile,quickstart")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a worker may take per answer")
    parser.add_argument("--output", type=str, default=os.path.join(ROOT, "bench_results.json"))
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    args.extra_names = None
    if args.extras and args.extras != "all":
        args.extra_names = [n.strip() for n in args.extras.split(",") if n.strip()]
        known = ("latent_caching", "recompute", "data_parallel", "compile", "quickstart")
        if any(n not in known for n in args.extra_names):
            parser.error(f"--extras {args.extras}: choose from {', '.join(known)}")
    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        try:
            args.overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            args.overrides[key] = value  # a bare word is a string (spec names)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.cases:
        names = [n.strip() for n in args.cases.split(",") if n.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            parser.error(f"--cases: unknown {', '.join(unknown)}; known: {', '.join(CASES)}")
        args.case_names = names
    elif args.extras and not args.quick:
        args.case_names = []  # --extras alone measures only the extras
    else:
        args.case_names = default_cases(args.quick)
    return args


def say(message):
    print(message, flush=True)


def result_key(name, overrides):
    if not overrides:
        return name
    return f"{name}[{','.join(f'{k}={v}' for k, v in sorted(overrides.items()))}]"


def repeats_for(name, args):
    if args.repeats is not None:
        return args.repeats
    return 3 if CASES[name].big else 10


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for case in CASES.values():
            tags = ", ".join(t for t, on in (("quick", case.quick), ("full-size", case.big),
                                             ("self-test", case.selftest)) if on)
            print(f"{case.name:24s} {case.what}" + (f"  [{tags}]" if tags else ""))
        return 0
    threads = args.threads or default_threads()
    policy = describe(threads)
    machine = machine_state()
    threads_line = f"threads: {policy['policy']}; load average at start {machine['loadavg_1_5_15']}"
    print(threads_line, flush=True)
    results = {}
    for name in args.case_names:
        try:
            CASES[name].with_params(args.overrides)
        except KeyError as e:
            print(f"error: --set: {e.args[0]}", file=sys.stderr)
            return 2
    for name in args.case_names:
        key = result_key(name, args.overrides)
        print(f"- {key}: {CASES[name].what}", flush=True)
        results[key] = run_case(name, repeats_for(name, args), threads, args.timeout, say=say,
                                overrides=args.overrides)
        status = results[key]["status"]
        print(f"  {status} in {results[key]['wall_s']:.0f} s" + (f": {results[key]['error']}"
                                                                  if status != "ok" else ""), flush=True)
        write_results(args.output, {key: results[key]}, policy)  # a later crash keeps what was measured
    extras = None
    if args.extras:
        from .extras import run_extras

        from .results import read_results

        measured = {**read_results(args.output), **results}
        extras = run_extras(threads, say=say, case_results={k: v for k, v in measured.items()
                                                            if isinstance(v, dict) and "ours_s" in v},
                            names=args.extra_names, timeout_s=max(args.timeout, 3600.0))
    machine["loadavg_end_1_5_15"] = machine_state()["loadavg_1_5_15"]
    machine["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_results(args.output, results, policy, machine, extras)
    if results:
        print()
        print(format_table(results, threads_line))
    if extras:
        from .extras import format_extras

        print()
        print(format_extras(extras))
    print(f"\nwrote {args.output}")
    return 1 if any(r["status"] != "ok" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
