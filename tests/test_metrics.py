"""Retrieval metrics against hand-computed values and a plain-Python brute force."""

import itertools
import random

import numpy as np
import pytest
import torch

from crossgap_qdrant.metrics import (
    bootstrap_ci,
    exclusion_mask,
    heldout_metrics,
    modality_gap,
    paired_bootstrap_ci,
    per_query,
    retrieval_metrics,
)


def brute_force(sim, qlabels, glabels, removed, ks):
    """Plain-Python reference: pessimistic ties, removed items dropped, empty queries skipped."""
    out = {"ap": [], "ap_at_r": [], "r_precision": [], "chance": [], "p": {k: [] for k in ks},
           "r": {k: [] for k in ks}, "hit": {k: [] for k in ks}}
    for qi, row in enumerate(sim):
        items = [(row[g], glabels[g] == qlabels[qi]) for g in range(len(row)) if not removed[qi][g]]
        # pessimistic: by score descending, then irrelevant (False) before relevant (True)
        items.sort(key=lambda t: (-t[0], t[1]))
        rel = [r for _, r in items]
        R = sum(rel)
        if R == 0:
            continue
        hits, precisions = 0, []
        for rank, r in enumerate(rel, 1):
            if r:
                hits += 1
                precisions.append((rank, hits / rank))
        out["ap"].append(sum(p for _, p in precisions) / R)
        out["ap_at_r"].append(sum(p for rank, p in precisions if rank <= R) / R)
        out["r_precision"].append(sum(rel[:R]) / R)
        out["chance"].append(_mean_ap_over_placements(len(rel), R))
        for k in ks:
            out["p"][k].append(sum(rel[:k]) / k)
            out["r"][k].append(sum(rel[:k]) / R)
            out["hit"][k].append(float(any(rel[:k])))
    return out


def _mean_ap_over_placements(num_items, num_rel):
    """Mean AP over every placement of the relevant items in a ranking (all equally likely at random)."""

    aps = []
    for ranks in itertools.combinations(range(1, num_items + 1), num_rel):
        aps.append(sum(hits / rank for hits, rank in enumerate(ranks, 1)) / num_rel)
    return sum(aps) / len(aps)


def test_hand_computed_single_query():
    # ranking by score: g0 (rel), g1 (irr), g2 (rel), g3 (irr) -> AP = (1/1 + 2/3) / 2
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    m = retrieval_metrics(sim, ["a"], ["a", "b", "a", "b"], ks=(1, 2, 3))
    assert m.ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert m.ap_at_r[0] == pytest.approx(1 / 2)  # R = 2: only the hit at rank 1 is within R
    assert m.r_precision[0] == pytest.approx(1 / 2)
    assert m.precision_at[1][0] == 1.0 and m.precision_at[2][0] == 0.5
    assert m.precision_at[3][0] == pytest.approx(2 / 3)
    # R@1 is recall: 1 of the 2 relevant items; Hit@1 (= P@1) is 1
    assert m.recall_at[1][0] == 0.5 and m.hit_at[1][0] == 1.0 and m.recall_at[3][0] == 1.0
    # random ranking of 4 items, 2 relevant: (H_4 + 1/3 * (4 - H_4)) / 4
    h4 = 1 + 1 / 2 + 1 / 3 + 1 / 4
    assert m.chance_ap[0] == pytest.approx((h4 + (4 - h4) / 3) / 4)
    s = m.summary()
    assert s["R@1"] == 0.5 and s["P@1"] == 1.0 and s["Hit@1"] == 1.0


def test_single_relevant_item():
    sim = np.array([[0.5, 0.9, 0.2], [0.1, 0.2, 0.3]])
    m = retrieval_metrics(sim, ["x", "y"], ["x", "z", "z"], ks=(1,))
    # query 0: its only relevant item at rank 2 -> AP = 1/2, mAP@R = 0, R-precision = 0, R@1 = 0
    assert m.ap[0] == pytest.approx(0.5)
    assert m.ap_at_r[0] == 0.0 and m.r_precision[0] == 0.0 and m.recall_at[1][0] == 0.0 and m.hit_at[1][0] == 0.0
    # query 1 has no relevant item: skipped, not counted as zero
    assert m.num_skipped == 1 and m.query_index.tolist() == [0]
    assert m.summary()["mAP"] == pytest.approx(0.5)


def test_ties_are_pessimistic():
    # all scores equal: relevant items go last whatever the input order
    sim = torch.ones(1, 4)
    m = retrieval_metrics(sim, [1], [1, 0, 0, 0])
    assert m.ap[0] == pytest.approx(1 / 4)
    assert m.recall_at[1][0] == 0.0 and m.hit_at[1][0] == 0.0
    # a tie between one relevant and one irrelevant item at the top, then a relevant item
    sim = torch.tensor([[0.5, 0.5, 0.4]])
    m = retrieval_metrics(sim, [1], [1, 0, 1])
    assert m.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # swapping the input order of the tied pair changes nothing
    m2 = retrieval_metrics(sim[:, [1, 0, 2]], [1], [0, 1, 1])
    assert m2.ap[0] == pytest.approx(m.ap[0])


def test_exclusion_by_index_map_and_by_mask():
    sim = torch.tensor([[1.0, 0.2, 0.6], [0.2, 1.0, 0.3], [0.6, 0.3, 1.0]])
    labels = ["a", "b", "a"]
    by_map = retrieval_metrics(sim, labels, labels, exclude=torch.arange(3))
    by_mask = retrieval_metrics(sim, labels, labels, exclude=torch.eye(3, dtype=torch.bool))
    # query 0: gallery {1 (b, 0.2), 2 (a, 0.6)} -> AP 1; query 1 has no other "b": skipped
    assert by_map.ap.tolist() == [1.0, 1.0] and by_map.num_skipped == 1
    assert np.array_equal(by_map.ap, by_mask.ap)
    without = retrieval_metrics(sim, labels, labels)
    assert without.num_skipped == 0  # the query itself counted as relevant


def test_exclusion_errors():
    with pytest.raises(ValueError, match="shape"):
        exclusion_mask(np.zeros((2, 2), dtype=bool), 2, 3)
    with pytest.raises(ValueError, match="outside"):
        exclusion_mask(np.array([0, 3]), 2, 3)
    with pytest.raises(ValueError, match="index map"):
        exclusion_mask(np.zeros(2), 2, 3)
    assert exclusion_mask(np.array([-1, 2]), 2, 3).tolist() == [[False] * 3, [False, False, True]]


def test_shape_errors():
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(torch.zeros(2, 3), [0], [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan")]]), [0], [0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_on_random_data(seed):
    rng = random.Random(seed)
    num_q, num_g, ks = 7, 13, (1, 3, 5, 20)
    # coarse scores so that ties are frequent
    sim = [[rng.randint(0, 4) / 4 for _ in range(num_g)] for _ in range(num_q)]
    qlabels = [rng.randint(0, 3) for _ in range(num_q)]
    glabels = [rng.randint(0, 3) for _ in range(num_g)]
    removed = [[rng.random() < 0.15 for _ in range(num_g)] for _ in range(num_q)]
    ref = brute_force(sim, qlabels, glabels, removed, ks)
    m = retrieval_metrics(torch.tensor(sim), qlabels, glabels, exclude=torch.tensor(removed), ks=ks)
    np.testing.assert_allclose(m.ap, ref["ap"])
    np.testing.assert_allclose(m.ap_at_r, ref["ap_at_r"])
    np.testing.assert_allclose(m.r_precision, ref["r_precision"])
    for k in ks:
        np.testing.assert_allclose(m.precision_at[k], ref["p"][k])
        np.testing.assert_allclose(m.recall_at[k], ref["r"][k])
        np.testing.assert_allclose(m.hit_at[k], ref["hit"][k])
    np.testing.assert_allclose(m.chance_ap, ref["chance"])


def test_chance_level_is_the_mean_ap_of_random_rankings():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=60).tolist()
    m = retrieval_metrics(rng.random((60, 60)), labels, labels, exclude=np.arange(60))
    # G = 59 after excluding the query's own item; the value lies above the large-gallery limit R / G
    counts = np.bincount(labels)
    assert (m.chance_ap > (counts[labels] - 1) / 59).all()
    random_maps = [retrieval_metrics(rng.random((60, 60)), labels, labels, exclude=np.arange(60)).ap.mean()
                   for _ in range(100)]
    assert np.mean(random_maps) == pytest.approx(m.summary()["chance mAP"], abs=0.005)


def test_bootstrap_ci():
    ap = np.array([0.1, 0.9, 0.5, 0.4, 0.7])
    low, high = bootstrap_ci(ap, n=2000, seed=0)
    assert low < ap.mean() < high and 0.1 <= low and high <= 0.9
    assert bootstrap_ci(ap, n=2000, seed=0) == (low, high)  # deterministic
    assert bootstrap_ci(np.full(4, 0.3)) == pytest.approx((0.3, 0.3))
    assert all(np.isnan(bootstrap_ci([])))
    with pytest.raises(ValueError):
        bootstrap_ci(ap, n=0)
    with pytest.raises(ValueError):
        bootstrap_ci(ap, confidence=1.0)
    # coverage: 95% of intervals over fresh samples hold the true mean (within sampling noise)
    rng = np.random.default_rng(1)
    hits = sum(lo <= 0.5 <= hi for lo, hi in (bootstrap_ci(rng.random(40), n=400, seed=s) for s in range(200)))
    assert 0.88 <= hits / 200 <= 0.99


def test_paired_bootstrap_resamples_the_same_queries():
    rng = np.random.default_rng(0)
    base = rng.random(50)
    better = base + 0.02 + 0.005 * rng.standard_normal(50)  # a small, consistent gain on every query
    mean, low, high = paired_bootstrap_ci(better, base, n=2000, seed=0)
    assert mean == pytest.approx(float((better - base).mean()))
    assert 0 < low < mean < high
    # two independent intervals overlap heavily: only the paired one detects the gain
    assert bootstrap_ci(better, seed=0)[0] < bootstrap_ci(base, seed=0)[1]
    assert (low, high) == pytest.approx(bootstrap_ci(better - base, n=2000, seed=0))
    # queries missing in either method are left out
    a, b = better.copy(), base.copy()
    a[0], b[1] = np.nan, np.nan
    assert paired_bootstrap_ci(a, b)[0] == pytest.approx(float((better - base)[2:].mean()))
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap_ci(a, b[:-1])


def test_per_query_aligns_skipped_queries():
    m = retrieval_metrics(np.array([[0.5, 0.9, 0.2], [0.1, 0.2, 0.3]]), ["x", "y"], ["x", "z", "z"])
    out = per_query(m, 2)
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1])


def test_modality_gap_of_identical_features_is_zero():
    f = torch.nn.functional.normalize(torch.randn(10, 16), dim=-1)
    g = modality_gap(f, f)
    assert g["mean_distance"] == pytest.approx(0.0, abs=1e-12)
    assert g["cos_image_text_paired"] == pytest.approx(1.0)
    shifted = torch.nn.functional.normalize(f + 2 * torch.ones(16), dim=-1)
    assert modality_gap(f, shifted)["mean_distance"] > 0.5


def test_heldout_metrics_against_hand_values():
    img = torch.eye(4)
    txt = torch.eye(4)[[0, 1, 3, 2]]  # images 2 and 3 have each other's caption features
    out = heldout_metrics(img, txt, ["a", "b", "c", "d"], ["x", "x", "y", "y"])
    assert out["n_captions"] == 4 and out["i2t_r1"] == 0.5
    # identity features: every other image ties at 0 and ties are pessimistic: the one relevant item is last
    assert out["i2i_map"] == pytest.approx(1 / 3, abs=1e-4)
    assert out["gap"]["cos_image_text_paired"] == 0.5
