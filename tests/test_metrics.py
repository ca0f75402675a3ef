"""Retrieval metrics against hand-computed values and a plain-Python brute force."""

import random

import numpy as np
import pytest
import torch

from crossgap_qdrant.metrics import exclusion_mask, retrieval_metrics


def brute_force(sim, qlabels, glabels, removed, ks):
    """Plain-Python reference: pessimistic ties, removed items dropped, empty queries skipped."""
    out = {"ap": [], "ap_at_r": [], "r_precision": [], "p": {k: [] for k in ks}, "r": {k: [] for k in ks}}
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
        for k in ks:
            out["p"][k].append(sum(rel[:k]) / k)
            out["r"][k].append(float(any(rel[:k])))
    return out


def test_hand_computed_single_query():
    # ranking by score: g0 (rel), g1 (irr), g2 (rel), g3 (irr) -> AP = (1/1 + 2/3) / 2
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    m = retrieval_metrics(sim, ["a"], ["a", "b", "a", "b"], ks=(1, 2, 3))
    assert m.ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert m.ap_at_r[0] == pytest.approx(1 / 2)  # R = 2: only the hit at rank 1 is within R
    assert m.r_precision[0] == pytest.approx(1 / 2)
    assert m.precision_at[1][0] == 1.0 and m.precision_at[2][0] == 0.5
    assert m.precision_at[3][0] == pytest.approx(2 / 3)
    assert m.recall_at[1][0] == 1.0


def test_single_relevant_item():
    sim = np.array([[0.5, 0.9, 0.2], [0.1, 0.2, 0.3]])
    m = retrieval_metrics(sim, ["x", "y"], ["x", "z", "z"], ks=(1,))
    # query 0: its only relevant item at rank 2 -> AP = 1/2, mAP@R = 0, R-precision = 0, R@1 = 0
    assert m.ap[0] == pytest.approx(0.5)
    assert m.ap_at_r[0] == 0.0 and m.r_precision[0] == 0.0 and m.recall_at[1][0] == 0.0
    # query 1 has no relevant item: skipped, not counted as zero
    assert m.num_skipped == 1 and m.query_index.tolist() == [0]
    assert m.summary()["mAP"] == pytest.approx(0.5)


def test_ties_are_pessimistic():
    # all scores equal: relevant items go last whatever the input order
    sim = torch.ones(1, 4)
    m = retrieval_metrics(sim, [1], [1, 0, 0, 0])
    assert m.ap[0] == pytest.approx(1 / 4)
    assert m.recall_at[1][0] == 0.0
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
