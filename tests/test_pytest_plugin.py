"""The pytest plugin (``pytest11`` entry point): a ``registry`` fixture for users' tests, run
in a pytest of its own (``pytester``) exactly as a user's project would."""

from __future__ import annotations

import pytest

USER_TESTS = """
import pytest
import trio

import actorcore


class Counter(actorcore.Actor):
    def create_state(self, ctx, input):
        return {"n": 0}

    @actorcore.action
    async def increment(self, ctx):
        ctx.state["n"] += 1
        return ctx.state["n"]


@pytest.fixture
def actorcore_actors():
    return [Counter]


async def test_counter(registry, autojump_clock):
    counter = await registry.get_or_create("counter", "k")
    assert await counter.call("increment") == 1
    await trio.sleep(3600)  # virtual: it slept and woke
    assert await counter.call("increment") == 2
    assert registry.store.statistics().actors == 1


async def test_each_test_gets_a_fresh_store(registry):
    with pytest.raises(actorcore.ActorNotFound):
        await registry.get("counter", "k")
"""


def test_the_registry_fixture_runs_the_users_actors(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=2)


def test_without_actorcore_actors_the_fixture_says_what_to_define(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        test_user="async def test_it(registry):\n    pass\n",
    )
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define an `actorcore_actors` fixture*"])
