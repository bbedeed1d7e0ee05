"""The benchmark harness (python -m bench) on its model-free self-check cases: worker protocol, interleaved
medians, a killed worker reported as a failed case, the JSON file and the table. No timing assertions."""
import json

import pytest

from bench import __main__ as bench_cli
from bench.cases import CASES, default_cases
from bench.harness import run_case
from bench.results import format_table, write_results


def test_a_case_runs_both_sides_in_their_own_workers_and_reports_medians():
    result = run_case("selftest_sleep", repeats=3, threads=1, timeout_s=120)
    assert result["status"] == "ok", result.get("error")
    assert result["mode"] == "interleaved"
    for side in ("ours", "ref"):
        assert result[f"{side}_s"] > 0 and result[f"{side}_first_s"] > 0
        assert result[f"{side}_min_s"] <= result[f"{side}_s"]
        assert result[f"{side}_peak_mb"] > 1.0  # a real resident-memory reading, not a placeholder
    assert result["ratio"] == pytest.approx(result["ours_s"] / result["ref_s"])
    # both workers computed the same numbers from the prepared data
    assert result["ours_value"] == result["ref_value"]
    assert result["value_rel_diff"] == 0.0


def test_a_killed_worker_fails_its_case_with_the_reason_and_the_other_side_still_measures():
    result = run_case("selftest_crash", repeats=2, threads=1, timeout_s=120)
    assert result["status"] == "failed"
    assert "ours" in result["error"] and "SIGKILL" in result["error"]
    assert result["ours_s"] is None and result["ratio"] is None
    assert result["ref_s"] > 0


def test_results_file_merges_runs_and_the_table_shows_failures(tmp_path):
    path = tmp_path / "bench_results.json"
    ok = {"ours_s": 0.5, "ref_s": 0.25, "ratio": 2.0, "ours_peak_mb": 900.0, "ref_peak_mb": 400.0,
          "ours_first_s": 12.0, "ref_first_s": 0.5, "status": "ok"}
    failed = {"ours_s": None, "ref_s": 1.5, "ratio": None, "ours_peak_mb": None, "ref_peak_mb": 3000.0,
              "status": "failed", "error": "ours: killed by SIGKILL (out of memory?)"}
    write_results(str(path), {"case_a": ok}, threads={"threads": 2})
    write_results(str(path), {"case_b": failed}, extras={"quickstart": {"wall_s": 60.0}})
    stored = json.loads(path.read_text())
    assert stored["case_a"] == ok and stored["case_b"] == failed  # the second run kept the first's case
    assert stored["threads"] == {"threads": 2} and stored["extras"]["quickstart"]["wall_s"] == 60.0
    table = format_table({"case_a": ok, "case_b": failed}, "threads: 2")
    lines = table.splitlines()
    row_a = next(line for line in lines if line.startswith("case_a"))
    assert "500.0 ms" in row_a and "250.0 ms" in row_a and "2.00" in row_a and "ok" in row_a
    assert any(line.startswith("case_b") and "failed" in line for line in lines)
    assert "FAILED: ours: killed by SIGKILL" in table


def test_cli_selects_cases_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = bench_cli.main(["--cases", "selftest_sleep", "--repeats", "2", "--threads", "1", "--output", str(out)])
    assert code == 0
    stored = json.loads(out.read_text())
    assert stored["selftest_sleep"]["status"] == "ok"
    assert stored["threads"]["threads"] == 1 and "torch" in stored["threads"]["policy"]
    printed = capsys.readouterr().out
    assert "selftest_sleep" in printed and "threads:" in printed
    with pytest.raises(SystemExit):
        bench_cli.parse_args(["--cases", "no_such_case"])


def test_the_issue_cases_are_registered_and_quick_leaves_out_the_full_size_ones():
    required = {"ti_step_tiny_sd1", "ti_step_tiny_sdxl", "lora_step_tiny_sd1", "ti_step_sd15_64",
                "lora_step_sd15_64", "gen_tiny_sd1_20steps", "unet_fwd_bwd_sd15_64"}
    assert required <= set(default_cases(quick=False))
    quick = set(default_cases(quick=True))
    assert {"ti_step_tiny_sd1", "ti_step_tiny_sdxl", "lora_step_tiny_sd1", "gen_tiny_sd1_20steps"} <= quick
    assert not any(CASES[name].big for name in quick)
    assert not any(CASES[name].selftest for name in default_cases(quick=False))


def test_profile_ranks_the_kernels_mindspore_ran(tmp_path, capsys):
    import numpy as np
    from mindspore import nn, Tensor

    from bench import profile

    cell = nn.Dense(16, 8)
    cell.set_train(False)
    x = Tensor(np.ones((4, 16), np.float32))

    def step():
        return float(cell(x).asnumpy().sum())

    step()  # compile outside the profiled calls
    wall = profile._profiled_calls(step, 3, str(tmp_path))
    rows = profile._kernel_rows(str(tmp_path))
    assert "MatMul" in rows, sorted(rows)
    total_us, launches = rows["MatMul"]
    assert launches == 3 and total_us > 0
    profile._print_table(rows, 3, wall, top=5)
    table = capsys.readouterr().out
    assert "MatMul" in table and "launches per call" in table
