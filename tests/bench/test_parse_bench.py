from bench.parse import ADVERSARIAL, run


def test_parse_bench_reports_every_workload():
    out = run({})
    assert {f"{name}_1mb_s" for name in ADVERSARIAL} <= set(out)
    assert out["worst_1mb_s"] == max(out[f"{name}_1mb_s"] for name in ADVERSARIAL)
    assert out["well_formed_us"] > 0 and isinstance(out["met"], bool)
