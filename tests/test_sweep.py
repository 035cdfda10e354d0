"""The sweep table (pipelines/sweep.py): experiments read from a saved `dvc exp show --json` (the layout dvc
3 prints), the params each one changed, the gate column, rows for experiments without metrics, and one
line plus exit status 2 for a bad input, with nothing written."""
import json
import os
import stat

import pytest
import yaml

from pipelines import sweep

PARAMS = "papers/demo/sweep/params.yaml"
RUN = "papers/demo/sweep/run"
BASE = {"preset": "tiny", "data": {"name": "mnist5k"}, "model": {"name": "DiT-T/4"},
        "train": {"steps": 1200, "lr": 0.003, "batch_size": 64}, "sample": {"use_ema": True}, "seed": 100,
        "variants": {"point": {}}}


def tracked(**changes) -> dict:
    """The params dvc lists for an experiment: the tracked sections (no seed, no variants), with changes."""
    p = json.loads(json.dumps({k: v for k, v in BASE.items() if k not in ("seed", "variants")}))
    for key, value in changes.items():
        node = p
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return p


def rev(name, params, eval_=None, train=None, error=None):
    metrics = {f"{RUN}/eval.json": {"data": eval_} if eval_ else
               {"error": {"type": "FileNotFoundError", "msg": "No such file"}},
               f"{RUN}/train.json": {"data": train} if train else {"error": {"type": "FileNotFoundError"}},
               "papers/demo/results/metrics.json": {"data": {"fid": 1.0}}}  # another file: not the sweep's
    return {"rev": f"{name:0<40}"[:40], "name": name, "error": error,
            "data": {"rev": "x", "params": {"params.yaml": {"data": {}}, PARAMS: {"data": params}},
                     "metrics": metrics}}


def evaluation(cc, fid, seed=100):
    return {"fid": fid, "class_consistency": cc, "precision": 0.7, "recall": 0.8, "kid": 0.5,
            "fid_features": "mnist-cnn", "fid_samples": 500, "sample_seed": seed}


TRAIN = {"train_seconds": 400.0, "train_img_per_s": 190.0, "params": 1_285_664, "gflops": 0.11,
         "train_steps": 1200, "machine": {"matmul_gflops_per_s": 42.0}}


def exp_show() -> list:
    """A workspace, a commit holding the sweep's metrics (not an experiment), and five experiments."""
    exps = [("lr-1e-3", "failed", rev("lr-1e-3", tracked(**{"train.lr": 0.001}),
                                      error={"type": "ReproductionError", "msg": "failed to reproduce 'train'"})),
            ("raw-weights", "running", rev("raw-weights", tracked(**{"sample.use_ema": False}))),
            ("t-uniform", "success", rev("t-uniform", tracked(**{"diffusion.t_sampling": "uniform"}),
                                         evaluation(0.55, 9.5), TRAIN)),
            ("base-seed-101", None, rev("base-seed-101", tracked(), evaluation(0.93, 4.0, seed=101), TRAIN)),
            ("base", "success", rev("base", tracked(), evaluation(0.91, 4.4), TRAIN))]
    commit = rev("main", tracked(), evaluation(0.9, 1.0), TRAIN)
    commit["experiments"] = [{"name": n, "executor": {"state": s} if s else None, "revs": [r]} for n, s, r in exps]
    return [{"rev": "workspace", "name": None, "data": commit["data"], "error": None, "experiments": None}, commit]


def write_sweep(path) -> dict:
    """The sweep.json of the listing above at `path`, as the stage writes it (for the leaderboard tests)."""
    doc = sweep.build(exp_show(), PARAMS, BASE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repo root (the current directory) with the sweep's params file and a saved listing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / PARAMS).parent.mkdir(parents=True)
    (tmp_path / PARAMS).write_text(yaml.safe_dump(BASE))
    (tmp_path / "show.json").write_text(json.dumps(exp_show()))
    return tmp_path


@pytest.fixture
def cli(capsys):
    def run(*args):
        try:
            sweep.main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_rows_changed_params_states_and_gate(repo, cli):
    code, out, err = cli("--from", "show.json", "--out", "papers/demo/results/sweep.json")
    assert code == 0 and err == "" and "5 experiments (3 with metrics)" in out
    doc = json.loads((repo / "papers/demo/results/sweep.json").read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    assert [r["name"] for r in doc["rows"]][0] == "base" and set(rows) == {
        "base", "base-seed-101", "t-uniform", "raw-weights", "lr-1e-3"}  # the commit is not an experiment
    assert rows["base"]["changed"] == {} and rows["base"]["seed"] == 100
    assert rows["lr-1e-3"]["changed"] == {"train.lr": 0.001}
    assert rows["raw-weights"]["changed"] == {"sample.use_ema": False}
    assert rows["t-uniform"]["changed"] == {"diffusion.t_sampling": "uniform"}
    assert rows["base-seed-101"]["changed"] == {"seed": 101}  # from eval.json: dvc does not list the seed
    assert {n: r["state"] for n, r in rows.items()} == {
        "base": "success", "base-seed-101": "success", "t-uniform": "success", "raw-weights": "running",
        "lr-1e-3": "failed"}
    assert "failed to reproduce" in rows["lr-1e-3"]["error"]
    assert {n: r["gate_passed"] for n, r in rows.items()} == {
        "base": True, "base-seed-101": True, "t-uniform": False, "raw-weights": None, "lr-1e-3": None}
    base = rows["base"]
    assert (base["fid"], base["class_consistency"], base["steps"], base["params"]) == (4.4, 0.91, 1200, 1_285_664)
    assert base["matmul_gflops_per_s"] == 42.0 and rows["lr-1e-3"]["fid"] is None
    assert (doc["dataset"], doc["fid_features"], doc["fid_samples"], doc["toy_scale"]) == ("mnist5k", "mnist-cnn", 500, True)
    assert doc["params_file"] == PARAMS and doc["gate"] == {"metric": "class_consistency", "min": sweep.GATE_MIN}


def test_markdown_table(repo, cli):
    cli("--from", "show.json", "--out", "out/sweep.json")
    md = (repo / "out/sweep.md").read_text().splitlines()
    table = [ln for ln in md if ln.startswith("| ")]
    assert table[0].startswith("| experiment | changed | state |") and len(table) == 6
    assert table[1].startswith("| base | (the recipe) | success | 100 | 1.2k | 4.40 | 0.910 | pass |")
    cells = {ln.split(" | ")[0][2:]: ln.split(" | ") for ln in table[1:]}
    assert cells["t-uniform"][1] == "`diffusion.t_sampling=uniform`" and cells["t-uniform"][7] == "fail"
    assert cells["raw-weights"][1] == "`sample.use_ema=false`" and cells["raw-weights"][2] == "running"
    assert cells["lr-1e-3"][2] == "failed" and cells["lr-1e-3"][5] == "–"
    (line,) = [ln for ln in md if ln.startswith("Gate:")]
    for words in ("class-consistency >= 0.8", "mnist5k", "mnist-cnn", "500 samples", "toy scale",
                  "never comparable with ImageNet FIDs"):
        assert words in line


def test_paper_preset_is_not_labelled_toy(repo, cli):
    (repo / PARAMS).write_text(yaml.safe_dump({**BASE, "preset": "paper"}))
    cli("--from", "show.json", "--out", "sweep.json")
    assert json.loads((repo / "sweep.json").read_text())["toy_scale"] is False
    assert "toy scale" not in (repo / "sweep.md").read_text()


def fake_dvc(repo, monkeypatch, script: str):
    """A `dvc` executable first on PATH that runs `script` (sh)."""
    bindir = repo / "bin"
    bindir.mkdir()
    dvc = bindir / "dvc"
    dvc.write_text("#!/bin/sh\n" + script + "\n")
    dvc.chmod(dvc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_reads_dvc_exp_show(repo, cli, monkeypatch):
    fake_dvc(repo, monkeypatch, f'[ "$*" = "exp show --json -A --no-pager" ] && cat "{repo}/show.json"')
    code, out, _ = cli("--out", "sweep.json")
    assert code == 0 and len(json.loads((repo / "sweep.json").read_text())["rows"]) == 5


BAD = [
    ("missing", ["--from", "nope.json"], ["--from 'nope.json' not found"]),
    ("not json", ["--from", "bad.json"], ["'bad.json'", "not valid JSON"]),
    ("not a list", ["--from", "dict.json"], ["'dict.json'", "JSON list", "dict"]),
    ("no sweep", ["--from", "other.json"], ["no sweep params file", "--params"]),
    ("unknown params file", ["--from", "show.json", "--params", "other/params.yaml"],
     ["no experiment", "'other/params.yaml'"]),
    ("params file missing", ["--from", "show.json", "--params", "gone/params.yaml"],
     ["params file not found", "gone/params.yaml"]),
    ("dvc fails", [], ["dvc exp show", "status 1", "not a DVC repository"]),
]


@pytest.mark.parametrize("case, args, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_exit_2(repo, cli, monkeypatch, case, args, words):
    (repo / "bad.json").write_text('[{"rev": ')
    (repo / "dict.json").write_text("{}")
    (repo / "other").mkdir()
    (repo / "other" / "params.yaml").write_text(yaml.safe_dump(BASE))
    (repo / "other.json").write_text(json.dumps([{"rev": "workspace", "data": {"params": {"params.yaml": {}}}}]))
    fake_dvc(repo, monkeypatch, 'echo "ERROR: not a DVC repository" >&2; exit 1')
    code, out, err = cli(*args, "--out", "res/sweep.json")
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line
    assert not (repo / "res").exists()


def test_tolerates_odd_entries(repo, cli):
    """Entries dvc may print half-filled (no data, an error instead of params, junk) are skipped, not fatal."""
    doc = exp_show() + ["junk", {"rev": "abc", "data": [], "experiments": {"x": 1}},
                        {"rev": "def", "experiments": [{"name": "gone", "revs": [{"rev": "1" * 40, "data": None}]},
                                                      "junk"]}]
    (repo / "odd.json").write_text(json.dumps(doc))
    code, _, err = cli("--from", "odd.json", "--out", "sweep.json")
    assert code == 0 and err == ""
    assert len(json.loads((repo / "sweep.json").read_text())["rows"]) == 5  # "gone" has no params: not the sweep's


def test_a_change_that_changed_no_sample_is_flagged():
    """An experiment whose samples score exactly as the base's (e.g. an EMA decay above the warm-up cap)
    is named under the table: it measured nothing."""
    doc = exp_show()
    same = rev("ema-0.999", tracked(**{"train.ema_decay": 0.999}), evaluation(0.91, 4.4), TRAIN)
    doc[1]["experiments"].append({"name": "ema-0.999", "executor": {"state": "success"}, "revs": [same]})
    out = sweep.build(doc, PARAMS, BASE)
    flags = {r["name"]: r["same_as_base"] for r in out["rows"]}
    assert flags["ema-0.999"] and not flags["base"] and not flags["t-uniform"] and not flags["base-seed-101"]
    assert "had no effect on the samples): ema-0.999." in sweep.markdown(out)
