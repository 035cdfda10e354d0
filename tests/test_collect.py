"""pipelines.collect: a run's small files (never its checkpoints or samples) copied to the committed
results; a source that is not a finished, evaluated run gets one line and nothing is written."""
import pytest

from pipelines import collect


def _run(d, files=("run.json", "train.json", "samples.json", "eval.json", "grid.png")):
    (d / "ckpt").mkdir(parents=True)
    (d / "ckpt" / "latest.pt").write_bytes(b"big")
    (d / "samples.npz").write_bytes(b"big")
    (d / "dvclive" / "plots" / "metrics" / "train").mkdir(parents=True)
    (d / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").write_text("step\tloss\n1\t0.5\n")
    for f in files:
        (d / f).write_text(f"{f}\n")
    return d


def test_copies_the_small_files_only(tmp_path):
    src, dst = _run(tmp_path / "runs" / "v" / "s0"), tmp_path / "results" / "runs" / "v" / "s0"
    (dst / "stale").mkdir(parents=True)                       # a previous copy is replaced as a whole
    assert collect.main([str(src), str(dst)]) == ["run.json", "train.json", "samples.json", "eval.json",
                                                   "grid.png", "dvclive"]
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == [
        "dvclive/plots/metrics/train/loss.tsv", "eval.json", "grid.png", "run.json", "samples.json", "train.json"]
    assert (dst / "eval.json").read_text() == "eval.json\n"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["s0"]  # no temporary or old copy left


@pytest.mark.parametrize("case, says", [("missing", "not found"), ("untrained", "no train.json"),
                                        ("unevaluated", "no eval.json"), ("overlap", "overlaps")])
def test_bad_sources(tmp_path, capsys, case, says):
    src = tmp_path / "run"
    dst = tmp_path / "out"
    if case == "untrained":
        _run(src, files=("run.json",))
    elif case == "unevaluated":
        _run(src, files=("run.json", "train.json"))
    elif case == "overlap":
        _run(src)
        dst = src / "copy"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        collect.main([str(src), str(dst)])
    err = capsys.readouterr().err
    assert e.value.code != 0 and says in err and len(err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before
