"""The one verdict rule (common/metrics/schema.py): every branch on synthetic rows.

Rows carry per-seed values as the results stage writes them. FID is lower-is-better; the image gate is a
mean class-consistency >= 0.8 over an arm's seeds; margins are checked against the calibrated noise floor.
"""
import pytest
from scipy import stats

from common.metrics.schema import (
    ClaimError,
    ClaimSpec,
    claim_specs,
    judge,
    seeds_needed,
    validate_metrics,
    welch,
)

CALIB = {"image": {"fid_real_vs_real": {"300": 0.9, "1000": 0.3}},
         "video": {"moving_mnist": {"frame_fid_real_vs_real": 1.5,
                                    "gate": {"frame_fid_max": 3.0, "class_consistency_min": 0.8,
                                             "temporal_consistency_min": 0.85}}}}


def row(variant, fids, cc=0.9, n=1000, **kw):
    return {"variant": variant, "fid": sum(fids) / len(fids), "fid_per_seed": list(fids), "fid_features": "mnist-cnn",
            "fid_samples": n, "seeds": list(range(len(fids))), "class_consistency": cc,
            "class_consistency_per_seed": [cc] * len(fids), **kw}


def spec(kind="better", margin=1.0, metric="fid", gate="image", compares=("a", "b")):
    return ClaimSpec(key="k", claim="a beats b", paper="p", compares=compares, metric=metric, direction="lower",
                     kind=kind, margin=margin, gate=gate)


def test_welch_matches_scipy():
    a, b = [1.0, 2.0, 3.5], [4.0, 4.5, 6.0, 5.0]
    w = welch(a, b)
    t, p_two = stats.ttest_ind(a, b, equal_var=False)
    assert w["diff"] == pytest.approx(sum(a) / 3 - sum(b) / 4)
    assert w["p_one_sided"] == pytest.approx(1 - p_two / 2)  # "a > b" is the unlikely side here
    lo, hi = w["ci90"]
    assert lo < w["diff"] < hi and (hi - lo) / 2 == pytest.approx(stats.t.ppf(0.95, w["df"]) * w["se"])


def test_better_reproduced_and_the_other_gate_shown():
    c = judge(spec(), [row("a", [4.0, 4.2, 3.9]), row("b", [9.0, 9.5, 8.8], cc=0.3)], CALIB)
    assert (c["verdict"], c["outcome"]) == ("reproduced", "better")
    assert c["gate"]["passed"] is True and c["gate"]["arms"]["b"]["passed"] is False
    assert "b class-consistency 0.30 < 0.8" in c["reason"]  # an ablation that collapses is a result
    assert c["values"] == {"a": [4.0, 4.2, 3.9], "b": [9.0, 9.5, 8.8]} and "one-sided Welch" in c["rule"]
    doc = {"paper": "x", "title": "t", "arxiv": "2411.12663", "preset": "tiny", "dataset": "mnist5k",
           "rows": [row("a", [4.0, 4.2, 3.9]), row("b", [9.0, 9.5, 8.8])], "claims": [c]}
    assert validate_metrics(doc) == []


def test_better_claimed_but_worse_is_not_reproduced():
    c = judge(spec(), [row("a", [9.0, 9.5, 8.8]), row("b", [4.0, 4.2, 3.9])], CALIB)
    assert (c["verdict"], c["outcome"]) == ("not reproduced", "worse")


def test_better_claimed_but_within_the_margin_is_not_reproduced():
    c = judge(spec(), [row("a", [4.0, 4.1, 3.9]), row("b", [4.2, 4.1, 4.3])], CALIB)
    assert (c["verdict"], c["outcome"]) == ("not reproduced", "comparable")


def test_significant_but_below_the_margin_is_inconclusive():
    """A tiny, real gain: the one-sided test passes, the effect does not clear the margin, nor does the
    interval sit inside it."""
    c = judge(spec(margin=1.0), [row("a", [4.0, 4.1, 3.9]), row("b", [4.8, 4.9, 5.0])], CALIB)
    assert c["estimate"]["p_one_sided"] < 0.05 and c["estimate"]["diff"] < 1.0
    assert (c["verdict"], c["outcome"]) == ("inconclusive", "inconclusive")


def test_comparable_reproduced_needs_both_gates():
    rows = [row("a", [4.0, 4.2, 4.1]), row("b", [4.1, 4.0, 4.3])]
    c = judge(spec(kind="comparable"), rows, CALIB)
    assert (c["verdict"], c["outcome"]) == ("reproduced", "comparable") and c["gate"]["passed"] is True
    for failing in ("a", "b"):
        bad = [r if r["variant"] != failing else {**r, "class_consistency_per_seed": [0.5, 0.6, 0.7]} for r in rows]
        c = judge(spec(kind="comparable"), bad, CALIB)
        assert c["verdict"] == "inconclusive" and "below the quality gate" in c["reason"] and failing in c["reason"]


def test_better_needs_the_better_arms_gate():
    c = judge(spec(), [row("a", [4.0, 4.2, 3.9], cc=0.5), row("b", [9.0, 9.5, 8.8])], CALIB)
    assert c["verdict"] == "inconclusive" and "below the quality gate (a)" in c["reason"]


def test_one_seed_is_inconclusive():
    c = judge(spec(), [row("a", [4.0]), row("b", [9.0, 9.5, 8.8])], CALIB)
    assert c["verdict"] == "inconclusive" and "fewer than 3 seeds (a has 1)" in c["reason"]
    assert c["estimate"] is None


def test_wide_interval_says_how_many_seeds():
    c = judge(spec(kind="comparable"), [row("a", [3.0, 6.0, 4.0]), row("b", [5.0, 2.5, 4.5])], CALIB)
    assert c["verdict"] == "inconclusive" and c["seeds_needed"] and c["seeds_needed"] > 3
    assert f"about {c['seeds_needed']} seeds" in c["reason"]


def test_seeds_needed_targets_the_decision():
    """A gain beyond the margin needs the interval to exclude zero; a gain inside it, to fit in +-margin."""
    big = seeds_needed([2.0, 12.0, 22.0], [1.0, 2.0, 3.0], margin=1.0)  # gain 10, spread 10: a few more seeds
    small = seeds_needed([1.2, 1.8, 1.5], [1.0, 1.6, 1.3], margin=1.0)  # gain 0.2, spread 0.3
    assert big is not None and 3 < big < 20
    assert small is not None and small == 3
    assert seeds_needed([0.0, 20.0, 10.0], [9.0, 11.0, 10.0], margin=1.0) is None  # no gain, spread 10
    # one arm's spread dominates: Welch's df (about 2 at 3 seeds), not the pooled 4, so 3 seeds do not decide it
    a, b = [18.6, 18.7, 4.8], [3.3, 4.1, 4.5]
    assert judge(spec(), [row("a", b), row("b", a)], CALIB)["verdict"] == "inconclusive"
    assert seeds_needed(a, b, margin=1.0) > 3


def test_missing_arm():
    c = judge(spec(), [row("a", [4.0, 4.2, 3.9])], CALIB)
    assert c["verdict"] == "inconclusive" and c["measured"] == "missing variant b"


def test_margin_below_the_noise_floor_is_refused():
    rows = [row("a", [4.0, 4.2, 3.9], n=300), row("b", [9.0, 9.5, 8.8], n=300)]
    with pytest.raises(ClaimError, match=r"claims.k.margin.*real-vs-real FID at 300 samples is 0.9"):
        judge(spec(margin=0.5), rows, CALIB)
    judge(spec(margin=0.5), [row("a", [4.0, 4.2, 3.9]), row("b", [9.0, 9.5, 8.8])], CALIB)  # 0.3 at 1,000


def test_no_calibration_is_inconclusive():
    c = judge(spec(), [row("a", [4.0, 4.2, 3.9]), row("b", [9.0, 9.5, 8.8])], None)
    assert c["verdict"] == "inconclusive" and "calibrate" in c["reason"]


def video_row(variant, ffids, cc=0.9, tc=0.95):
    r = row(variant, ffids, cc=cc, n=200)
    return {**r, "frame_fid_per_seed": list(ffids), "temporal_consistency_per_seed": [tc] * len(ffids)}


def test_video_gate():
    s = spec(kind="comparable", metric="frame_fid", gate="video", margin=2.0)
    ok = judge(s, [video_row("a", [2.0, 2.2, 2.1]), video_row("b", [2.1, 2.3, 2.0])], CALIB)
    assert ok["verdict"] == "reproduced" and "temporal consistency 0.95 (min 0.85)" in ok["gate"]["detail"]
    blurry = judge(s, [video_row("a", [2.0, 2.2, 2.1], tc=0.5), video_row("b", [2.1, 2.3, 2.0])], CALIB)
    assert blurry["verdict"] == "inconclusive" and "a fails: temporal consistency 0.50" in blurry["gate"]["detail"]
    far = judge(s, [video_row("a", [5.0, 5.2, 5.1]), video_row("b", [5.1, 5.3, 5.0])], CALIB)
    assert far["verdict"] == "inconclusive" and "frame-FID 5.10 (max 3.00)" in far["gate"]["detail"]
    uncalibrated = judge(s, [video_row("a", [2.0, 2.2, 2.1]), video_row("b", [2.1, 2.3, 2.0])],
                         {"image": CALIB["image"]})
    assert uncalibrated["verdict"] == "inconclusive"


@pytest.mark.parametrize("edit, culprit", [
    (lambda c: c.pop("margin"), "claims.k.margin' is missing"),
    (lambda c: c.pop("direction"), "claims.k.direction' is missing"),
    (lambda c: c.update(kind="faster"), "claims.k.kind' = 'faster'"),
    (lambda c: c.update(compares=["a"]), "claims.k.compares"),
    (lambda c: c.update(margin=-1), "claims.k.margin' must be a positive number"),
    (lambda c: c.update(speed=1), "unknown params key 'claims.k.speed'"),
])
def test_a_claim_without_its_declaration_is_refused(edit, culprit):
    c = {"claim": "a beats b", "paper": "p", "compares": ["a", "b"], "metric": "fid", "direction": "lower",
         "kind": "better", "margin": 1.0}
    assert claim_specs({"claims": {"k": dict(c)}})[0].margin == 1.0
    edit(c)
    with pytest.raises(ClaimError, match=culprit):
        claim_specs({"claims": {"k": c}})


def test_schema_wants_rule_gate_and_values():
    c = judge(spec(), [row("a", [4.0, 4.2, 3.9]), row("b", [9.0, 9.5, 8.8])], CALIB)
    base = {"paper": "x", "title": "t", "arxiv": "2411.12663", "preset": "tiny", "dataset": "mnist5k",
            "rows": [row("a", [4.0, 4.2, 3.9]), row("b", [9.0, 9.5, 8.8])]}
    for key in ("rule", "gate", "values", "compares"):
        bad = {k: v for k, v in c.items() if k != key}
        assert any(key in p for p in validate_metrics({**base, "claims": [bad]})), key
    assert any("fid_per_seed" in p for p in validate_metrics({**base, "rows": [row("a", [4.0, 4.2, 3.9]) | {
        "fid_per_seed": [1.0]}]}))
