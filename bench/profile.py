"""Where our time goes: MindSpore's profiler around a case's steady calls, kernels ranked by total time.

    python -m bench.profile --case ti_step_tiny_sd1 --calls 10
    python -m bench.profile --case lora_step_tiny_sd1 --top 30 --keep /tmp/prof_lora

The case's weights are prepared by a torch worker (as `python -m bench` does); ours is built in this process
with the bench's thread policy, called twice to compile and warm up, then `--calls` times under
`mindspore.profiler.profile` (CPU activity). The table sums each kernel type's compute time over those calls
and divides by the number of calls: per-call milliseconds, launches per call, and the share of the call's wall
time. What the kernels do not cover is the runtime's own time (launching, waiting between kernels).
"""
import argparse
import collections
import csv
import glob
import os
import shutil
import sys
import tempfile
import time

from .cases import get_case
from .threads import apply_thread_policy, default_threads
from .worker import Worker


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", required=True)
    parser.add_argument("--calls", type=int, default=10, help="profiled calls after 2 warm-up calls")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--keep", default=None, help="folder to keep the profiler's raw output in")
    args = parser.parse_args(argv)

    case = get_case(args.case)
    folder = tempfile.mkdtemp(prefix=f"profile_{args.case}_")
    out_dir = args.keep or tempfile.mkdtemp(prefix=f"profile_{args.case}_trace_")
    try:
        Worker(case.name, "prepare", folder, args.threads, os.path.join(folder, "prepare.log")).wait_done()
        apply_thread_policy("ours", args.threads)
        step = case.build("ours", folder)
        for _ in range(2):
            step()
        wall = _profiled_calls(step, args.calls, out_dir)
        rows = _kernel_rows(out_dir)
        if not rows:
            print(f"no kernel records found under {out_dir}", file=sys.stderr)
            return 1
        _print_table(rows, args.calls, wall, args.top)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    return 0


def _profiled_calls(step, calls, out_dir):
    from mindspore.profiler import ProfilerActivity, profile, tensorboard_trace_handler

    with profile(activities=[ProfilerActivity.CPU], on_trace_ready=tensorboard_trace_handler(out_dir)):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        wall = time.perf_counter() - start
    return wall


def _kernel_rows(out_dir):
    """{kernel type: [total_us, launches]} from the CPU op-type table the profiler writes
    (FRAMEWORK/cpu_op_type_info_*.csv: op_type, type_occurrences, total_compute_time in ms)."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    for path in glob.glob(os.path.join(out_dir, "**", "cpu_op_type_info_*.csv"), recursive=True):
        with open(path, encoding="utf-8") as f:
            for row in csv.DictReader(f):
                totals[row["op_type"]][0] += float(row["total_compute_time"]) * 1e3
                totals[row["op_type"]][1] += int(row["type_occurrences"])
    return totals


def _print_table(rows, calls, wall, top):
    step_ms = wall / calls * 1e3
    ranked = sorted(rows.items(), key=lambda item: -item[1][0])
    covered = sum(total for total, _ in rows.values()) / calls / 1e3
    print(f"{calls} calls, {step_ms:.1f} ms per call (profiled); kernels compute {covered:.1f} ms of it "
          f"({covered / step_ms:.0%}) in {sum(n for _, n in rows.values()) / calls:.0f} launches per call")
    print(f"{'kernel':32s} {'ms/call':>9s} {'launches':>9s} {'us/launch':>10s} {'share':>7s}")
    for name, (total, count) in ranked[:top]:
        per_call = total / calls / 1e3
        print(f"{name[:32]:32s} {per_call:9.2f} {count / calls:9.0f} {total / max(count, 1):10.1f} "
              f"{per_call / step_ms:7.1%}")


if __name__ == "__main__":
    sys.exit(main())
