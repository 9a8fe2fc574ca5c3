"""A conversation's branches in the engine (engine/kv/branches.py): a new answer to the same prompt starts
without a forward pass, an edit recomputes only from where it differs, the branch left behind is kept and
comes back, branches share their common beginning in RAM, and every answer equals the answer alone."""

import pytest

from chatserver.engine_client import EngineClient
from engine import DoneEvent, EngineConfig, ModelConfig, SamplingParams, TurnRequest, start_engine
from engine.kv import branch_key

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
SEEDED = SamplingParams(max_tokens=12, temperature=1.0, seed=3)


class Session:
    """One conversation's turns through the engine, named as the chat server names branches."""

    def __init__(self, client: EngineClient, session_id: str = "s"):
        self.client, self.id = client, session_id
        self.kv_branch = ""  # the branch the session's KV holds (the chat server tracks it per session)

    async def turn(self, prompt: list[int], branch: str, answer_name: str,
                   sampling: SamplingParams = GREEDY, new_branch: bool = False) -> DoneEvent:
        stream = self.client.admit(prompt, sampling.max_tokens)
        stream.start(TurnRequest(self.id, prompt, sampling, kv_branch=self.kv_branch, branch=branch,
                                 new_branch=new_branch))
        async for event in stream:
            pass
        assert isinstance(event, DoneEvent), event
        self.kv_branch = answer_name
        return event


@pytest.fixture
def client(tiny_model):
    engine, _ = start_engine(EngineConfig(model=ModelConfig(activations="float32")), tiny_model)
    yield EngineClient(engine)
    engine.stop()


async def _alone(client: EngineClient, prompt: list[int], key: str) -> list[int]:
    return (await Session(client, key).turn(prompt, "", "")).output_ids


async def _kv(client: EngineClient) -> dict:
    return (await client.stats())["kv"]


PROMPT = [100 + i % 900 for i in range(700)]


async def test_a_new_answer_to_the_same_prompt_needs_no_prefill_and_keeps_the_old_one(client):
    s = Session(client)
    first = await s.turn(PROMPT, "", "a1")
    one_branch = (await _kv(client))["ram"]["bytes"]
    # regenerate: the same prompt, from the branch ending at a1
    again = await s.turn(PROMPT, "a1", "a2", new_branch=True)
    assert again.usage.cached_tokens == len(PROMPT)  # the whole prompt, and its logits: no forward pass
    assert again.timings.prefill_ms < first.timings.prefill_ms / 4
    assert again.output_ids == first.output_ids  # greedy: the same logits give the same answer
    kv = await _kv(client)
    assert kv["forks"] == 1 and kv["fork_tokens"] == len(PROMPT)
    assert (await client.kv_placement([branch_key("s", "a1")]))[branch_key("s", "a1")][0] == "ram"
    # two branches hold the prompt once, and each its own tail (capacity is counted in steps of 256 tokens):
    # the shared prompt is the first branch's buffer as it was (no copy)
    token_bytes = await client.query(lambda engine: engine.runner.new_kv().token_bytes)
    assert len(PROMPT) * token_bytes <= kv["ram"]["shared_bytes"] <= one_branch
    assert kv["ram"]["bytes"] <= one_branch + 2 * 256 * token_bytes < 2 * one_branch
    # the new branch goes on, reading the shared prompt in place (short and long prefill chunks)
    for first_id, n, name in ((5, 3, "a3"), (300, 200, "a4")):
        follow = PROMPT + again.output_ids + list(range(first_id, first_id + n))
        answer = await s.turn(follow, s.kv_branch, name)
        assert answer.usage.cached_tokens >= len(follow) - n - 1
        assert answer.output_ids == await _alone(client, follow, f"fresh-{n}")


async def test_an_edit_recomputes_from_where_it_differs_and_answers_as_a_fresh_session_would(client):
    s = Session(client)
    first = await s.turn(PROMPT[:300], "", "a1")
    second_prompt = PROMPT[:300] + first.output_ids + [7, 8, 9, 10]
    await s.turn(second_prompt, "a1", "a2")
    edited = second_prompt[:-4] + [11, 12, 13, 14, 15]  # the second question, edited
    answer = await s.turn(edited, "a2", "a3", new_branch=True)
    assert answer.usage.cached_tokens == len(second_prompt) - 4  # only the edited question is computed
    assert answer.output_ids == await _alone(client, edited, "fresh")
    assert (await _kv(client))["forks"] == 1


async def test_coming_back_to_a_kept_branch_reuses_all_of_it(client):
    s = Session(client)
    first = await s.turn(PROMPT[:200], "", "a1")
    other = await s.turn(PROMPT[:200], "a1", "a2", SEEDED, new_branch=True)
    assert other.output_ids != first.output_ids  # regenerated differently: a1's branch is kept
    back = PROMPT[:200] + first.output_ids + [5, 6, 7]  # the next question after a1 (switched back)
    answer = await s.turn(back, "a1", "a3")
    assert answer.usage.cached_tokens == len(back) - 4  # all of a1's branch; its last token is fed again
    assert answer.output_ids == await _alone(client, back, "fresh")
    placement = await client.kv_placement([branch_key("s", "a2"), branch_key("s", "a1")])
    assert placement[branch_key("s", "a2")][0] == "ram"  # the branch it left is kept in turn
    assert placement[branch_key("s", "a1")][0] == "none"  # the one it came back to is the session's now


async def test_dropping_a_session_drops_every_branch(client):
    s = Session(client)
    await s.turn(PROMPT[:100], "", "a1")
    await s.turn(PROMPT[:100], "a1", "a2", new_branch=True)
    await s.turn(PROMPT[:100], "a2", "a3", new_branch=True)
    keys = ["s", branch_key("s", "a1"), branch_key("s", "a2")]
    assert {tier for tier, _ in (await client.kv_placement(keys)).values()} == {"ram"}
    assert await client.drop("s") == "none"
    assert {tier for tier, _ in (await client.kv_placement(keys)).values()} == {"none"}
    kv = await _kv(client)
    assert kv["ram"]["bytes"] == 0 and kv["ram"]["shared_prefixes"] == 0


async def test_sampled_answers_from_kept_logits_follow_their_seed(client):
    s = Session(client)
    seeded = SamplingParams(max_tokens=12, temperature=1.0, seed=7)
    first = await s.turn(PROMPT[:50], "", "a1", seeded)
    again = await s.turn(PROMPT[:50], "a1", "a2", seeded, new_branch=True)
    assert again.usage.cached_tokens == 50 and again.output_ids == first.output_ids
    other = await s.turn(PROMPT[:50], "a2", "a3", SamplingParams(max_tokens=12, temperature=1.0, seed=8),
                         new_branch=True)
    assert other.output_ids != first.output_ids


async def test_a_branch_spilled_to_disk_comes_back_from_it_after_a_restart(tiny_model, tmp_path):
    from storage import KVFileStore, KVLayout

    def disk_for(spec):
        return KVFileStore(tmp_path, KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype,
                                              spec.fingerprint), max_bytes=1 << 30)

    config = EngineConfig(model=ModelConfig(activations="float32"))
    engine, _ = start_engine(config, tiny_model, disk_for=disk_for)
    try:
        s = Session(EngineClient(engine))
        first = await s.turn(PROMPT[:200], "", "a1")
        await s.turn(PROMPT[:200], "a1", "a2", SEEDED, new_branch=True)
        assert await s.client.spill(branch_key("s", "a1")) == "disk"
    finally:
        engine.stop()  # writes the session's own KV too
    engine, _ = start_engine(config, tiny_model, disk_for=disk_for)
    try:
        client = EngineClient(engine)
        s.client = client
        back = PROMPT[:200] + first.output_ids + [5, 6, 7]
        answer = await s.turn(back, "a1", "a3")
        assert answer.usage.cached_tokens == len(back) - 4 and answer.cache == "disk"
        assert answer.output_ids == await _alone(client, back, "fresh")
        placement = await client.kv_placement([branch_key("s", "a2")])
        assert placement[branch_key("s", "a2")][0] in ("ram", "disk")  # the branch it left, kept in turn
    finally:
        engine.stop()


async def test_two_branches_on_disk_hold_their_common_beginning_once(tiny_model, tmp_path):
    from storage import KVFileStore, KVLayout
    disks = []

    def disk_for(spec):
        disks.append(KVFileStore(tmp_path, KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype,
                                                    spec.fingerprint), max_bytes=1 << 30, chunk_tokens=256))
        return disks[-1]

    engine, _ = start_engine(EngineConfig(model=ModelConfig(activations="float32")), tiny_model, disk_for=disk_for)
    try:
        s = Session(EngineClient(engine))
        first = await s.turn(PROMPT, "", "a1")
        second = await s.turn(PROMPT, "a1", "a2", SEEDED, new_branch=True)
        assert await s.client.spill(branch_key("s", "a1")) == "disk"
        assert await s.client.spill("s") == "disk"
        [disk] = disks
        tails = len(first.output_ids) + len(second.output_ids)
        files = (await _kv(s.client))["files"]
        assert files["chunks_reused"] == 2  # positions 0-511: whole chunks of the 700-token prompt both share
        payload = (2 * len(PROMPT) - 512 + tails) * disk.layout.token_bytes()
        assert payload <= disk.total_bytes < payload + 64 * 1024  # chunk headers and manifests
        back = PROMPT + second.output_ids + [5, 6, 7]
        answer = await s.turn(back, "a2", "a3")  # read back from disk, shared chunks included
        assert answer.cache == "disk" and answer.usage.cached_tokens == len(back) - 4
        assert answer.output_ids == await _alone(s.client, back, "fresh")
    finally:
        engine.stop()


async def test_switching_branches_between_turns_swaps_which_kv_the_session_holds(client):
    s = Session(client)
    first = await s.turn(PROMPT[:200], "", "a1")
    await s.turn(PROMPT[:200], "a1", "a2", SEEDED, new_branch=True)
    assert await client.switch_branch("s", "a2", "a1") == "a1"  # the person looks at a1 again
    placement = await client.kv_placement([branch_key("s", "a1"), branch_key("s", "a2")])
    assert placement[branch_key("s", "a1")][0] == "none" and placement[branch_key("s", "a2")][0] == "ram"
    s.kv_branch = "a1"
    back = PROMPT[:200] + first.output_ids + [5, 6, 7]
    answer = await s.turn(back, "a1", "a3")
    assert answer.usage.cached_tokens == len(back) - 4
    assert await client.switch_branch("s", "a3", "nothing-kept") == "nothing-kept"
    assert (await client.kv_placement(["s"]))["s"][0] == "none"  # the session holds no KV until its next turn


async def test_a_one_token_new_answer_ends_before_any_fork_and_leaves_the_kv_as_it_was(client):
    s = Session(client)
    first = await s.turn(PROMPT[:100], "", "a1")
    one = await s.turn(PROMPT[:100], "a1", "a2", SamplingParams(max_tokens=1, temperature=0.0), new_branch=True)
    assert one.output_ids == first.output_ids[:1] and one.usage.cached_tokens == 100
    assert one.finish_reason == "length" and (await _kv(client))["forks"] == 0
    s.kv_branch = "a1"  # the KV still holds a1's branch: going on from it reuses all of it
    back = PROMPT[:100] + first.output_ids + [5, 6, 7]
    answer = await s.turn(back, "a1", "a3")
    assert answer.usage.cached_tokens == len(back) - 4


async def test_a_branch_taken_back_from_disk_survives_the_session_kv_it_replaces(tiny_model, tmp_path):
    """The session's KV has no branch name to be kept under: it is discarded, and the file of the branch
    taken back in its place must not go with it (a deletion queued for the session's name)."""
    from storage import KVFileStore, KVLayout

    def disk_for(spec):
        return KVFileStore(tmp_path, KVLayout(spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype,
                                              spec.fingerprint), max_bytes=1 << 30)

    engine, _ = start_engine(EngineConfig(model=ModelConfig(activations="float32")), tiny_model, disk_for=disk_for)
    try:
        s = Session(EngineClient(engine))
        first = await s.turn(PROMPT[:200], "", "a1")
        await s.turn(PROMPT[:200], "a1", "a2", SEEDED, new_branch=True)
        assert await s.client.spill(branch_key("s", "a1")) == "disk"
        assert await s.client.switch_branch("s", "", "a1") == "a1"  # nothing names what the session held
        s.kv_branch = "a1"
        back = PROMPT[:200] + first.output_ids + [5, 6, 7]
        answer = await s.turn(back, "a1", "a3")
        assert answer.usage.cached_tokens == len(back) - 4 and answer.cache == "disk"
    finally:
        engine.stop()
