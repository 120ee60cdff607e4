"""conspo compare's statistics on synthetic runs: last- and best-step accuracy, paired per-seed differences to a
reference objective with a Student-t 95% CI (the t quantiles checked against a numerical integral of the density);
and a smoke run of ``conspo compare`` that trains two objectives on two seeds at toy size."""

import json
import math
import statistics

import pytest
from helpers import TINY, run_cli

from conspo.compare import report
from conspo.errors import ConfigError
from conspo.paired_stats import T_975, paired_difference, t_quantile_975


def t_cdf(x, df, steps=20000):
    """P(T <= x) for Student's t by Simpson's rule on [0, x] of the density (independent of the table)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))

    def f(t):
        return c * (1 + t * t / df) ** (-(df + 1) / 2)

    h = x / steps
    area = f(0) + f(x) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return 0.5 + area * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 5, 9, 17, 30, 31, 45, 120])
def test_t_quantile_is_the_975_point_of_students_t(df):
    assert t_cdf(t_quantile_975(df), df) == pytest.approx(0.975, abs=2e-5)


def test_the_expansion_meets_the_table_and_the_normal():
    assert t_quantile_975(len(T_975)) == T_975[-1]
    from conspo import paired_stats

    expansion = paired_stats.Z_975 + 0  # the df > 30 branch evaluated at 30 must agree with the table's last value
    table = paired_stats.T_975
    paired_stats.T_975 = table[:-1]
    try:
        assert abs(t_quantile_975(30) - table[-1]) < 1e-4
    finally:
        paired_stats.T_975 = table
    assert t_quantile_975(10**6) == pytest.approx(expansion, abs=1e-5)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_paired_difference_by_hand():
    d = paired_difference({0: 0.6, 1: 0.7, 2: 0.9, 5: 0.1}, {0: 0.5, 1: 0.5, 2: 0.6})  # seed 5 has no pair
    half = 4.3027 * 0.1 / math.sqrt(3)
    assert d["seeds"] == 3 and d["mean"] == pytest.approx(0.2)
    assert (d["low"], d["high"]) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert paired_difference({0: 0.6}, {0: 0.5}) == {"seeds": 1, "mean": pytest.approx(0.1), "low": None, "high": None}


def write_run(root, name, seed, curve, steps=10):
    run = root / f"{name}-seed{seed}"
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps({"step": step, "heldout/accuracy": acc}) + "\n" for step, acc in curve)
    json.dump(
        {
            "objective": name,
            "steps": steps,
            "heldout_accuracy_before": curve[0][1],
            "heldout_accuracy_after": curve[-1][1],
            "wall_seconds": 1.0,
        },
        open(run / "summary.json", "w"),
    )


CURVES = {  # objective -> seed -> held-out accuracy at steps 0, 5, 10
    "conspo": {0: [0.40, 0.60, 0.55], 1: [0.40, 0.50, 0.58], 2: [0.40, 0.62, 0.61]},
    "disco": {0: [0.40, 0.70, 0.50], 1: [0.40, 0.52, 0.52], 2: [0.40, 0.66, 0.64]},
    "real": {0: [0.40, 0.45, 0.47]},
}


def synthetic(root):
    for name, seeds in CURVES.items():
        for seed, accs in seeds.items():
            write_run(root, name, seed, list(zip((0, 5, 10), accs)))


def test_report_on_synthetic_runs(tmp_path):
    synthetic(tmp_path)
    lines = []
    out = report(tmp_path, reference="conspo", log=lines.append)
    text = lines[0]
    rows = {r["objective"]: r for r in out["table"]}
    assert rows["conspo"]["seeds"] == 3 and rows["real"]["seeds"] == 1
    assert rows["disco"]["accuracy_after_mean"] == pytest.approx(statistics.mean([0.50, 0.52, 0.64]))
    assert rows["disco"]["accuracy_best_mean"] == pytest.approx(statistics.mean([0.70, 0.52, 0.66]))
    assert rows["disco"]["accuracy_best_std"] == pytest.approx(statistics.stdev([0.70, 0.52, 0.66]))
    paired = {r["objective"]: r for r in out["paired"]}
    last = [0.50 - 0.55, 0.52 - 0.58, 0.64 - 0.61]
    half = 4.3027 * statistics.stdev(last) / math.sqrt(3)
    assert paired["disco"]["last"]["mean"] == pytest.approx(statistics.mean(last))
    assert paired["disco"]["last"]["high"] == pytest.approx(statistics.mean(last) + half)
    best = [0.70 - 0.60, 0.52 - 0.58, 0.66 - 0.62]
    assert paired["disco"]["best"]["mean"] == pytest.approx(statistics.mean(best))
    assert paired["real"]["last"]["seeds"] == 1 and paired["real"]["last"]["low"] is None
    assert "| disco | 3 | 55.3% +- 7.6% | 62.7% +- 9.5% |" in text
    assert "chosen on the eval set" in text and "| objective - conspo | paired seeds |" in text
    assert f"| disco | 3 | {statistics.mean(last) * 100:+.1f} [" in text and "(CI needs >= 2 seeds)" in text
    saved = json.load(open(tmp_path / "compare.json"))
    assert saved["reference"] == "conspo" and len(saved["paired"]) == 2


def test_report_errors(tmp_path):
    with pytest.raises(ConfigError, match="no finished runs"):
        report(tmp_path)
    synthetic(tmp_path)
    with pytest.raises(ConfigError, match="--reference grpo: not among the compared objectives"):
        report(tmp_path, reference="grpo")


def test_cli_compare_from_runs(tmp_path):
    synthetic(tmp_path / "runs")
    proc = run_cli(
        "compare", "--from-runs", str(tmp_path / "runs"), "--reference", "disco", cache_dir=str(tmp_path / "cache")
    )
    assert "| objective - disco | paired seeds |" in proc.stdout and "| conspo | 3 |" in proc.stdout


def test_report_finds_runs_at_any_depth_grouped_by_their_objective(tmp_path):
    """bench/chain_comparison.sh runs one compare per run: final/<objective>-lr<rate>-seed<s>/<objective>-seed<s>/."""
    for name, seeds in CURVES.items():
        for seed, accs in seeds.items():
            write_run(tmp_path / "final" / f"{name}-lr1e-6-seed{seed}", name, seed, list(zip((0, 5, 10), accs)))
    out = report(tmp_path / "final", log=lambda text: None)
    assert {r["objective"]: r["seeds"] for r in out["table"]} == {"conspo": 3, "disco": 3, "real": 1}
    assert out["reference"] == "conspo"


@pytest.mark.slow
def test_compare_smoke(tmp_path, cache_dir):
    out = tmp_path / "cmp"
    proc = run_cli(
        "compare",
        "--objectives",
        "conspo,grpo",
        "--seeds",
        "2",
        *TINY,
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--output-dir",
        str(out),
        cache_dir=cache_dir,
    )
    data = json.load(open(out / "compare.json"))
    assert [r["objective"] for r in data["table"]] == ["conspo", "grpo"]
    assert all(r["seeds"] == 2 for r in data["table"])
    assert "| conspo | 2 |" in proc.stdout and (out / "compare.png").exists() and (out / "compare_lengths.png").exists()
    runs = data["runs"]["conspo"]
    assert all(
        [row[0] for row in run["generation"]] == [1, 2] and all(row[1] > 0 for row in run["generation"]) for run in runs
    )
    # the last 10% of 2 steps is the last step; the table averages it over the seeds
    assert data["table"][0]["late_length_mean"] == pytest.approx(sum(run["generation"][-1][1] for run in runs) / 2)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "conspo-seed0",
        "conspo-seed1",
        "grpo-seed0",
        "grpo-seed1",
    ]
