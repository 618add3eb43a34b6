"""Chance tests, corrections, verdicts and block-bootstrap intervals (no training: seconds).

The group test's false-positive rate is simulated on many small null label sets: per subject,
an autocorrelated label sequence (episodes of several volumes) in 2 runs, an independent
autocorrelated "decoder output", its permutation scores from the study's own circular-shift
rule (:func:`~monai_emotion.data.labels.shift_offset`), and the group test over 4 subjects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from monai_emotion.data.labels import MIN_SHIFT, shift_offset
from monai_emotion.study.chance import MIN_SINGLE, adjust, group_test, single_test, verdicts
from monai_emotion.study.intervals import block_bootstrap, episode_ids
from monai_emotion.study.plan import ModelSpec, subject_seed
from monai_emotion.study.plan import TestSet as HeldOut

K = 5


def _episodes(rng: np.random.Generator, n: int, mean_length: float = 6.0) -> np.ndarray:
    """A class sequence of ``n`` volumes made of episodes of geometric length."""
    out = np.empty(n, dtype=np.int64)
    pos = 0
    while pos < n:
        length = int(rng.geometric(1.0 / mean_length))
        out[pos:pos + length] = rng.integers(0, K)
        pos += length
    return out


def _balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    cm = np.bincount(K * truth + predicted, minlength=K * K).reshape(K, K)
    support = cm.sum(axis=1)
    return float(np.mean(np.diag(cm)[support > 0] / support[support > 0]))


def _shifted(rng: np.random.Generator, labels: np.ndarray, run_length: int) -> np.ndarray:
    runs = labels.reshape(-1, run_length)
    return np.concatenate([np.roll(r, shift_offset(rng, run_length)) for r in runs])


def _null_subject(rng: np.random.Generator, n_perm: int, run_length: int = 60, runs: int = 2):
    truth = _episodes(rng, run_length * runs)
    predicted = _episodes(rng, run_length * runs, 8.0)  # a decoder output that ignores the labels
    observed = _balanced_accuracy(truth, predicted)
    null = [_balanced_accuracy(_shifted(rng, truth, run_length), predicted) for _ in range(n_perm)]
    return observed, null


def test_shifts_excluding_small_offsets_are_anti_conservative():
    """Why MIN_SHIFT is 0: null scores that never come near the observed alignment cluster together."""
    rng = np.random.default_rng(5)
    rates = {}
    for min_shift in (10, MIN_SHIFT):
        rejected = 0
        for _ in range(300):
            truth, predicted = _episodes(rng, 120), _episodes(rng, 120, 8.0)
            null = [_balanced_accuracy(np.concatenate([np.roll(r, shift_offset(rng, 60, min_shift))
                                                       for r in truth.reshape(-1, 60)]), predicted)
                    for _ in range(19)]
            rejected += single_test(_balanced_accuracy(truth, predicted), null).p_value <= 0.05
        rates[min_shift] = rejected / 300
    assert rates[10] > 0.09 and rates[MIN_SHIFT] < 0.08, rates


def test_group_test_false_positive_rate_is_five_percent():
    rng = np.random.default_rng(2024)
    n_sim, subjects, n_perm = 600, 4, 19
    rejected = 0
    for sim in range(n_sim):
        pairs = {f"{s:02d}": _null_subject(rng, n_perm) for s in range(subjects)}
        test = group_test({s: o for s, (o, _) in pairs.items()}, {s: n for s, (_, n) in pairs.items()},
                          draws=2000, seed=sim)
        rejected += test.p_value <= 0.05
    low, high = binom.ppf([0.025, 0.975], n_sim, 0.05) / n_sim
    rate = rejected / n_sim
    assert low <= rate <= high, (rate, low, high)


def test_group_test_finds_a_real_effect_and_is_exact_when_small():
    rng = np.random.default_rng(1)
    observed = {s: 0.35 for s in ("01", "02", "03")}
    null = {s: list(rng.normal(0.2, 0.03, 3)) for s in observed}
    test = group_test(observed, null)
    assert test.method == "group" and test.p_value == pytest.approx(1 / 64) and test.min_p == pytest.approx(1 / 64)
    assert test.testable(0.05)
    # 2 subjects x 2 permutations: 9 combinations, p cannot reach 0.05
    small = group_test({"01": 0.9, "02": 0.9}, {"01": [0.2, 0.2], "02": [0.2, 0.2]})
    assert small.p_value == pytest.approx(1 / 9) and not small.testable(0.05)


def test_single_model_needs_19_permutations():
    null = list(np.linspace(0.15, 0.25, MIN_SINGLE - 1))
    assert not single_test(0.9, null).testable(0.05)
    enough = single_test(0.9, [*null, 0.2])
    assert enough.testable(0.05) and enough.p_value == pytest.approx(1 / 20)
    assert enough.method == "range" and single_test(0.9, list(np.linspace(0.1, 0.3, 40))).method == "quantile"


def test_corrections_and_verdicts():
    p = [0.01, 0.04, 0.03, np.nan, 0.5]
    holm = adjust(p, "holm")
    fdr = adjust(p, "fdr")
    assert holm[0] == pytest.approx(0.04) and np.isnan(holm[3]) and holm[4] == pytest.approx(0.5)
    assert fdr[0] == pytest.approx(0.04) and fdr[1] == fdr[2] == pytest.approx(0.04 * 4 / 3)  # BH, m = 4
    tests = [single_test(0.9, [0.2] * 200), single_test(0.2, list(np.linspace(0.1, 0.3, 200))),
             single_test(0.0, [0.2] * 200), single_test(0.9, [0.2] * 5), single_test(0.9, [])]
    labels, corrected = verdicts(tests)
    assert labels == ["above", "inside", "below", "untested", "untested"]
    for verdict, q, t in zip(labels, corrected, tests, strict=True):
        if verdict == "above":
            assert t.p_value < 0.05 and q <= 0.05 and t.n_permutations >= MIN_SINGLE


def test_single_subject_models_get_their_own_shifts():
    within = ModelSpec("within/sub-01/fold-0", "within", ("01",), {}, 4.0, "0", (HeldOut("heldout", ("01",), {}),))
    other = ModelSpec("within/sub-02/fold-0", "within", ("02",), {}, 4.0, "0", (HeldOut("heldout", ("02",), {}),))
    cross = ModelSpec("cross/fold-0", "cross", ("01", "02"), {}, 4.0, "0", (HeldOut("heldout", ("01", "02"), {}),))
    assert within.permuted(3).permutation == subject_seed(3, "01") != other.permuted(3).permutation
    assert within.permuted(3).permutation != within.permuted(4).permutation
    assert cross.permuted(3).permutation == 3 and within.permuted(3).id == "perm-0003/within/sub-01/fold-0"


def _predictions(rng: np.random.Generator, episodes: int, length: int, hit: float) -> pd.DataFrame:
    rows = []
    classes = ["A", "B"]
    for e in range(episodes):
        truth = classes[e % 2]
        correct = rng.random() < hit  # one decision per episode: maximal autocorrelation
        for v in range(length):
            rows.append({"subject": "01", "run": 1, "volume": e * (length + 3) + v, "true_label": truth,
                         "predicted_label": truth if correct else classes[1 - e % 2]})
    return pd.DataFrame(rows)


def test_block_bootstrap_is_wider_than_counting_volumes():
    rng = np.random.default_rng(0)
    frame = _predictions(rng, 40, 10, 0.6)
    ids = episode_ids(frame, block_gap=2)
    assert ids.max() + 1 == 40
    # a censored volume inside an episode does not split it; a longer break does
    assert episode_ids(frame.drop(index=[5]).reset_index(drop=True), 2).max() + 1 == 40
    assert episode_ids(frame, block_gap=0).max() + 1 == 40
    boot = block_bootstrap(frame, ["A", "B"], n_boot=500)
    low, high = boot["recall"]["A"]
    from monai_emotion.metrics import wilson_interval

    a = frame[frame["true_label"] == "A"]
    w_low, w_high = wilson_interval(int((a["predicted_label"] == "A").sum()), len(a))
    assert high - low > 2 * (w_high - w_low)  # 20 episodes, not 200 independent volumes
    ba_low, ba_high = boot["balanced_accuracy"]
    assert ba_low < 0.6 < ba_high and boot["episodes"] == {"A": 20, "B": 20}
