"""A query's embedding runs on ``QUERY_THREADS`` torch threads (docs/performance.md): the same vector as with the
process's threads, and the process's setting is left as it was."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from memos.models.embedder import SMALL_BATCH, MiniLMEmbedder  # noqa: E402


def test_a_query_embeds_on_one_thread_to_the_same_vector_and_restores_the_setting():
    one = MiniLMEmbedder(cache_size=0, query_threads=1)
    process = MiniLMEmbedder(cache_size=0, query_threads=None)
    torch.set_num_threads(2)
    seen = []
    real = torch.set_num_threads
    text = "Where did Caroline move from four years ago?"
    try:
        torch.set_num_threads = lambda n: (seen.append(n), real(n))[1]  # type: ignore[assignment]
        a = one.embed([text])[0]
        assert seen == [1, 2]  # one thread for the query, then the process's two again
        seen.clear()
        b = process.embed([text])[0]
        assert seen == []
        one.embed([f"text {i}" for i in range(SMALL_BATCH + 1)])  # a batch: the process's threads
        assert seen == []
    finally:
        torch.set_num_threads = real  # type: ignore[assignment]
    assert torch.get_num_threads() == 2
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5


def test_the_thread_setting_of_another_thread_is_not_touched():
    embedder = MiniLMEmbedder(cache_size=0, query_threads=1)
    torch.set_num_threads(2)
    worker = threading.Thread(target=lambda: embedder.embed(["a query from a worker thread"]))
    worker.start()
    worker.join()
    assert torch.get_num_threads() == 2
