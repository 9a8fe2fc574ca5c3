import torch

from engine.sampling import SamplingParams, reference_sample, sample, sample_rows


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


def _nucleus(logits: torch.Tensor, params: SamplingParams) -> set[int]:
    probs = torch.softmax(logits / params.temperature, -1).double()
    ordered, order = torch.sort(probs, descending=True)
    if params.top_k:
        ordered, order = ordered[: params.top_k], order[: params.top_k]
        ordered = ordered / ordered.sum()
    kept = int((ordered.cumsum(0) - ordered <= params.top_p + 1e-6).sum())
    return set(order[:kept].tolist())


CASES = [SamplingParams(temperature=0.7, top_p=0.95), SamplingParams(temperature=1.0, top_p=1.0),
         SamplingParams(temperature=1.3, top_p=0.9, top_k=40), SamplingParams(temperature=2.0, top_p=0.99),
         SamplingParams(temperature=0.5, top_p=0.5, top_k=1000), SamplingParams(temperature=1.0, top_p=1.0, top_k=300),
         SamplingParams(temperature=1.0, top_p=0.3)]


def test_the_c_kernel_draws_what_the_reference_definition_draws():
    """Same uniform number -> same token, except where float rounding of exp() reorders near-ties."""
    same = total = 0
    for scale in (1.0, 3.0, 8.0):  # realistic spreads of logits
        logits = torch.randn(len(CASES), 49152, generator=torch.Generator().manual_seed(int(scale))) * scale
        for trial in range(30):
            gens = [torch.Generator().manual_seed(trial * 10 + j) for j in range(len(CASES))]
            got = sample_rows(logits, CASES, gens)
            u = [float(torch.rand((), generator=torch.Generator().manual_seed(trial * 10 + j))) for j in range(len(CASES))]
            for j, token in enumerate(got):
                assert token in _nucleus(logits[j], CASES[j])
                same += token == reference_sample(logits[j], CASES[j], u[j])
                total += 1
    assert same >= 0.99 * total, (same, total)


def test_the_torch_fallback_is_seeded_and_stays_in_the_nucleus():
    logits = torch.randn(len(CASES), 49152, generator=torch.Generator().manual_seed(9)) * 3
    a = sample_rows(logits, CASES, [p.new_generator() for p in CASES], use_native=False)
    params = [SamplingParams(p.temperature, p.top_p, p.top_k, seed=1) for p in CASES]
    b = sample_rows(logits, params, [p.new_generator() for p in params], use_native=False)
    c = sample_rows(logits, params, [p.new_generator() for p in params], use_native=False)
    assert b == c
    for j, token in enumerate(a + b):
        assert token in _nucleus(logits[j % len(CASES)], CASES[j % len(CASES)])


def test_draws_follow_the_truncated_distribution():
    """20,000 draws from a 12-token distribution: frequencies within 1.5% of the renormalised nucleus."""
    logits = torch.tensor([2.0, 1.5, 1.4, 1.0, 0.5, 0.2, 0.0, -0.5, -1.0, -2.0, -3.0, -4.0])
    for params in (SamplingParams(temperature=1.0, top_p=1.0), SamplingParams(temperature=0.8, top_p=0.8),
                   SamplingParams(temperature=1.2, top_p=1.0, top_k=3)):
        probs = torch.softmax(logits / params.temperature, -1)
        keep = sorted(_nucleus(logits, params))
        expected = torch.zeros_like(probs)
        expected[keep] = probs[keep] / probs[keep].sum()
        rows = 400
        gen = torch.Generator().manual_seed(5)
        counts = torch.zeros_like(probs)
        for _ in range(50):
            for token in sample_rows(logits.expand(rows, -1).contiguous(), [params] * rows, [gen] * rows):
                counts[token] += 1
        assert torch.allclose(counts / counts.sum(), expected, atol=0.015), (params, counts / counts.sum(), expected)


def test_a_flat_distribution_takes_the_threshold_path_and_stays_in_the_nucleus():
    logits = torch.randn(4, 49152, generator=torch.Generator().manual_seed(2)) * 0.05  # nucleus of ~46,000 tokens
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=s) for s in range(4)]
    tokens = sample_rows(logits, params, [p.new_generator() for p in params])
    assert all(t in _nucleus(logits[i], params[i]) for i, t in enumerate(tokens))
    assert len(set(tokens)) == 4
