"""Which cached KV shares the longest prefix with a prompt: a radix tree over token ids.

Each KV entry (a session's cache, in RAM or on disk) is a token sequence; the tree stores them with
shared prefixes merged, so finding the longest prefix of a prompt that any entry holds costs
O(prompt length), whatever the number of entries (as SGLang's radix cache; vLLM hashes blocks).
Edges are tuples of token ids; a node lists the keys whose sequence ends exactly there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


class _Node:
    __slots__ = ("children", "edge", "keys", "parent")

    def __init__(self, edge: tuple[int, ...], parent: _Node | None):
        self.edge = edge  # tokens from the parent to this node
        self.children: dict[int, _Node] = {}  # first token of the child's edge -> child
        self.keys: set[str] = set()
        self.parent = parent


class PrefixIndex:
    def __init__(self):
        self._root = _Node((), None)
        self._tokens: dict[str, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def __contains__(self, key: str) -> bool:
        return key in self._tokens

    def known_keys(self) -> list[str]:
        return list(self._tokens)

    def tokens(self, key: str) -> tuple[int, ...]:
        return self._tokens[key]

    def set(self, key: str, token_ids) -> None:
        """Insert or replace the sequence of `key`."""
        tokens = tuple(token_ids)
        if self._tokens.get(key) == tokens:
            return
        self.remove(key)
        self._tokens[key] = tokens
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = _Node(tokens[i:], node)
                node.children[tokens[i]] = leaf
                node = leaf
                break
            n = _common(child.edge, tokens, i)
            if n < len(child.edge):
                child = self._split(child, n)
            node, i = child, i + n
        node.keys.add(key)

    def remove(self, key: str) -> None:
        tokens = self._tokens.pop(key, None)
        if tokens is None:
            return
        node, _ = self._walk(tokens)
        node.keys.discard(key)
        # prune empty leaves and merge pass-through nodes, so the tree stays proportional to its keys
        while node is not self._root and not node.keys and len(node.children) <= 1:
            parent = node.parent
            if node.children:
                (child,) = node.children.values()
                child.edge = node.edge + child.edge
                child.parent = parent
                parent.children[node.edge[0]] = child
            else:
                del parent.children[node.edge[0]]
            node = parent

    def longest_prefix(self, prompt, accept: Callable[[str], bool] = lambda key: True) -> tuple[str | None, int]:
        """(key, n): an accepted key whose sequence shares the longest prefix (n tokens) with prompt."""
        prompt = tuple(prompt)
        path: list[tuple[_Node, int]] = []  # nodes on the way down and the matched depth at each
        node, depth = self._root, 0
        while depth < len(prompt):
            child = node.children.get(prompt[depth])
            if child is None:
                break
            n = _common(child.edge, prompt, depth)
            depth += n
            path.append((child, depth))
            if n < len(child.edge):
                break
            node = child
        # deepest first: every key below a node shares at least that node's matched depth
        for node, matched in reversed(path):
            for key in _keys_below(node):
                if accept(key):
                    return key, matched
        return None, 0

    def _walk(self, tokens: tuple[int, ...]) -> tuple[_Node, int]:
        node, i = self._root, 0
        while i < len(tokens):
            node = node.children[tokens[i]]
            i += len(node.edge)
        return node, i

    def _split(self, child: _Node, n: int) -> _Node:
        """Cut child's edge after n tokens; returns the new middle node."""
        parent = child.parent
        middle = _Node(child.edge[:n], parent)
        parent.children[child.edge[0]] = middle
        child.edge = child.edge[n:]
        child.parent = middle
        middle.children[child.edge[0]] = child
        return middle


def _common(edge: tuple[int, ...], tokens: tuple[int, ...], start: int) -> int:
    n = min(len(edge), len(tokens) - start)
    i = 0
    while i < n and edge[i] == tokens[start + i]:
        i += 1
    return i


def _keys_below(node: _Node) -> Iterator[str]:
    stack = [node]
    while stack:
        node = stack.pop()
        yield from node.keys
        stack.extend(node.children.values())
