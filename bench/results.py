"""The printed table and bench_results.json.

The JSON maps each case name to its result (ours_s, ref_s, ratio = ours / ref, ours_peak_mb, ref_peak_mb,
ours_first_s, ref_first_s, ...), plus "threads" (the policy), "machine" (cores, load averages) and "extras".
A run updates the entries it measured and keeps the others (each entry has its own "measured_at").
"""
import json
import os

RESERVED_KEYS = ("threads", "machine", "extras")


def read_results(path):
    """The existing results, or {} when the file is missing or unreadable (it is rewritten whole)."""
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def write_results(path, cases=None, threads=None, machine=None, extras=None):
    """Merge into the file at `path` atomically; returns the whole mapping written."""
    from library.fileio import atomic_write

    merged = read_results(path)
    merged.update(cases or {})
    if threads is not None:
        merged["threads"] = threads
    if machine is not None:
        merged["machine"] = machine
    if extras:
        merged["extras"] = {**merged.get("extras", {}), **extras}
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(merged, f, indent=2, sort_keys=True)
            f.write("\n")
    return merged


def machine_state():
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cores": os.cpu_count(), "loadavg_1_5_15": [round(x, 2) for x in load] if load else None}


def _seconds(value):
    if value is None:
        return "-"
    return f"{value * 1e3:.1f} ms" if value < 1.0 else f"{value:.2f} s"


def _mb(value):
    return "-" if value is None else f"{value:.0f}"


def format_table(results, threads_line):
    """Fixed-width table, one row per case; a failed case shows its reason under its row."""
    header = (f"{'case':24s} {'ours':>10s} {'ref':>10s} {'ratio':>6s} {'ours 1st':>9s} {'ref 1st':>9s} "
              f"{'ours MiB':>9s} {'ref MiB':>8s} {'check':>8s}  status")
    lines = [threads_line, header, "-" * len(header)]
    for name, r in results.items():
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        check = "-" if r.get("value_rel_diff") is None else f"{r['value_rel_diff']:.0e}"
        lines.append(f"{name:24s} {_seconds(r.get('ours_s')):>10s} {_seconds(r.get('ref_s')):>10s} {ratio:>6s} "
                     f"{_seconds(r.get('ours_first_s')):>9s} {_seconds(r.get('ref_first_s')):>9s} "
                     f"{_mb(r.get('ours_peak_mb')):>9s} {_mb(r.get('ref_peak_mb')):>8s} {check:>8s}  "
                     f"{r.get('status', '?')}")
        if r.get("error"):
            lines.append(f"    FAILED: {r['error']}")
    lines.append("ours/ref: median seconds per call (step or image); ratio = ours / ref; 1st = first call "
                 "(compile / warm-up), not in the median; MiB = peak resident memory during the calls; check = "
                 "relative difference of the first-call loss (image mean for gen)")
    return "\n".join(lines)
