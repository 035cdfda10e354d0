"""pipelines.resample: a sampling-only variant (papers/dit `sit-sde`) drawn from another variant's trained
run without training. On a tiny `sit` run trained a few steps: the stage samples exactly the source's
checkpoint with the variant's own sampler, writes a run of its own that evaluate, collect and results
accept; a source that cannot stand for the variant, or a destination that is a trained run, gets one line
and nothing is written. Last, the dit pipeline lists the sampling-only runs as stages over their own list."""
import json
import shutil

import numpy as np
import pytest
import yaml

from common.config import resolve
from common.metrics import FeatNetConfig, save_featnet, train_featnet, write_reference
from pipelines import collect, evaluate, resample, results, sample
from pipelines._cli import ROOT, paper_params
from pipelines.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = ["model.name=DiT-M/8", "model.overrides.depth=2", "model.overrides.hidden_size=32", "train.batch_size=8",
        "train.log_every=1", "train.threads=1", "train.steps=3", "train.ckpt_every=3",
        "sample.num_samples=20", "sample.batch_size=10", "sample.steps=3", "sample.grid=10"]
SDE = "euler_maruyama"  # sit-sde's sampler (papers/dit/params.yaml)


def _sets(*extra):
    return [a for s in (*SETS, *extra) for a in ("--set", s)]


def _files(d):
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()) if d.exists() else []


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished tiny `sit` run, seed 0, with its own (ODE) samples."""
    run = tmp_path_factory.mktemp("runs") / "sit" / "s0"
    train_main(["dit", "sit", "--seed", "0", "--out", str(run), *_sets()])
    sample.main(["dit", "sit", "--seed", "0", "--run", str(run), *_sets()])
    return run


@pytest.fixture(scope="module")
def resampled(source):
    dst = source.parent.parent / "sit-sde" / "s0"
    resample.main(["dit", "sit-sde", "--from", "sit", "--seed", "0", "--from-run", str(source), "--run", str(dst),
                   *_sets()])
    return dst


def test_samples_the_source_checkpoint_with_the_variants_sampler(source, resampled, tmp_path):
    # the same checkpoint sampled by pipelines.sample with the SDE sampler (on a copy: it writes into the run)
    by_hand = tmp_path / "copy"
    shutil.copytree(source, by_hand)
    sample.main(["dit", "sit", "--seed", "0", "--run", str(by_hand), *_sets(f"sample.sampler={SDE}")])
    with np.load(resampled / "samples.npz") as a, np.load(by_hand / "samples.npz") as b, \
            np.load(source / "samples.npz") as ode:
        assert a["arr_0"].shape == (20, 32, 32, 1) and a["arr_0"].std() > 0
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["labels"], ode["labels"])
        assert not np.array_equal(a["arr_0"], ode["arr_0"])  # the variant's sampler, not the source's

    meta = json.loads((resampled / "samples.json").read_text())
    assert (meta["sampler"], meta["steps"], meta["num_samples"], meta["train_step"]) == (SDE, 3, 20, 3)
    run = json.loads((resampled / "run.json").read_text())
    origin = {"run": source.as_posix(), "variant": "sit", "train_step": 3}
    assert (run["paper"], run["variant"], run["sample"]["sampler"]) == ("dit", "sit-sde", SDE)
    assert run["sampled_from"] == origin
    src_train = json.loads((source / "train.json").read_text())
    train = json.loads((resampled / "train.json").read_text())
    assert train == {**{k: v for k, v in src_train.items() if k not in ("train_seconds", "train_img_per_s")},
                     "sampled_from": origin}
    assert "train_seconds" in src_train  # ...so leaving it out above was a real change
    assert _files(resampled) == ["grid.png", "run.json", "samples.json", "samples.npz", "train.json"]


@pytest.fixture(scope="module")
def featnet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("featnet")
    net, _ = train_featnet(FeatNetConfig(channels=(8, 16, 32), feat_dim=32, max_steps=30, batch_size=64, lr=1e-2),
                           log=None, eval_train=False)
    save_featnet(net, out / "mnist-cnn.pt")
    write_reference(net, out)
    return out


def test_evaluate_collect_and_results_accept_it(source, resampled, featnet_dir, tmp_path, monkeypatch):
    evaluate.main([str(source), "--featnet", str(featnet_dir)])
    (ev,) = evaluate.main([str(resampled), "--featnet", str(featnet_dir), "--paper", "dit", "--variant", "sit-sde"])
    assert (ev["sampler"], ev["dataset"], ev["preset"]) == (SDE, "mnist5k", "tiny")
    monkeypatch.chdir(tmp_path)  # results writes paths relative to the current directory (the repo root)
    committed = tmp_path / "results" / "runs"
    collect.main([str(source), str(committed / "sit" / "s0")])
    names = collect.main([str(resampled), str(committed / "sit-sde" / "s0")])
    assert names == ["run.json", "train.json", "samples.json", "eval.json", "grid.png"]  # no training curves

    doc = results.build("dit", committed, tmp_path / "results" / "metrics.json", notebooks=[], calibration=None)
    rows = {r["variant"]: r for r in doc["rows"]}
    sde, ode = rows["sit-sde"], rows["sit"]
    assert (sde["sampler"], ode["sampler"]) == (SDE, "euler")
    assert sde["fid_per_seed"] == [ev["fid"]] and sde["fid"] != ode["fid"]
    assert {k: sde[k] for k in ("params", "gflops", "train_steps")} == {k: ode[k] for k in ("params", "gflops", "train_steps")}
    assert "train_seconds" not in sde and ode["train_seconds"] > 0  # the source's training is counted once
    (claim,) = [c for c in doc["claims"] if c["key"] == "sde-beats-ode"]
    assert claim["values"] == {"sit-sde": sde["fid_per_seed"], "sit": ode["fid_per_seed"]}
    assert "sit-sde has 1" in claim["reason"]  # judged on both arms' seeds (one each here: inconclusive)


def _refused(capsys, argv, says, *untouched):
    before = [_files(d) for d in untouched]
    with pytest.raises(SystemExit) as e:
        resample.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for s in says:
        assert s in err, err
    assert [_files(d) for d in untouched] == before


@pytest.mark.parametrize("case, says", [
    ("missing", ["has no checkpoint", "train dit/sit seed 0 first"]),
    ("another variant", ["holds dit/sit", "not dit/sit-p8"]),   # the run was trained as sit
    ("not sampling-only", ["not a sampling-only variant of 'dit'", "diffusion.objective"]),
    ("another seed", ["trained with seed 0, not 1"]),
    ("unfinished", ["no train.json", "has not finished"]),
])
def test_refuses_a_source_that_cannot_stand_for_the_variant(source, tmp_path, capsys, case, says):
    src, variant, seed = source, {"another variant": "sit-p8", "not sampling-only": "dit"}.get(case, "sit"), 0
    if case == "missing":
        src = tmp_path / "nowhere"
    elif case == "another seed":
        seed = 1
    elif case == "unfinished":
        src = tmp_path / "unfinished"
        shutil.copytree(source, src)
        (src / "train.json").unlink()
    dst = tmp_path / "sit-sde"
    _refused(capsys, ["dit", "sit-sde", "--from", variant, "--seed", str(seed), "--from-run", str(src),
                      "--run", str(dst), *_sets()], says, dst, source)


@pytest.mark.parametrize("case", ["the source itself", "a trained run", "another variant's run"])
def test_refuses_a_destination_that_is_not_its_own(source, tmp_path, capsys, case):
    dst = {"the source itself": source, "a trained run": tmp_path / "trained"}.get(case, tmp_path / "other")
    if case == "a trained run":
        (dst / "ckpt").mkdir(parents=True)
    elif case == "another variant's run":
        dst.mkdir()
        shutil.copy(source / "run.json", dst / "run.json")
    says = ["holds dit/sit", "not dit/sit-sde"] if case == "another variant's run" else ["holds a trained run"]
    _refused(capsys, ["dit", "sit-sde", "--from", "sit", "--seed", "0", "--from-run", str(source), "--run", str(dst),
                      *_sets()], says, dst, source)


def test_dit_pipeline_lists_the_sampling_only_runs():
    """`resampled` in papers/dit/dvc.yaml: each run samples a trained run of the same seed of a variant that
    differs from it only in `sample` (both presets), is never trained itself, and has the three stages."""
    from dvc.dvcfile import load_file
    from dvc.repo import Repo

    path = ROOT / "papers" / "dit" / "dvc.yaml"
    raw = yaml.safe_load(path.read_text())
    lists = {k: v for d in raw["vars"] for k, v in d.items()}
    runs, again = lists["runs"], lists["resampled"]
    trained = {(r["variant"], r["seed"]) for r in runs.values()}
    assert {(r["variant"], r["seed"]) for r in again.values()} == {("sit-sde", s) for s in (0, 1, 2)}
    params = paper_params("dit")
    for r in again.values():
        assert (r["from"], r["seed"]) in trained and (r["variant"], r["seed"]) not in trained
        for preset in ("tiny", "paper"):
            cfg = resolve(params, "dit", r["variant"], {"preset": preset})
            resample.check_sampling_only(cfg, resolve(params, "dit", r["from"], {"preset": preset}))
    stages = load_file(Repo(str(ROOT)), str(path.relative_to(ROOT))).stages
    for key, r in again.items():
        run = f"runs/dit/{r['variant']}/s{r['seed']}"
        assert stages[f"resample@{key}"].cmd.startswith(f"python -m pipelines.resample dit {r['variant']} --from {r['from']}")
        assert f"runs/dit/{r['from']}/s{r['seed']}/ckpt" in {d.def_path for d in stages[f"resample@{key}"].deps}
        assert stages[f"evaluate-resampled@{key}"].cmd == f"python -m pipelines.evaluate {run} --featnet data/featnet"
        assert stages[f"collect-resampled@{key}"].cmd == (
            f"python -m pipelines.collect {run} papers/dit/results/runs/{r['variant']}/s{r['seed']}")
