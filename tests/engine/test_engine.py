"""The engine thread with the tiny model: batching, isolation, back-pressure, cancel, statistics."""

import asyncio
import time

import pytest

from chatserver.engine_client import EngineClient, TurnStream
from engine import DoneEvent, Engine, EngineConfig, ModelConfig, Overloaded, SamplingParams, TurnRequest, start_engine


class Driver:
    """An engine under test, driven through its thread-safe face and the server's asyncio bridge."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.client = EngineClient(engine)

    def submit(self, request: TurnRequest) -> TurnStream:
        stream = self.client.admit(request.prompt_ids, request.sampling.max_tokens)
        stream.start(request)
        return stream

    @property
    def num_admitted(self) -> int:
        return self.engine.num_admitted

    async def stats(self) -> dict:
        return await self.client.stats()


@pytest.fixture
def make_engine(tiny_model):
    engines = []

    def make(**config) -> Driver:
        engine, _ = start_engine(EngineConfig(model=ModelConfig(activations="float32"), **config), tiny_model)
        engines.append(engine)
        return Driver(engine)

    yield make
    for engine in engines:
        engine.stop()


async def _collect(stream) -> DoneEvent:
    async for event in stream:
        pass
    assert isinstance(event, DoneEvent), event
    return event


def _request(key: str, prompt: list[int], **sampling) -> TurnRequest:
    return TurnRequest(key, prompt, SamplingParams(**{"max_tokens": 12, "temperature": 0.0, **sampling}))


PROMPTS = [list(range(100, 100 + n)) for n in (5, 40, 17, 90, 3, 64)]


async def test_batched_greedy_answers_equal_the_answers_alone(make_engine):
    engine = make_engine()
    alone = [await _collect(engine.submit(_request(f"alone{i}", p))) for i, p in enumerate(PROMPTS)]
    together = await asyncio.gather(*[_collect(engine.submit(_request(f"batch{i}", p))) for i, p in enumerate(PROMPTS)])
    assert [d.output_ids for d in together] == [d.output_ids for d in alone]
    stats = (await engine.stats())["engine"]
    assert stats["prefill_batch"]["max"] > 1 or stats["decode_batch"]["max"] > 1


async def test_same_seed_same_sample_whatever_else_runs(make_engine):
    engine = make_engine()
    seeded = _request("s1", PROMPTS[1], temperature=1.0, seed=1234)
    first = await _collect(engine.submit(seeded))
    others = [engine.submit(_request(f"o{i}", p, temperature=1.0)) for i, p in enumerate(PROMPTS)]
    again = engine.submit(_request("s2", PROMPTS[1], temperature=1.0, seed=1234))
    results = await asyncio.gather(_collect(again), *[_collect(o) for o in others])
    assert results[0].output_ids == first.output_ids


async def test_overloaded_when_the_queue_is_full_and_admitted_turns_finish(make_engine):
    engine = make_engine(max_queue=3)
    streams = [engine.submit(_request(f"k{i}", PROMPTS[i], max_tokens=20)) for i in range(3)]
    with pytest.raises(Overloaded):
        engine.submit(_request("extra", PROMPTS[0]))
    done = await asyncio.gather(*[_collect(s) for s in streams])
    assert all(d.finish_reason in ("stop", "length") for d in done)
    await _collect(engine.submit(_request("later", PROMPTS[0])))  # room again


async def test_cancel_stops_one_turn_and_disturbs_no_one(make_engine):
    engine = make_engine()
    solo = await _collect(engine.submit(_request("solo", PROMPTS[3], max_tokens=30)))
    keep = engine.submit(_request("keep", PROMPTS[3], max_tokens=30))
    stop = engine.submit(_request("stop", PROMPTS[2], max_tokens=30))
    async for event in stop:
        stop.cancel()
        break
    cancelled = await _collect(stop)
    kept = await _collect(keep)
    assert cancelled.finish_reason == "cancelled" and len(cancelled.output_ids) < 30
    assert kept.output_ids == solo.output_ids
    assert engine.num_admitted == 0


async def test_long_prompt_is_chunked_between_decode_steps(make_engine):
    engine = make_engine(max_tokens_per_decode_step=64)
    streaming = engine.submit(_request("streaming", PROMPTS[0], max_tokens=60))
    await streaming.__anext__()  # decoding has started
    long = engine.submit(_request("long", list(range(1000, 1600)), max_tokens=2))
    await asyncio.gather(_collect(streaming), _collect(long))
    # the 600-token prompt took >= 10 steps of <= 64 tokens, each also serving the decoder
    stats = (await engine.stats())["engine"]
    assert stats["step_tokens"]["max"] <= 64 and stats["num_steps"] >= 10


async def test_statistics_move(make_engine):
    engine = make_engine()
    await _collect(engine.submit(_request("a", PROMPTS[1])))
    stats = await engine.stats()
    assert stats["engine"]["ttft_ms"]["count"] == 1 and stats["engine"]["itl_ms"]["count"] >= 1
    assert stats["engine"]["turns_finished"] and stats["kv"]["ram"]["sessions"] == 1
    assert stats["kv"]["misses"] == 1


async def test_two_turns_of_one_session_never_run_at_once(make_engine):
    """Stateless clients may send two requests for the same session together: the second waits for
    the first (they share one KV), then reuses what the first left, and both answer correctly."""
    engine = make_engine()
    expected = [await _collect(engine.submit(_request(f"ref{i}", p))) for i, p in enumerate(PROMPTS[:2])]
    a = engine.submit(_request("same", PROMPTS[0]))
    b = engine.submit(_request("same", PROMPTS[1]))
    start = time.perf_counter()
    done_a, done_b = await asyncio.gather(_collect(a), _collect(b))
    assert [done_a.output_ids, done_b.output_ids] == [d.output_ids for d in expected]
    assert time.perf_counter() - start < 5  # no idle waiting between them


def _thread_cpu_seconds(native_id: int) -> float:
    """User + system CPU time of one thread of this process (Linux /proc; clock ticks -> seconds)."""
    import os
    from pathlib import Path

    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_an_idle_engine_sleeps_after_a_turn(make_engine):
    """The engine thread must not poll while idle: it would hold the GIL against the event loop (every
    database write and socket send of the server would wait for it)."""
    engine = make_engine()
    await _collect(engine.submit(_request("a", PROMPTS[0])))
    await asyncio.sleep(0.1)
    before = _thread_cpu_seconds(engine.engine._thread.native_id)
    await asyncio.sleep(1.0)
    assert _thread_cpu_seconds(engine.engine._thread.native_id) - before < 0.1


async def test_spill_and_drop_answer_once_the_kv_has_moved(tiny_model, tmp_path):
    """The server awaits these (admin evict and delete): they resolve when the disk write or delete is
    done, with the session's tier then; a query runs on the engine thread and returns its answer."""
    from storage import KVFileStore, KVLayout

    def disk_for(spec):
        return KVFileStore(tmp_path, KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype,
                                              spec.fingerprint), max_bytes=1 << 30)

    engine, _ = start_engine(EngineConfig(), tiny_model, disk_for=disk_for)
    try:
        driver = Driver(engine)
        await _collect(driver.submit(_request("s", PROMPTS[1])))
        assert await driver.client.kv_placement(["s", "other"]) == {"s": ("ram", pytest.approx(0, abs=1 << 30)),
                                                                   "other": ("none", 0)}
        assert await driver.client.spill("s") == "disk"
        assert list(tmp_path.rglob("*.safetensors"))  # written before the answer came
        assert await driver.client.drop("s") == "none"
        assert not list(tmp_path.rglob("*.safetensors"))
        assert await driver.client.spill("never-seen") == "none"
        with pytest.raises(ZeroDivisionError):
            await driver.client.query(lambda e: 1 / 0)  # an error in a query reaches its caller
    finally:
        engine.stop()
