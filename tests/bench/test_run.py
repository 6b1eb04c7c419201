import json

import bench.run


def test_each_suite_records_the_machine_it_ran_on(tmp_path, monkeypatch):
    results = tmp_path / "results.json"
    earlier = {"e2e": {"async_speedup": 1.7, "machine": {"cpu": "another host"}}}
    results.write_text(json.dumps(earlier))
    monkeypatch.setattr(bench.run, "RESULTS", results)
    assert bench.run.main(["parse"]) == 0
    out = json.loads(results.read_text())
    assert out["e2e"] == earlier["e2e"]  # a suite not run keeps its numbers and its host
    stamp = out["parse"]["machine"]
    assert stamp["cpu"] == bench.run.cpu_model() and stamp["cpu"]
    assert stamp["cpus"] >= 1 and len(stamp["date"]) == 10
