"""say_money / say_duration: the exact AGI commands, against the scripted fake Asterisk."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ivr.agi import AgiServer, AgiSession
from ivr.prompts import Catalogue, PromptStore, Voice, load_catalogue
from ivr.prompts.build import build
from ivr.prompts.say import word_ids
from ivr.testing.fake_asterisk import FakeAsterisk, default_rule


# The Voice under test is the call's (the fixture puts it there), so the cases below
# read as what a flow says.
def say_money(call: AgiSession, *args, **kwargs):
    return call.state["voice"].say_money(call, *args, **kwargs)


def say_duration(call: AgiSession, *args, **kwargs):
    return call.state["voice"].say_duration(call, *args, **kwargs)


@pytest.fixture(scope="module")
def word_store(tmp_path_factory) -> tuple[PromptStore, Catalogue]:
    """Speech for the words around numbers, in both languages."""
    full = load_catalogue()
    words = Catalogue(full.languages, {i: full.prompts[i] for i in word_ids()}, full.voices)
    path = tmp_path_factory.mktemp("words")
    store = PromptStore(path, str(path))
    build(words, store, progress=False)
    return store, words


@pytest.fixture
async def say(word_store):
    store, words = word_store
    voice = Voice(words, store)
    servers: list[AgiServer] = []

    async def run(action, *, language: str = "en", rule=default_rule) -> tuple[list[str], list]:
        results: list = []

        async def route(call: AgiSession) -> None:
            call.state["voice"] = voice
            results.append(await action(call))

        server = AgiServer({"say": route}, "127.0.0.1", 0)
        await server.start()
        servers.append(server)
        commands = await FakeAsterisk("127.0.0.1", server.port, rule).run_call(
            "say", language=language)
        await server.wait_idle()
        assert server.stats.failed == 0
        return commands, results

    yield run
    for server in servers:
        await server.shutdown(grace=1)


def our(store_lang: str, word: str, word_store) -> str:
    store, _ = word_store
    return f'STREAM FILE "{store.inner_dir}/{store_lang}/{word}/v1" ""'


def core(name: str) -> str:
    return f'STREAM FILE "{name}" ""'


def number(n: int) -> str:
    return f'SAY NUMBER "{n}" ""'


async def test_five_dollars_and_twenty_cents(say, word_store):
    commands, results = await say(lambda call: say_money(call, Decimal("5.20"), "USD"))
    assert commands == [
        number(5), core("digits/dollars"), core("vm-and"), number(20),
        our("en", "unit-cents", word_store),
    ]
    assert results == [""]


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("1.01", "USD", [number(1), "en/unit-dollar", core("vm-and"), number(1), "en/unit-cent"]),
        ("0.50", "usd", [number(50), "en/unit-cents"]),
        ("0", "USD", [number(0), core("digits/dollars")]),
        ("12", "USD", [number(12), core("digits/dollars")]),
        ("3.999", "USD", [number(3), core("digits/dollars"), core("vm-and"), number(99),
                          "en/unit-cents"]),  # a balance is truncated, never rounded up
        ("-2.5", "EUR", [core("digits/minus"), number(2), "en/unit-euros", core("vm-and"),
                         number(50), "en/unit-euro-cents"]),
        ("1", "GBP", [number(1), "en/unit-pound"]),
        ("0.01", "MXN", [number(1), "en/unit-centavo"]),
    ],
)
async def test_money(say, word_store, amount, currency, expected):
    commands, _ = await say(lambda call: say_money(call, Decimal(amount), currency))
    assert commands == [our(*e.split("/"), word_store) if e.startswith("en/") else e
                        for e in expected]


@pytest.mark.parametrize(
    ("seconds", "whole_minutes", "expected"),
    [
        (23 * 60, False, [number(23), core("minutes")]),
        (23 * 60 + 59, True, [number(23), core("minutes")]),  # never promise a minute more
        (61, False, [number(1), core("minute"), core("vm-and"), number(1), core("second")]),
        (3725, False, [number(1), "en/unit-hour", number(2), core("minutes"), core("vm-and"),
                       number(5), core("seconds")]),
        (7200, False, [number(2), core("hours")]),
        (0, False, [number(0), core("seconds")]),
        (59, True, [number(0), core("minutes")]),
    ],
)
async def test_durations(say, word_store, seconds, whole_minutes, expected):
    commands, _ = await say(lambda call: say_duration(call, seconds, whole_minutes=whole_minutes))
    assert commands == [our(*e.split("/"), word_store) if e.startswith("en/") else e
                        for e in expected]


async def test_spanish_uses_the_spanish_core_sounds_and_the_catalogue(say, word_store):
    commands, _ = await say(lambda call: say_money(call, Decimal("5.20"), "USD"), language="es")
    assert commands == [
        number(5), core("digits/dollars"), core("vm-and"),
        number(20), our("es", "unit-cents", word_store),
    ]
    commands, _ = await say(lambda call: say_duration(call, 23 * 60), language="es")
    assert commands == [number(23), core("minutes")]
    commands, _ = await say(lambda call: say_duration(call, 60), language="es")
    assert commands == [number(1), our("es", "unit-minute", word_store)]  # no core sound


async def test_numbers_follow_the_language_the_caller_chose(say, word_store):
    """The caller picked Spanish in an English channel: SAY NUMBER speaks the channel's
    language, so it is switched once, before the first number."""

    async def spanish(call: AgiSession) -> None:
        call.state["voice"].set_language(call, "es")
        await say_money(call, Decimal("5.20"), "USD")
        await say_duration(call, 23 * 60)

    commands, _ = await say(spanish, language="en")
    assert commands[0] == 'SET VARIABLE "CHANNEL(language)" "es"'
    assert commands[1:] == [number(5), core("digits/dollars"), core("vm-and"), number(20),
                            our("es", "unit-cents", word_store), number(23), core("minutes")]


async def test_a_key_stops_the_sentence_and_is_returned(say):
    def rule(command: str) -> str:
        if command.startswith('STREAM FILE "digits/dollars"'):
            return "200 result=49 endpos=1200"  # '1' pressed
        return default_rule(command)

    commands, results = await say(
        lambda call: say_money(call, Decimal("5.20"), "USD", escape_digits="1"), rule=rule)
    assert commands == ['SAY NUMBER "5" "1"', 'STREAM FILE "digits/dollars" "1"']
    assert results == ["1"]


def test_an_unknown_currency_is_refused():
    from ivr.prompts.say import money_steps

    with pytest.raises(ValueError, match="no spoken words for currency 'XYZ'"):
        money_steps(Decimal(1), "XYZ")
