"""lmlib.embeddings against hand computations (counts, pairs, the loss with math.exp) and a
sanity run of skip-gram on a synthetic corpus with known structure."""

from __future__ import annotations

import math

import pytest
import torch

from lmlib.embeddings import (
    SkipGram,
    Vocab,
    build_vocab,
    negative_sampling_loss,
    nearest_neighbours,
    noise_distribution,
    skipgram_pairs,
    subsample,
    unigram_table,
    train_skipgram,
)


def test_build_vocab_counts_and_order() -> None:
    vocab = build_vocab("b a c a b a d".split(), min_count=2)
    assert vocab.itos == ["a", "b"] and vocab.counts == [3, 2]
    assert vocab.stoi == {"a": 0, "b": 1}
    assert vocab.encode("a c b".split()) == [0, 1]  # unknown words are dropped
    assert build_vocab("z y x".split()).itos == ["x", "y", "z"]  # ties alphabetical
    assert build_vocab("a a b c".split(), max_size=2).itos == ["a", "b"]


def test_skipgram_pairs_order_by_hand() -> None:
    pairs = skipgram_pairs([10, 11, 12], window=1)
    assert pairs.tolist() == [[10, 11], [11, 10], [11, 12], [12, 11]]
    pairs = skipgram_pairs([0, 1, 2, 3], window=2)
    assert pairs.tolist() == [
        [0, 1], [0, 2],
        [1, 0], [1, 2], [1, 3],
        [2, 0], [2, 1], [2, 3],
        [3, 1], [3, 2],
    ]
    assert skipgram_pairs(torch.tensor([5]), 3).shape == (0, 2)


def test_skipgram_pairs_count_formula() -> None:
    n, w = 50, 4  # every position has 2w neighbours minus those cut off at the two ends
    expected = 2 * w * n - w * (w + 1)
    assert skipgram_pairs(list(range(n)), w).shape == (expected, 2)


def test_noise_distribution_three_quarter_power() -> None:
    p = noise_distribution([16, 1, 0, 81])
    z = 16**0.75 + 1 + 81**0.75  # 8 + 1 + 27
    assert torch.allclose(p, torch.tensor([8 / z, 1 / z, 0.0, 27 / z]))
    assert math.isclose(p.sum().item(), 1.0, rel_tol=1e-6)
    assert torch.allclose(noise_distribution([1, 3], power=1.0), torch.tensor([0.25, 0.75]))


def test_unigram_table_frequencies() -> None:
    table = unigram_table([16, 1, 0, 81], size=3600)
    assert table.shape == (3600,) and table.dtype == torch.long
    # shares 8/36, 1/36, 0, 27/36 of 3600 slots, exactly
    assert torch.bincount(table, minlength=4).tolist() == [800, 100, 0, 2700]
    assert torch.equal(table, torch.sort(table).values)  # laid out in id order
    small = unigram_table([1_000_000, 1, 1], size=10)  # rare words still get a slot
    assert torch.bincount(small, minlength=3).tolist() == [8, 1, 1]


def test_subsample_keeps_rare_drops_frequent() -> None:
    counts = [9900, 100]  # f = 0.99 and 0.01
    ids = torch.tensor([0] * 9900 + [1] * 100)
    kept = subsample(ids, counts, t=0.01, generator=torch.Generator().manual_seed(0))
    assert (kept == 1).sum() == 100  # sqrt(0.01 / 0.01) = 1: always kept
    frac0 = (kept == 0).sum().item() / 9900  # keep prob sqrt(0.01 / 0.99) = 0.1005
    assert abs(frac0 - math.sqrt(0.01 / 0.99)) < 0.02


def test_negative_sampling_loss_by_hand() -> None:
    v = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    u_o = torch.tensor([[0.5, -0.25]], dtype=torch.float64)  # u_o . v = 0
    u_k = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)  # u_k . v = 1, -2

    def log_sigmoid(x: float) -> float:
        return math.log(1.0 / (1.0 + math.exp(-x)))

    expected = -(log_sigmoid(0.0) + log_sigmoid(-1.0) + log_sigmoid(2.0))
    assert math.isclose(negative_sampling_loss(v, u_o, u_k).item(), expected, rel_tol=1e-12)


def test_negative_sampling_loss_batch_mean_and_stability() -> None:
    torch.manual_seed(0)
    v, u_o, u_k = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 3, 4)
    per_row = [
        -(torch.sigmoid(u_o[b] @ v[b]).log() + sum(torch.sigmoid(-(u_k[b, k] @ v[b])).log() for k in range(3)))
        for b in range(6)
    ]
    assert torch.allclose(negative_sampling_loss(v, u_o, u_k), torch.stack(per_row).mean(), atol=1e-6)
    big = negative_sampling_loss(torch.tensor([[100.0]]), torch.tensor([[-100.0]]), torch.zeros(1, 1, 1))
    assert torch.isfinite(big) and math.isclose(big.item(), 1e4 + math.log(2), rel_tol=1e-6)


def test_skipgram_forward_uses_the_right_tables() -> None:
    torch.manual_seed(1)
    m = SkipGram(10, 3)
    assert torch.equal(m.out_embed.weight, torch.zeros(10, 3))
    assert m.in_embed.weight.abs().max() <= 0.5 / 3
    with torch.no_grad():
        m.out_embed.weight.normal_()
    c, o, n = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6], [7, 8]])
    expected = negative_sampling_loss(m.in_embed.weight[c], m.out_embed.weight[o], m.out_embed.weight[n])
    assert torch.allclose(m(c, o, n), expected)


def test_train_skipgram_learns_synthetic_clusters() -> None:
    # two "topics": words 0-4 only ever co-occur with each other, words 5-9 likewise
    g = torch.Generator().manual_seed(0)
    seq = []
    for s in range(400):
        base = 0 if s % 2 == 0 else 5
        seq += (base + torch.randint(0, 5, (10,), generator=g)).tolist()
        seq += [10]  # a separator word between sentences
    ids = torch.tensor(seq)
    pairs = skipgram_pairs(ids, 2)
    counts = torch.bincount(ids, minlength=11).tolist()
    model, losses = train_skipgram(pairs, counts, dim=8, epochs=3, batch_size=256, lr=0.05, progress=False,
                                   device="cpu")
    assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:5]) / 5
    for w in range(10):
        neigh = [i for i, _ in nearest_neighbours(model.embeddings, w, k=3)]
        same = set(range(0, 5)) if w < 5 else set(range(5, 10))
        assert set(neigh) <= same, (w, neigh)


def test_nearest_neighbours_by_hand() -> None:
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    vocab = Vocab(["a", "b", "c", "d"], [4, 3, 2, 1])
    nn_ = nearest_neighbours(emb, "a", k=3, vocab=vocab)
    assert [w for w, _ in nn_] == ["b", "c", "d"]
    assert math.isclose(nn_[0][1], 0.9 / math.hypot(0.9, 0.1), rel_tol=1e-6)
    assert math.isclose(nn_[2][1], -1.0, rel_tol=1e-6)
    assert nearest_neighbours(emb, 2, k=1) == [(1, pytest.approx(0.1 / math.hypot(0.9, 0.1)))]


def test_embeddings_bad_input() -> None:
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        build_vocab(["a"], min_count=0)
    with pytest.raises(ValueError, match="max_size"):
        build_vocab(["a"], max_size=0)
    with pytest.raises(TypeError, match="not a single str"):
        build_vocab("a b c")
    with pytest.raises(TypeError, match="tokens must be strings; found int"):
        build_vocab(["a", 1])
    with pytest.raises(ValueError, match="no word occurs"):
        build_vocab(["a"], min_count=2)
    with pytest.raises(ValueError, match="differ in length"):
        Vocab(["a"], [1, 2])
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        skipgram_pairs([1, 2], 0)
    with pytest.raises(TypeError, match="token_ids must have an integer dtype.*torch.float32"):
        skipgram_pairs(torch.zeros(3), 1)
    with pytest.raises(ValueError, match=r"token_ids must be 1-d, got shape \(1, 3\)"):
        skipgram_pairs(torch.zeros(1, 3, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="non-negative"):
        skipgram_pairs([1, -2], 1)
    with pytest.raises(ValueError, match="power"):
        noise_distribution([1, 2], power=-1)
    with pytest.raises(ValueError, match="positive sum"):
        noise_distribution([0, 0])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        noise_distribution([[1, 2]])
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        unigram_table([1, 2], size=0)
    with pytest.raises(ValueError, match="smaller than the number of words"):
        unigram_table([1, 2, 3], size=2)
    with pytest.raises(ValueError, match=r"t must be > 0.0, got 0.0"):
        subsample([0], [1], t=0)
    with pytest.raises(ValueError, match="out of range for 1 counts"):
        subsample([3], [1])
    with pytest.raises(ValueError, match=r"negative_vecs must be \(B, K, D\) = \(2, K, 3\)"):
        negative_sampling_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match=r"must both be \(B, D\)"):
        negative_sampling_loss(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(2, 4, 3))
    with pytest.raises(TypeError, match="floating-point"):
        negative_sampling_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
        SkipGram(5, 0)
    with pytest.raises(ValueError, match=r"expected center \(B,\)"):
        SkipGram(5, 2)(torch.tensor([1]), torch.tensor([1, 2]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"pairs must be a \(N, 2\) LongTensor"):
        train_skipgram(torch.zeros(3, 2), [1, 1])
    with pytest.raises(ValueError, match=r"pair ids must be in \[0, 2\)"):
        train_skipgram(torch.tensor([[0, 5]]), [1, 1])
    with pytest.raises(ValueError, match="negatives must be >= 1, got 0"):
        train_skipgram(torch.tensor([[0, 1]]), [1, 1], negatives=0)
    with pytest.raises(ValueError, match=r"lr must be > 0.0, got 0.0"):
        train_skipgram(torch.tensor([[0, 1]]), [1, 1], lr=0)
    emb = torch.randn(4, 2)
    with pytest.raises(ValueError, match="pass vocab="):
        nearest_neighbours(emb, "a")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        nearest_neighbours(emb, "z", vocab=Vocab(list("abcd"), [1] * 4))
    with pytest.raises(ValueError, match=r"k must be <= 3, got 4"):
        nearest_neighbours(emb, 0, k=4)
    with pytest.raises(ValueError, match="out of range"):
        nearest_neighbours(emb, 9)
    with pytest.raises(TypeError, match="word must be str or int, got float"):
        nearest_neighbours(emb, 1.5)
    with pytest.raises(ValueError, match=r"emb must be a \(V, D\)"):
        nearest_neighbours(torch.zeros(4), 0)


def test_skipgram_pairs_refuse_float_ids_instead_of_truncating() -> None:
    # torch.as_tensor([1, 2.7], dtype=torch.long) silently made the pair (1, 2)
    assert skipgram_pairs([1, 2], 1).tolist() == [[1, 2], [2, 1]]
    with pytest.raises(TypeError, match=r"token_ids\[1\] must be an integer token id, got float 2.7"):
        skipgram_pairs([1, 2.7], 1)
    with pytest.raises(TypeError, match=r"token_ids\[0\] must be an integer token id, got float 1.0"):
        subsample([1.0, 0], [1, 1])
