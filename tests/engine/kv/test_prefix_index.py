"""The radix tree that finds the cached KV sharing the longest prefix with a prompt."""

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kv.session_kv import common_prefix_length
from engine.kv.prefix_index import PrefixIndex


def test_longest_prefix_across_entries():
    index = PrefixIndex()
    index.set("a", [1, 2, 3, 4, 5])
    index.set("b", [1, 2, 3, 9])
    index.set("c", [7, 8])
    assert index.longest_prefix([1, 2, 3, 4, 6]) == ("a", 4)
    assert index.longest_prefix([1, 2, 3, 9, 9]) == ("b", 4)
    assert index.longest_prefix([7]) == ("c", 1)
    assert index.longest_prefix([5]) == (None, 0)
    assert index.longest_prefix([1, 2, 3, 4, 6], accept=lambda k: k != "a") == ("b", 3)


def test_replace_and_remove_keep_the_tree_consistent():
    index = PrefixIndex()
    index.set("a", [1, 2, 3])
    index.set("a", [1, 2, 3, 4, 5])  # the session grew
    assert index.longest_prefix([1, 2, 3, 4, 5, 6]) == ("a", 5)
    index.remove("a")
    assert index.longest_prefix([1, 2]) == (None, 0) and len(index) == 0


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.integers(0, 3), max_size=8), max_size=8),
       st.lists(st.sampled_from("abcdefgh")), st.lists(st.integers(0, 3), max_size=10))
def test_matches_a_brute_force_search(entries, removed, prompt):
    index = PrefixIndex()
    for key, tokens in entries.items():
        index.set(key, tokens)
    for key in removed:
        index.remove(key)
        entries.pop(key, None)
    best = max((common_prefix_length(tokens, prompt) for tokens in entries.values()), default=0)
    key, n = index.longest_prefix(prompt)
    assert n == best
    if key is not None:
        assert common_prefix_length(entries[key], prompt) == n
