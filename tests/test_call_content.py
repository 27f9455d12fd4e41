"""An application call's engine content: which of its tokens other calls share."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Hashable

from hypothesis import given
from hypothesis import strategies as st

from hermes.core.pdgraph import learn
from hermes.core.prefix_learning import StagePrefix
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.engine.prefix import block_hashes, shared_tokens
from hermes.workloads.call_content import call_content, run_contents, with_learned_fields
from hermes.workloads.templates import generate_runs


def llm(name: str, *calls: LLMCall) -> Stage:
    return Stage(name, "llm", "llm", calls)


def act() -> Stage:
    return Stage("act", "tool", "env", (ToolCall(0.1),))


def agent(run_id: str, prefix: int = 100) -> AppRun:
    """Three thoughts, each resending the previous prompt and completion, then a fan-out."""
    return AppRun(
        "agent",
        run_id,
        (
            llm("thought", LLMCall(130, 10, prefix, 0)),  # context: 30 + 10
            act(),
            llm("thought", LLMCall(185, 7, prefix, 40)),  # 40 + 45 new + 7 out: 92
            act(),
            llm("thought", LLMCall(300, 5, prefix, 92)),
            llm("vote", LLMCall(150, 1, 20, 92), LLMCall(150, 2, 20, 92)),
        ),
    )


PREFIX = ("prefix", "agent", "stage", "thought")


def test_history_grows_along_the_run() -> None:
    run = agent("a")
    assert call_content(run, 7, 0, 0) == ((PREFIX, 100), (("run", 7), 40))
    assert call_content(run, 7, 2, 0) == ((PREFIX, 100), (("run", 7), 92))
    assert call_content(run, 7, 4, 0) == ((PREFIX, 100), (("run", 7), 205))
    assert call_content(run, 7, 1, 0) is None  # a tool call


def test_a_fan_out_reads_the_context_without_extending_it() -> None:
    vote = ("prefix", "agent", "stage", "vote")
    contents = run_contents(agent("a"), 7)[5]
    assert contents == [((vote, 20), (("run", 7), 92))] * 2


def test_the_shared_prefix_is_common_to_two_runs_of_a_type() -> None:
    a, b = run_contents(agent("a"), 1), run_contents(agent("b"), 2)
    assert a[0][0] is not None
    assert b[0][0] is not None
    assert a[0][0][0] == b[0][0][0] == (PREFIX, 100)
    assert a[0][0][1][0] != b[0][0][1][0]  # each run its own history
    hashes_a = block_hashes(a[2][0], 16, 10_000)
    hashes_b = block_hashes(b[2][0], 16, 10_000)
    assert hashes_a[:6] == hashes_b[:6]  # 100 prefix tokens: six full blocks
    assert hashes_a[6] != hashes_b[6]


def test_a_shorter_history_reads_without_extending() -> None:
    run = agent("a")
    calls = list(run.stages[4].llm_calls())
    calls[0] = dataclasses.replace(calls[0], history_tokens=50)  # less than the 92 so far
    stages = list(run.stages)
    stages[4] = dataclasses.replace(stages[4], calls=tuple(calls))
    forked = dataclasses.replace(run, stages=tuple(stages))
    assert call_content(forked, 0, 4, 0) == ((PREFIX, 100), (("run", 0), 50))
    # The third thought did not extend the context: the vote still reads its 92 tokens.
    assert call_content(forked, 0, 5, 0) == ((("prefix", "agent", "stage", "vote"), 20),
                                             (("run", 0), 92))  # fmt: skip


def test_a_prefix_id_is_shared_across_stages() -> None:
    run = AppRun(
        "t", "r", (llm("a", LLMCall(50, 5, 40, 0, "sys")), llm("b", LLMCall(60, 5, 40, 0, "sys")))
    )
    first, second = call_content(run, 0, 0, 0), call_content(run, 0, 1, 0)
    assert first is not None
    assert second is not None
    assert first[0] == second[0] == (("prefix", "t", "id", "sys"), 40)


def test_runs_without_fields_share_nothing_unless_learned() -> None:
    plain = AppRun(
        "agent", "p", (llm("thought", LLMCall(130, 10)), llm("thought", LLMCall(150, 5)))
    )
    assert run_contents(plain, 0) == [[None], [None]]
    learned = {"thought": StagePrefix(shared_prefix_tokens=120, history_resend=True)}
    assert run_contents(plain, 0, learned) == [
        [((PREFIX, 120), (("run", 0), 20))],
        [((PREFIX, 120), (("run", 0), 35))],
    ]
    no_resend = {"thought": StagePrefix(shared_prefix_tokens=120, history_resend=False)}
    assert run_contents(plain, 0, no_resend)[1] == [((PREFIX, 120),)]


def test_a_run_that_records_fields_is_not_overridden_by_learning() -> None:
    run = agent("a")
    learned = {"thought": StagePrefix(0, False)}
    assert run_contents(run, 3, learned) == run_contents(run, 3)
    assert with_learned_fields(run, learned) is run


def _plain(run: AppRun) -> AppRun:
    return dataclasses.replace(run, stages=tuple(
        dataclasses.replace(s, calls=tuple(LLMCall(c.prompt_tokens, c.completion_tokens)
                                           for c in s.llm_calls())) if s.kind == "llm" else s
        for s in run.stages
    ))  # fmt: skip


def test_learned_fields_written_into_a_run_give_the_same_content() -> None:
    runs = [_plain(r) for r in generate_runs("react_fever", 30, seed=5)]
    runs += [_plain(r) for r in generate_runs("factool_kbqa", 10, seed=6)]
    graphs = learn(runs)
    for app_id, run in enumerate(runs):
        learned = graphs[run.app].learned_prefixes()
        filled = with_learned_fields(run, learned)
        assert all(c.records_sharing for s in filled.stages for c in s.llm_calls())
        assert run_contents(filled, app_id) == run_contents(run, app_id, learned)
    filled = with_learned_fields(runs[0], graphs["react_fever"].learned_prefixes())
    histories = [c.history_tokens for s in filled.stages for c in s.llm_calls()]
    assert histories[0] == 0
    assert all(h is not None and h > 0 for h in histories[1:])  # detected: the thoughts resend


def test_template_runs_carry_content_that_never_exceeds_the_call() -> None:
    for app in ("react_alfw", "factool_kbqa", "langchain_mapreduce"):
        for run in generate_runs(app, 20, seed=3):
            for stage, contents in zip(run.stages, run_contents(run, run.run_id), strict=True):
                for call, content in zip(stage.calls, contents, strict=True):
                    if not isinstance(call, LLMCall):
                        assert content is None
                        continue
                    assert content is not None
                    assert shared_tokens(content) <= call.prompt_tokens + call.completion_tokens


def test_an_agents_next_call_resends_all_of_the_previous_one() -> None:
    (run,) = generate_runs("react_alfw", 1, seed=11)
    contents = [
        c[0] for s, c in zip(run.stages, run_contents(run, 0), strict=True) if s.kind == "llm"
    ]
    calls = [c for s in run.stages for c in s.llm_calls()]
    for k in range(1, len(calls)):
        previous, now = contents[k - 1], contents[k]
        assert previous is not None
        assert now is not None
        # Every token the previous call had (prompt and completion) leads this one's prompt.
        assert (
            shared_tokens(previous) == calls[k - 1].prompt_tokens + calls[k - 1].completion_tokens
        )
        assert now[1][1] >= previous[1][1]


# ---- the property: hashes agree exactly where the tokens do ------------------------------------


@dataclasses.dataclass
class _Truth:
    """Runs generated with their real token sequences, to check contents against."""

    runs: list[AppRun] = dataclasses.field(default_factory=list)
    tokens: dict[tuple[int, int, int], list[Hashable]] = dataclasses.field(default_factory=dict)


_STAGE = st.tuples(
    st.sampled_from(["a", "b"]),  # stage name: its template
    st.integers(1, 3),  # fan-out
    # How much of the context it resends: all, none, some, or all and then tokens that no
    # earlier call sent at that place (what a fan-out generated).
    st.sampled_from(["all", "none", "some", "more"]),
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 20)), min_size=3, max_size=3),
)


def _generate(plans: list[list[tuple[str, int, str, list[tuple[int, int]]]]], pick: int) -> _Truth:
    """Runs of one type whose calls send [template][context resent][fresh] and generate
    fresh tokens; the context grows by a single call's prompt (after its template) and output
    when that call resends it all. "more" resends the context and then the previous stage's
    outputs."""
    fresh = itertools.count()
    template = {"a": [("a", i) for i in range(37)], "b": [("b", i) for i in range(23)]}
    truth = _Truth()
    for r, plan in enumerate(plans):
        context: list[Hashable] = []
        stages: list[Stage] = []
        outputs: list[Hashable] = []  # the previous stage's
        for i, (name, fanout, resend, sizes) in enumerate(plan):
            seen = context + outputs if resend == "more" else context
            history = {"all": len(context), "none": 0, "some": min(pick, len(context))}.get(
                resend, len(seen)
            )
            calls, stage_outputs = [], []
            for k, (own, out) in enumerate(sizes[:fanout]):
                prompt = template[name] + seen[:history] + [next(fresh) for _ in range(own)]
                output: list[Hashable] = [next(fresh) for _ in range(out)]
                stage_outputs += output
                truth.tokens[(r, i, k)] = prompt + output
                calls.append(LLMCall(len(prompt), out, len(template[name]), history))
                if fanout == 1 and history >= len(context):
                    context = prompt[len(template[name]) :] + output
            stages.append(llm(name, *calls))
            outputs = stage_outputs
        truth.runs.append(AppRun("t", f"r{r}", tuple(stages)))
    return truth


@given(
    plans=st.lists(st.lists(_STAGE, min_size=1, max_size=5), min_size=2, max_size=2),
    pick=st.integers(0, 60),
    block=st.sampled_from([1, 4, 16]),
)
def test_block_hashes_agree_exactly_on_shared_leading_full_blocks(
    plans: list[list[tuple[str, int, str, list[tuple[int, int]]]]], pick: int, block: int
) -> None:
    truth = _generate(plans, pick)
    seen: list[tuple[list[Hashable], list[int]]] = []
    for r, run in enumerate(truth.runs):
        for i, contents in enumerate(run_contents(run, r)):
            for k, content in enumerate(contents):
                real = truth.tokens[(r, i, k)]
                assert shared_tokens(content) <= len(real)
                described = real[: shared_tokens(content)]
                seen.append((described, block_hashes(content, block, len(real))))
    for (a, ha), (b, hb) in itertools.combinations(seen, 2):
        common = next(
            (n for n, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        for n in range(min(len(ha), len(hb))):
            assert (ha[n] == hb[n]) == ((n + 1) * block <= common)
