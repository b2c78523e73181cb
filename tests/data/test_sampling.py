import numpy as np

from unmask.data.sampling import stratified_sample


def test_a_sample_spreads_over_the_classes_and_follows_the_seed():
    labels = np.repeat(np.arange(5), 60)  # sorted by class, as the test split is
    sample = stratified_sample(labels, 100, seed=0)
    assert len(sample) == 100 and len(set(sample.tolist())) == 100 and np.all(np.diff(sample) > 0)
    assert np.bincount(labels[sample]).tolist() == [20] * 5
    assert np.array_equal(sample, stratified_sample(labels, 100, seed=0))
    assert not np.array_equal(sample, stratified_sample(labels, 100, seed=1))
    assert np.bincount(labels[stratified_sample(labels, 7, seed=0)]).tolist() == [2, 2, 1, 1, 1]


def test_small_classes_give_what_they_have_and_zero_means_all():
    labels = np.array([0] * 2 + [1] * 30)
    assert np.bincount(labels[stratified_sample(labels, 10, seed=0)]).tolist() == [2, 8]
    assert np.array_equal(stratified_sample(labels, 0, seed=0), np.arange(32))
    assert np.array_equal(stratified_sample(labels, 99, seed=0), np.arange(32))
