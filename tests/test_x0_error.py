"""The x0-error diagnostic (`common.diagnostics`, `pipelines.x0_error`, `notebooks.x0_error_figure`).

The property the diagnostic relies on: a network that predicts the exact answer, in whatever form its
parameterization asks (eps, v or velocity), scores ~0 x0 error at every log-SNR, because the diagnostic
reads it through the same conversion and the same times as the samplers. A wrong time, level or
conversion anywhere breaks it. Then the stage on a tiny model trained one step: a valid JSON with an
increasing log-SNR grid and finite errors, for a flow and a DDPM run."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.diagnostics import ddpm_log_snr, log_snr_grid, time_at, x0_error
from common.diffusion import create_objective
from common.report.notebooks import x0_error_figure

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = ["model.name=DiT-M/8", "model.overrides.depth=1", "model.overrides.hidden_size=32", "train.batch_size=8",
        "train.log_every=1", "train.threads=1", "train.steps=1"]


class ExactX0:
    """A stand-in network that knows the clean digits (row i of `x0`, picked by the label it is given) and
    returns, from x_t and its time input, the exact target of `objective`'s parameterization."""

    def __init__(self, objective, x0):
        self.objective, self.x0 = objective, x0

    def __call__(self, x, t_net, y, **kw):
        obj, x0 = self.objective, self.x0[y]
        t = t_net.long() if obj.name == "ddpm" else t_net / 1000.0  # the network's scale back to the objective's
        level = obj.level(t, x)
        eps = level.eps_from_x0(x, x0)
        return obj.prediction.target(x0, eps, level)


@pytest.mark.parametrize("objective,prediction", [("flow", "velocity"), ("ddpm", "eps"), ("ddpm", "v")])
def test_exact_model_scores_zero_at_every_log_snr(objective, prediction):
    obj = create_objective(objective, prediction=prediction)
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    idx = torch.arange(len(x0))  # the stub's "labels" index the digits
    grid = log_snr_grid(9)
    pts = x0_error(ExactX0(obj, x0), obj, x0, idx, grid, batch_size=4)  # 2 batches: rows keep their noise
    assert [p["log_snr"] for p in pts] == pytest.approx(list(grid))
    assert max(p["mse"] for p in pts) < 1e-8
    # ...and the diagnostic is not blind: a network that is off by a constant in its own output is caught
    class Off(ExactX0):
        def __call__(self, x, t_net, y, **kw):
            return super().__call__(x, t_net, y) + 0.1

    off = x0_error(Off(obj, x0), obj, x0, idx, grid)
    assert min(p["mse"] for p in off) > 1e-7


def test_times_land_on_the_asked_log_snr():
    flow, ddpm = create_objective("flow"), create_objective("ddpm")
    lams = ddpm_log_snr(ddpm)
    assert np.all(np.diff(lams) < 0)  # noise grows with the step
    for lam in log_snr_grid(12):
        t, used = time_at(flow, lam)
        assert used == lam and math.log((1 - t) ** 2 / t**2) == pytest.approx(lam, abs=1e-9)
        k, used = time_at(ddpm, lam)
        ac = ddpm.base.alphas_cumprod[k]
        assert used == pytest.approx(math.log(ac / (1 - ac)))
        gap = max(abs(lams[max(k - 1, 0)] - lams[k]), abs(lams[min(k + 1, len(lams) - 1)] - lams[k]))
        assert abs(used - lam) <= gap  # the nearest step of the chain
    with pytest.raises(ValueError, match="at least 2"):
        log_snr_grid(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A flow run and a DDPM run, trained one step, laid out as <root>/<variant>/s0 (as runs/<paper>/ is)."""
    from pipelines.train import main as train_main

    root = tmp_path_factory.mktemp("x0runs")
    out = {}
    for variant in ("sit", "dit"):
        run = root / variant / "s0"
        train_main(["dit", variant, "--out", str(run), *sum((["--set", s] for s in SETS), [])])
        out[variant] = run
    return out


def sets():
    return sum((["--set", s] for s in SETS), [])


def check_entry(e: dict, variant: str, num: int, points: int) -> None:
    assert e["variant"] == variant and e["objective"] == ("flow" if variant == "sit" else "ddpm")
    assert e["prediction"] == ("velocity" if variant == "sit" else "eps") and e["protocol"]["num"] == num
    lam = [p["log_snr_used"] for p in e["points"]]
    assert len(lam) == points and all(b > a for a, b in zip(lam, lam[1:]))
    assert all(math.isfinite(p["mse"]) and p["mse"] >= 0 and math.isfinite(p["sem"]) for p in e["points"])


@pytest.mark.parametrize("variant", ["sit", "dit"])
def test_stage_writes_valid_json(runs, variant):
    from pipelines.x0_error import main

    run = runs[variant]
    out = run / "x0_error.json"
    main(["dit", variant, "--run", str(run), "--points", "5", "--num", "20", "--out", str(out), *sets()])
    doc = json.loads(out.read_text())
    assert doc["paper"] == "dit" and len(doc["runs"]) == 1
    check_entry(doc["runs"][0], variant, 20, 5)


def test_stage_measures_several_runs_into_one_file(runs, tmp_path):
    """Variants x seeds under a runs root, in the order asked, each exactly as measured alone (the noise
    depends on the digit alone, not on which runs share the call)."""
    from pipelines.x0_error import main

    root = runs["sit"].parents[1]
    out = tmp_path / "x0_error.json"
    main(["dit", "dit", "sit", "--seeds", "0", "--runs-root", str(root), "--points", "4", "--num", "12",
          "--out", str(out), *sets()])
    doc = json.loads(out.read_text())
    assert [(e["variant"], e["seed"]) for e in doc["runs"]] == [("dit", 0), ("sit", 0)]
    for e in doc["runs"]:
        check_entry(e, e["variant"], 12, 4)
        alone = main(["dit", e["variant"], "--run", str(runs[e["variant"]]), "--points", "4", "--num", "12",
                      "--out", str(tmp_path / "alone.json"), *sets()])
        assert alone["runs"][0]["points"] == e["points"]


def test_stage_refuses_bad_points_and_another_variant(runs, capsys):
    from pipelines.x0_error import main

    with pytest.raises(SystemExit) as e:
        main(["dit", "sit", "--run", str(runs["sit"]), "--points", "1"])
    assert e.value.code == 2 and "--points" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the run holds sit, not dit: refused before anything is written
        main(["dit", "dit", "--run", str(runs["sit"]), "--out", str(runs["sit"] / "wrong.json"), *sets()])
    assert e.value.code == 2 and "variant" in capsys.readouterr().err
    assert not (runs["sit"] / "wrong.json").exists()


@pytest.mark.parametrize("argv,says", [
    (["sit", "dit", "--run", "x"], "--run names one run"),
    (["sit", "dit"], "--out is required"),
    (["sit", "sit", "--out", "x.json"], "given twice"),
])
def test_stage_refuses_ambiguous_run_lists(argv, says, capsys):
    from pipelines.x0_error import main

    with pytest.raises(SystemExit) as e:
        main(["dit", *argv])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_a_missing_run_among_several_is_refused_before_any_work(runs, tmp_path, capsys):
    from pipelines.x0_error import main

    out = tmp_path / "x0_error.json"
    with pytest.raises(SystemExit) as e:  # sit/s1 was never trained
        main(["dit", "sit", "--seeds", "0", "1", "--runs-root", str(runs["sit"].parents[1]), "--out", str(out),
              *sets()])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "s1" in err and "no checkpoint" in err and not out.exists()


def test_figure_draws_one_line_per_run(runs):
    docs = [json.loads((runs[v] / "x0_error.json").read_text()) for v in ("sit", "dit")
            if (runs[v] / "x0_error.json").exists()]
    if len(docs) < 2:  # run alone: make them
        test_stage_writes_valid_json(runs, "sit")
        test_stage_writes_valid_json(runs, "dit")
        docs = [json.loads((runs[v] / "x0_error.json").read_text()) for v in ("sit", "dit")]
    # an output (several runs), a path to one, and a bare run entry each count their runs
    fig = x0_error_figure(docs + [str(runs["sit"] / "x0_error.json"), docs[1]["runs"][0]])
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 4 and ax.get_yscale() == "log"
    assert x0_error_figure([]) is None and x0_error_figure("no/such/x0_error.json") is None


def x0_stages():
    """(paper, stage name, stage, the file's vars) of every dvc.yaml stage that runs pipelines.x0_error."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "papers").glob("*/dvc.yaml")):
        doc = yaml.safe_load(path.read_text())
        for name, st in doc["stages"].items():
            if str(st.get("cmd", "")).startswith("python -m pipelines.x0_error"):
                yield path.parent.name, name, st, doc.get("vars", [])


def test_dvc_stage_deps_are_the_checkpoints_of_the_runs_it_measures():
    """DVC cannot expand a list into deps, so a stage names its runs twice: in its command and as checkpoint
    deps. They must agree (a run measured but not a dep would not re-run the stage when retrained; a dep not
    measured re-runs it for nothing), every run must be one the paper's pipeline trains, and the output is
    committed (cache: false) so the page rebuilds on a fresh clone."""
    import shlex

    from pipelines.x0_error import parse_args, run_dirs

    stages = list(x0_stages())
    assert stages  # papers/dit has one
    for paper, name, st, variables in stages:
        argv = shlex.split(st["cmd"])[3:]
        args = parse_args(argv)
        assert args.paper == paper and not args.run, f"{paper}:{name} measures another paper's runs"
        measured = {f"{d.as_posix()}/ckpt" for _, _, d in run_dirs(args)}
        assert {d for d in st["deps"] if d.endswith("/ckpt")} == measured, f"{paper}:{name}"
        trained = next(v["runs"] for v in variables if isinstance(v, dict) and "runs" in v)
        assert {(v, s) for v, s, _ in run_dirs(args)} <= {(r["variant"], r["seed"]) for r in trained.values()}
        assert {"pipelines/x0_error.py", "common/diagnostics.py"} <= set(st["deps"])
        outs = {k: v for o in st["outs"] for k, v in (o.items() if isinstance(o, dict) else [(o, {})])}
        assert outs == {args.out: {"cache": False}}
