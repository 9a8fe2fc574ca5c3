import torch

from engine.sampling import SamplingParams, sample, sample_rows


def test_greedy_takes_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9])
    assert sample(logits, SamplingParams(temperature=0.0), torch.Generator()) == 1


def test_same_seed_same_draws_and_different_seeds_differ():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=1.5, top_p=1.0, seed=7)
    g1, g2 = params.new_generator(), params.new_generator()
    a = [sample(logits, params, g1) for _ in range(50)]
    b = [sample(logits, params, g2) for _ in range(50)]
    assert a == b
    other = SamplingParams(temperature=1.5, top_p=1.0, seed=8)
    g3 = other.new_generator()
    assert [sample(logits, other, g3) for _ in range(50)] != a


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([5.0, 4.9, 0.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    draws = {sample(logits, SamplingParams(temperature=1.0, top_k=2), gen) for _ in range(200)}
    assert draws == {0, 1}
    draws = {sample(logits, SamplingParams(temperature=1.0, top_p=0.01), gen) for _ in range(50)}
    assert draws == {0}


def test_nucleus_sampling_matches_its_definition_on_wide_and_narrow_distributions():
    """The candidate shortcut must give exactly the nucleus: every drawn token is inside the
    smallest set of most likely tokens whose mass reaches top_p."""
    gen = torch.Generator().manual_seed(3)
    for scale in (0.1, 3.0):  # wide (nucleus of thousands of tokens) and narrow
        logits = torch.randn(49152, generator=torch.Generator().manual_seed(5)) * scale
        probs = torch.softmax(logits, -1)
        ordered, order = torch.sort(probs, descending=True)
        size = int((ordered.cumsum(0) < 0.9).sum()) + 1
        nucleus = set(order[:size].tolist())
        draws = [sample(logits, SamplingParams(temperature=1.0, top_p=0.9), gen) for _ in range(50)]
        assert set(draws) <= nucleus


def test_rows_sampled_together_get_what_each_gets_alone():
    """A seeded turn draws the same tokens whatever else is sampled in its step."""
    torch.manual_seed(11)
    logits = torch.randn(6, 49152) * torch.tensor([0.1, 1.0, 3.0, 1.0, 1.0, 2.0])[:, None]
    params = [SamplingParams(temperature=0.7, top_p=0.95, seed=1), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.2, top_p=0.9, seed=2), SamplingParams(temperature=0.8, top_k=40, seed=3),
              SamplingParams(temperature=1.0, top_p=1.0, seed=4), SamplingParams(temperature=0.3, top_p=0.5, seed=5)]
    for _ in range(5):
        gens_alone = [p.new_generator() for p in params]
        gens_batch = [p.new_generator() for p in params]
        alone = [sample(logits[i], p, g) for i, (p, g) in enumerate(zip(params, gens_alone))]
        assert sample_rows(logits, params, gens_batch) == alone
        assert sample_rows(logits[2:3], params[2:3], [params[2].new_generator()]) == [alone[2]]
        logits = logits.roll(1000, dims=1)
