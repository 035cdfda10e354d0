"""The `budget` stage: DVC's plan of a target, the durations recorded in synthetic per-run files summed by
stage kind and by arm, runs not run shown as such (estimated only from an arm of the same model), errors."""
import json
from pathlib import Path

import pytest
import yaml

from pipelines import budget
from pipelines.budget import Step

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")  # inside DVC's graph code


def _write(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) if path.suffix == ".json" else yaml.safe_dump(doc))


def _run_steps(pipeline: str, variant: str, seed: int) -> list[Step]:
    key = f"{variant}-{seed}"
    return [Step(f"{pipeline}/dvc.yaml:{kind}@{key}", kind, pipeline, key, variant, seed,
                 [f"{pipeline}/results/runs/{variant}/s{seed}"] if kind == "collect" else [])
            for kind in ("train", "sample", "evaluate", "collect")]


def _record(root: Path, pipeline: str, variant: str, seed: int, train_s: float, sample_s: float,
            eval_s: float | None, threads: int = 0) -> None:
    run = root / pipeline / "results" / "runs" / variant / f"s{seed}"
    _write(run / "run.json", {"variant": variant, "train": {"threads": threads}})
    _write(run / "train.json", {"train_seconds": train_s})
    _write(run / "samples.json", {"sample_s_per_img": sample_s / 1000, "num_samples": 1000})
    _write(run / "eval.json", {"fid": 1.0} if eval_s is None else {"fid": 1.0, "eval_seconds": eval_s, "eval_threads": 1})


@pytest.fixture
def synthetic(tmp_path):
    """Arm `a` recorded at seeds 0 and 1 (the second without an evaluation time); `b` (same model, another
    mixer setting) and `c` (another model) not run; a one-off stage that records a duration, one that does not."""
    pipe = "papers/p"
    _write(tmp_path / pipe / "params.yaml", {
        "preset": "tiny", "data": {"name": "digits"}, "model": {"name": "M-T/4"}, "train": {"steps": 100},
        "sample": {"num_samples": 1000}, "variants": {"a": {}, "b": {"model": {"mixer_kwargs": {"degree": 1}}},
                                                      "c": {"model": {"name": "M-S/2"}}}})
    _write(tmp_path / "feat" / "metrics.json", {"train_seconds": 60.0, "threads": 1})
    _write(tmp_path / "feat" / "calibration.json", {"floor": 1.0})
    _record(tmp_path, pipe, "a", 0, train_s=600, sample_s=300, eval_s=30)
    _record(tmp_path, pipe, "a", 1, train_s=1200, sample_s=300, eval_s=None)
    steps = [Step("featurenet", "featurenet", ".", outs=["feat/net.pt", "feat/metrics.json"]),
             Step("calibrate", "calibrate", ".", outs=["feat/calibration.json"])]
    for variant, seed in (("a", 0), ("a", 1), ("b", 0), ("c", 0)):
        steps += _run_steps(pipe, variant, seed)
    return tmp_path, steps


def test_recorded_durations_sum_by_kind_and_arm(synthetic):
    root, steps = synthetic
    doc = budget.budget(steps, root, cores=2, target="papers/p/dvc.yaml")
    rows = {r["stage"]: r for r in doc["stages"]}
    assert [r["stage"] for r in doc["stages"]] == [s.stage for s in steps]   # every stage, in the plan's order
    # threads 0 (torch's default) counts as every core: CPU = 2 x wall, wall unchanged
    t0 = rows["papers/p/dvc.yaml:train@a-0"]
    assert (t0["status"], t0["wall_minutes"], t0["cpu_minutes"], t0["threads"], t0["threads_assumed"]) == \
        ("recorded", 10.0, 20.0, 2, True)
    ev = rows["papers/p/dvc.yaml:evaluate@a-0"]                                # one thread, recorded
    assert (ev["wall_minutes"], ev["cpu_minutes"], ev["threads_assumed"]) == (0.5, 0.5, False)
    assert rows["papers/p/dvc.yaml:evaluate@a-1"]["status"] == "not recorded"  # older eval.json: no time
    assert rows["papers/p/dvc.yaml:collect@a-0"]["status"] == "not recorded"
    assert rows["featurenet"]["source"] == "feat/metrics.json: train_seconds"
    assert (rows["featurenet"]["wall_minutes"], rows["calibrate"]["status"]) == (1.0, "not recorded")

    kinds = doc["by_kind"]
    assert (kinds["train"]["wall_minutes"], kinds["train"]["cpu_minutes"], kinds["train"]["recorded"]) == (30.0, 60.0, 2)
    assert (kinds["sample"]["wall_minutes"], kinds["evaluate"]["wall_minutes"]) == (10.0, 0.5)
    a = doc["by_arm"]["p/a"]
    assert (a["seeds"], a["recorded_seeds"], a["wall_minutes"], a["cpu_minutes"]) == ([0, 1], [0, 1], 40.5, 80.5)
    assert (a["kinds"]["train"]["min_wall_minutes"], a["kinds"]["train"]["max_wall_minutes"]) == (10.0, 20.0)
    assert doc["by_arm"]["one-off"]["wall_minutes"] == 1.0
    t = doc["totals"]
    assert (t["stages"], t["recorded"], t["not_recorded"], t["not_run"]) == (18, 6, 4, 8)
    assert (t["wall_minutes"], t["cpu_minutes"]) == (41.5, 81.5)
    assert sum(g["wall_minutes"] for g in kinds.values()) == sum(g["wall_minutes"] for g in doc["by_arm"].values()) \
        == t["wall_minutes"]


def test_runs_not_run_are_shown_and_estimated_only_from_the_same_model(synthetic):
    root, steps = synthetic
    doc = budget.budget(steps, root, cores=2, target="papers/p/dvc.yaml", target_minutes=60)
    rows = {r["stage"]: r for r in doc["stages"]}
    for kind in ("train", "sample", "evaluate", "collect"):
        assert rows[f"papers/p/dvc.yaml:{kind}@b-0"]["status"] == "not run"
        c = rows[f"papers/p/dvc.yaml:{kind}@c-0"]
        assert (c["status"], c["wall_minutes"], c["estimate"]) == ("not run", None, None)
    est = rows["papers/p/dvc.yaml:train@b-0"]["estimate"]
    assert (est["from"], est["wall_minutes"], est["cpu_minutes"], est["stages"]) == ("p/a", 15.0, 30.0, 2)
    assert rows["papers/p/dvc.yaml:evaluate@b-0"]["estimate"]["wall_minutes"] == 0.5   # the one recorded
    assert rows["papers/p/dvc.yaml:collect@b-0"]["estimate"] is None
    b, c = doc["by_arm"]["p/b"], doc["by_arm"]["p/c"]
    assert (b["recorded_seeds"], b["estimated_wall_minutes"], b["estimated_cpu_minutes"]) == ([], 20.5, 40.5)
    assert "differs in model.mixer_kwargs.degree" in b["estimate"]["basis"]
    assert c["estimate"] is None and c["not_run"] == 4
    t = doc["totals"]
    assert (t["estimated"], t["estimated_wall_minutes"], t["wall_minutes_with_estimates"]) == (3, 20.5, 62.0)
    assert (t["without_duration"], t["over_target"]) == (9, True)
    # under the target with stages still unknown: not decided
    assert budget.budget(steps, root, target_minutes=100)["totals"]["over_target"] is None

    md = budget.markdown(doc)
    assert "**over the target of 60 min**" in md and "62.0 min" in md
    assert "| `p/c` | 0 | – | – | – | – | – | – | no estimate |" in md
    assert "20.5 (estimate from `p/a`)" in md and "Estimates (not measurements)" in md
    assert all(f"`{s.stage}`" in md for s in steps)


def test_threads_and_cores():
    """More threads than cores: the wall-clock on fewer cores grows; one core: CPU = wall."""
    t = budget.Timing("recorded", 600.0, 4)
    assert budget._minutes(t, 2) == {"cpu_minutes": 40.0, "wall_minutes": 20.0, "threads": 4, "threads_assumed": False}
    assert budget._minutes(budget.Timing("recorded", 600.0, 0), 1)["cpu_minutes"] == 10.0


def test_variant_config_order():
    """base <- preset <- variant <- the variant's preset overrides, as the run config merges them."""
    params = {"preset": "big", "model": {"name": "A", "overrides": {"x": 1}}, "presets": {"big": {"model": {"name": "B"}}},
              "variants": {"v": {"model": {"overrides": {"y": 2}}, "preset_overrides": {"big": {"model": {"name": "C"}}}},
                           "bare": None}}
    assert budget.variant_config(params, "v")["model"] == {"name": "C", "overrides": {"x": 1, "y": 2}}
    assert budget.variant_config(params, "bare")["model"]["name"] == "B"
    assert budget.variant_config(params, "missing") is None


def _mini_repo(root: Path) -> None:
    """A DVC project (no git): a root stage, a paper pipeline of two runs over it, an unrelated stage."""
    (root / ".dvc").mkdir()  # what `dvc init --no-scm` leaves (its logger would outlive pytest's capture)
    (root / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    _write(root / "dvc.yaml", {"stages": {
        "prep": {"cmd": "echo prep > prep.json", "outs": ["prep.json"]},
        "unrelated": {"cmd": "echo x > other.txt", "outs": ["other.txt"]}}})
    run, kept = "runs/${item.variant}/s${item.seed}", "papers/p/results/runs/${item.variant}/s${item.seed}"
    (root / "papers" / "p").mkdir(parents=True)
    (root / "papers" / "p" / "dvc.yaml").write_text(yaml.safe_dump({
        "vars": [{"runs": {"a-0": {"variant": "a", "seed": 0}, "b-0": {"variant": "b", "seed": 0}}}],
        "stages": {
            "train": {"foreach": "${runs}", "do": {"wdir": "../..", "cmd": "train", "deps": ["prep.json"],
                                                   "outs": [f"{run}/train.json"]}},
            "collect": {"foreach": "${runs}", "do": {"wdir": "../..", "cmd": "collect", "deps": [run],
                                                     "outs": [{kept: {"cache": False}}]}},
            "results": {"wdir": "../..", "cmd": "results", "deps": ["papers/p/results/runs"],
                        "outs": [{"papers/p/results/table.json": {"cache": False}}]}}}))
    (root / "papers" / "q").mkdir(parents=True)   # another pipeline reusing run a-0 as its arm `ref`
    (root / "papers" / "q" / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"reference": {
        "wdir": "../..", "cmd": "share", "deps": ["papers/p/results/runs/a/s0"],
        "outs": [{"papers/q/results/runs/ref": {"cache": False}}]}}}))
    (root / "papers/q/results/runs/ref/s0").mkdir(parents=True)
    (root / "papers/q/results/runs/ref/s0/SHARED_FROM").write_text("papers/p/results/runs/a/s0\n")
    _write(root / "papers" / "p" / "params.yaml", {"model": {"name": "M"}, "variants": {"a": {}, "b": {}}})
    _write(root / "prep.json", {"seconds": 90.0})
    _record(root, "papers/p", "a", 0, train_s=120, sample_s=0, eval_s=None)


def test_plan_is_dvcs_and_main_writes_both_files(tmp_path, monkeypatch, capsys):
    _mini_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    root, steps = budget.plan("papers/p/dvc.yaml")
    assert root.resolve() == tmp_path.resolve()
    names = [s.stage for s in steps]
    assert "unrelated" not in names and names[0] == "prep"     # upstream first, nothing off the path
    assert sorted(names) == sorted(["prep", "papers/p/dvc.yaml:results"] + [
        f"papers/p/dvc.yaml:{k}@{r}" for k in ("train", "collect") for r in ("a-0", "b-0")])
    train_a = next(s for s in steps if s.stage.endswith("train@a-0"))
    assert (train_a.kind, train_a.variant, train_a.seed, train_a.pipeline) == ("train", "a", 0, "papers/p")

    doc = budget.main(["papers/p/dvc.yaml", "--out", "papers/p/results/budget.json", "--cores", "2"])
    saved = json.loads((tmp_path / "papers/p/results/budget.json").read_text())
    assert saved == json.loads(json.dumps(doc))
    rows = {r["stage"]: r for r in saved["stages"]}
    assert rows["prep"]["wall_minutes"] == 1.5 and rows["papers/p/dvc.yaml:train@a-0"]["wall_minutes"] == 2.0
    assert rows["papers/p/dvc.yaml:train@b-0"]["status"] == "not run"
    assert rows["papers/p/dvc.yaml:train@b-0"]["estimate"]["from"] == "p/a"
    md = (tmp_path / "papers/p/results/budget.md").read_text()
    assert md.startswith("# CPU budget of `dvc repro papers/p/dvc.yaml`")
    assert "papers/p/dvc.yaml: 6 stages" in capsys.readouterr().out
    assert saved["by_arm"]["p/a"]["shared_as"] == []

    shared = budget.main(["papers/q/dvc.yaml", "--out", "papers/q/results/budget.json"])  # the run, shared
    assert [r["stage"] for r in shared["stages"]][-1] == "papers/q/dvc.yaml:reference"
    assert shared["by_arm"]["p/a"]["shared_as"] == ["papers/q/results/runs/ref"]
    assert "`p/a` (shared as `papers/q/results/runs/ref`)" in (tmp_path / "papers/q/results/budget.md").read_text()


@pytest.mark.parametrize("args, culprit", [
    (["nope/dvc.yaml", "--out", "b.json"], "nope/dvc.yaml"),
    (["papers/p/dvc.yaml", "--out", "b.txt"], "b.txt"),
    (["papers/p/dvc.yaml", "--out", "b.json", "--cores", "0"], "--cores"),
])
def test_errors_are_one_line(tmp_path, monkeypatch, capsys, args, culprit):
    _mini_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        budget.main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and culprit in err and "\n" not in err
    assert not (tmp_path / "b.json").exists()


def test_repro_plan_of_the_default_pipeline(monkeypatch):
    """`make repro`'s plan, read from this repository: the shared reference's runs and the root stages it
    needs are upstream of it, no other arm of their paper is, and the budget stage's deps hold none of the
    train or sample stages' code."""
    target = (ROOT / "Makefile").read_text().split("$(BIN)/dvc repro ")[1].split()[0]
    monkeypatch.chdir(ROOT)
    _, steps = budget.plan(target)
    own = Path(target).parent.as_posix()
    ref = yaml.safe_load((ROOT / own / "params.yaml").read_text())["reference"]
    assert {(s.pipeline, s.variant) for s in steps if s.pipeline not in (own, ".") and s.variant} == \
        {(f"papers/{ref['paper']}", ref["variant"])}
    assert {"featurenet", "calibrate", f"{target}:budget"} <= {s.stage for s in steps}
    stages = yaml.safe_load((ROOT / target).read_text())["stages"]
    code = set(stages["train"]["do"]["deps"]) | set(stages["sample"]["do"]["deps"])
    assert not [(d, c) for d in stages["budget"]["deps"] for c in code
                if d == c or c.startswith(d.rstrip("/") + "/") or d.startswith(c.rstrip("/") + "/")]
