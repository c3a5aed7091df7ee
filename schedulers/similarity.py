"""Near-duplicate detection for the ``fuse`` action: word-set Jaccard similarity, without embeddings.

The policy engine is pure and model-free, so near-duplicates are found lexically: two texts are near-duplicates
when the Jaccard similarity of their lower-cased word sets is at least the rule's ``similarity``.

Comparing all pairs is quadratic, so the join is PPJoin (Xiao et al., "Efficient similarity joins for near
duplicate detection", WWW 2008): identical word sets are collapsed first; the distinct sets, each sorted rarest
word first, are visited smallest first; each set indexes only a short prefix of its rarest words and probes the
index with a slightly longer one, and a pair survives only if its sizes and the positions of its first shared word
still allow the overlap the threshold needs. Only the survivors are compared exactly.

Groups are stars, not connected components: the hottest unassigned memory is a seed and takes its unassigned
near-duplicates, so a chain a~b~c never fuses a with an unrelated c.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import islice

_WORD = re.compile(r"\w+")
# t*|x| can land a hair above an integer in floating point (0.7*10 = 7.000000000000001); rounding that up would
# shorten a prefix by one and miss pairs exactly at the threshold.
_EPSILON = 1e-9


def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _ceil(value: float) -> int:
    return math.ceil(value - _EPSILON)


def similar_sets(sets: Sequence[frozenset[str]], threshold: float) -> list[list[tuple[int, float]]]:
    """For each (non-empty, distinct) set, the other sets with Jaccard >= ``threshold``, as (index, similarity)."""
    frequency = Counter(word for words_ in sets for word in words_)
    ordered = [sorted(words_, key=lambda word: (frequency[word], word)) for words_ in sets]
    sizes = [len(tokens) for tokens in ordered]
    overlap_ratio = threshold / (1 + threshold)  # Jaccard >= t  <=>  |x & y| >= t / (1 + t) * (|x| + |y|)
    neighbours: list[list[tuple[int, float]]] = [[] for _ in sets]
    index: dict[str, list[tuple[int, int]]] = {}
    for x in sorted(range(len(sets)), key=lambda i: (sizes[i], i)):
        tokens, size = ordered[x], sizes[x]
        if not size:
            continue
        smallest = _ceil(threshold * size)  # a smaller set cannot reach the threshold with this one
        shared: dict[int, int] = {}  # candidate -> words shared so far in the prefixes; -1 once ruled out
        for position, word in enumerate(tokens[: size - smallest + 1]):
            rest = size - position - 1
            for y, y_position in index.get(word, ()):
                seen = shared.get(y, 0)
                if seen < 0:
                    continue
                other = sizes[y]
                possible = seen + 1 + min(rest, other - y_position - 1)
                fits = other >= smallest and possible >= _ceil(overlap_ratio * (size + other))
                shared[y] = seen + 1 if fits else -1
        words_x = sets[x]
        for y, seen in sorted(shared.items()):
            if seen > 0:
                overlap = len(words_x & sets[y])
                similarity = overlap / (size + sizes[y] - overlap)
                if similarity >= threshold:
                    neighbours[x].append((y, similarity))
                    neighbours[y].append((x, similarity))
        # Visited smallest first, so every indexed set is at most this size: the shorter PPJoin index prefix suffices.
        for position, word in enumerate(tokens[: size - _ceil(2 * overlap_ratio * size) + 1]):
            index.setdefault(word, []).append((x, position))
    return neighbours


def star_groups(sets: Sequence[frozenset[str]], threshold: float, max_group: int) -> list[list[int]]:
    """Groups of at least two indexes into ``sets``; seeds are taken in index order (callers pass hottest first).

    Each group is a seed followed by up to ``max_group - 1`` unassigned near-duplicates, most similar first (ties
    by index). Every index is in at most one group; empty sets are in none.
    """
    members: dict[frozenset[str], list[int]] = {}
    for position, words_ in enumerate(sets):
        if words_:
            members.setdefault(words_, []).append(position)
    distinct = list(members)
    key_of = {words_: number for number, words_ in enumerate(distinct)}
    neighbours = similar_sets(distinct, threshold)
    assigned: set[int] = set()

    def free(key: int, limit: int) -> list[int]:
        return list(islice((i for i in members[distinct[key]] if i not in assigned), limit))

    groups: list[list[int]] = []
    for seed in range(len(sets)):
        if seed in assigned or not sets[seed]:
            continue
        key = key_of[sets[seed]]
        candidates = [(-1.0, i) for i in free(key, max_group) if i != seed]
        for other, similarity in neighbours[key]:
            candidates.extend((-similarity, i) for i in free(other, max_group - 1))
        chosen = [i for _, i in sorted(candidates)[: max_group - 1]]
        if chosen:
            assigned.update([seed, *chosen])
            groups.append([seed, *chosen])
    return groups
