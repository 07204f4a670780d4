"""Direct recharge over HTTP (ivr.revalue.direct) against the real simulated operator
(ivr.revalue.simulator) served by uvicorn on loopback, with the real httpx client, and
its callbacks taken by the real callbacks endpoint (ivr.revalue.callbacks)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ivr.config import ConfigError, load_settings
from ivr.revalue.callbacks import LoopbackServer, callback_app, callback_server
from ivr.revalue.direct import (
    SIGNATURE_HEADER,
    HttpOperatorApi,
    RechargeAnswer,
    RechargeRequest,
    RechargeState,
    answer_json,
    load_operators_file,
    operators_from_settings,
    parse_bind,
    parse_operators,
    sign,
    verify,
)
from ivr.revalue.simulator import Behaviour, SimulatedOperator
from ivr.testing import free_port, wait_listening

TOKEN = "tok-123"
SECRET = b"shared-callback-secret"
OPERATOR = "SimOp"
ALICE, BOB = "+15551230001", "+15551230002"
_ids = itertools.count(1)


def request(msisdn: str = ALICE, amount: str = "10.00", request_id: str | None = None
            ) -> RechargeRequest:
    return RechargeRequest(request_id or f"rv-{next(_ids)}", msisdn, OPERATOR,
                           Decimal(amount), "USD")


class Received:
    """The callbacks handler: keeps every answer handed to it."""

    def __init__(self) -> None:
        self.answers: list[RechargeAnswer] = []
        self._changed = asyncio.Event()
        self.fail = False

    async def __call__(self, answer: RechargeAnswer) -> None:
        if self.fail:
            raise RuntimeError("handler down")
        self.answers.append(answer)
        self._changed.set()

    def of(self, request_id: str) -> list[RechargeAnswer]:
        return [a for a in self.answers if a.request_id == request_id]

    async def wait_for(self, done: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Stack:
    sim: SimulatedOperator
    api: HttpOperatorApi
    received: Received
    url: str
    callbacks: LoopbackServer


# One operator and one callbacks endpoint for the module's tests (servers start and stop
# once), in the module's event loop; each test starts from a reset simulator.
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served() -> AsyncIterator[Stack]:
    received = Received()
    callbacks = callback_server({OPERATOR: SECRET}, received, f"127.0.0.1:{free_port()}")
    await callbacks.start()
    sim = SimulatedOperator(token=TOKEN, callback_url=f"{callbacks.url}/callbacks/{OPERATOR}",
                            callback_secret=SECRET, name=OPERATOR)
    try:
        async with sim.serving(port=free_port()) as server, \
                HttpOperatorApi(server.url, TOKEN, timeout=2.0, operator=OPERATOR) as api:
            yield Stack(sim, api, received, server.url, callbacks)
    finally:
        await callbacks.stop()


@pytest.fixture
def stack(served: Stack) -> Stack:
    served.sim.reset()
    served.received.answers.clear()
    served.received.fail = False
    return served


# --------------------------------------------------------------------------- behaviours


@module_loop
async def test_approve_completes_once_and_status_agrees(stack: Stack) -> None:
    req = request()
    answer = await stack.api.recharge(req)
    assert answer.state is RechargeState.COMPLETED
    assert answer.request_id == req.request_id
    assert answer.operator_ref.startswith("SIM") and answer.operator == OPERATOR
    assert stack.sim.recharged(ALICE) == Decimal("10.00")
    status = await stack.api.status(req.request_id)
    assert (status.state, status.operator_ref) == (RechargeState.COMPLETED, answer.operator_ref)


@module_loop
async def test_decline(stack: Stack) -> None:
    stack.sim.set_behaviour("decline")
    answer = await stack.api.recharge(request())
    assert answer.state is RechargeState.DECLINED
    assert answer.reason == "subscriber barred"
    assert stack.sim.recharges == 0 and stack.sim.recharged(ALICE) == 0


@module_loop
async def test_delay_then_approve(stack: Stack) -> None:
    stack.sim.set_behaviour("delay:150")
    started = time.monotonic()
    answer = await stack.api.recharge(request())
    assert answer.state is RechargeState.COMPLETED
    assert time.monotonic() - started >= 0.15


@module_loop
async def test_timeout_is_unknown_then_status_completed_and_a_callback(stack: Stack) -> None:
    stack.sim.set_behaviour("timeout:20000")
    req = request()
    started = time.monotonic()
    async with HttpOperatorApi(stack.url, TOKEN, timeout=0.3, operator=OPERATOR) as hasty:
        answer = await hasty.recharge(req)
    assert answer.state is RechargeState.UNKNOWN
    assert "no answer within 0.3 s" in answer.reason
    assert time.monotonic() - started < 2.0  # the client's limit, not the operator's 20 s
    status = await stack.api.status(req.request_id)
    assert status.state is RechargeState.COMPLETED
    await stack.received.wait_for(lambda: bool(stack.received.of(req.request_id)))
    assert [a.state for a in stack.received.of(req.request_id)] == [RechargeState.COMPLETED]
    assert stack.sim.recharges == 1


@module_loop
async def test_unknown_stays_unknown_until_settled_through_control(stack: Stack) -> None:
    stack.sim.set_behaviour("unknown")
    req = request()
    assert (await stack.api.recharge(req)).state is RechargeState.UNKNOWN
    assert (await stack.api.status(req.request_id)).state is RechargeState.UNKNOWN
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{stack.url}/_control",
                                     json={"settle": req.request_id, "state": "DECLINED"})
    assert response.status_code == 200
    assert (await stack.api.status(req.request_id)).state is RechargeState.DECLINED
    await stack.received.wait_for(lambda: bool(stack.received.of(req.request_id)))
    assert stack.received.of(req.request_id)[0].state is RechargeState.DECLINED
    assert stack.sim.recharges == 0


@module_loop
async def test_pending_answers_created_then_calls_back_completed(stack: Stack) -> None:
    stack.sim.set_behaviour("pending:30")
    req = request()
    assert (await stack.api.recharge(req)).state is RechargeState.CREATED
    await stack.received.wait_for(lambda: bool(stack.received.of(req.request_id)))
    assert stack.received.of(req.request_id)[0].state is RechargeState.COMPLETED
    assert (await stack.api.status(req.request_id)).state is RechargeState.COMPLETED


@module_loop
async def test_reverse_later_with_a_callback(stack: Stack) -> None:
    stack.sim.set_behaviour("reverse:50")
    req = request(amount="7.50")
    answer = await stack.api.recharge(req)
    assert answer.state is RechargeState.COMPLETED
    await stack.received.wait_for(lambda: bool(stack.received.of(req.request_id)))
    (callback,) = stack.received.of(req.request_id)
    assert callback.state is RechargeState.REVERSED
    assert callback.operator == OPERATOR and callback.operator_ref == answer.operator_ref
    assert (await stack.api.status(req.request_id)).state is RechargeState.REVERSED
    assert stack.sim.recharged(ALICE) == 0


@module_loop
async def test_callback_sent_twice_is_delivered_twice(stack: Stack) -> None:
    stack.sim.set_behaviour("callback-twice")
    req = request()
    assert (await stack.api.recharge(req)).state is RechargeState.COMPLETED
    await stack.received.wait_for(lambda: len(stack.received.of(req.request_id)) == 2)
    first, second = stack.received.of(req.request_id)
    assert first == second and first.state is RechargeState.COMPLETED
    assert stack.sim.recharges == 1  # two callbacks, one recharge


@module_loop
async def test_behaviour_per_number_through_the_control_api(stack: Stack) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{stack.url}/_control",
                                     json={"behaviour": "decline", "msisdn": BOB})
        assert response.json()["per_msisdn"] == {BOB: "decline"}
        assert (await stack.api.recharge(request(BOB))).state is RechargeState.DECLINED
        assert (await stack.api.recharge(request(ALICE))).state is RechargeState.COMPLETED
        await client.post(f"{stack.url}/_control", json={"behaviour": None, "msisdn": BOB})
        assert (await stack.api.recharge(request(BOB))).state is RechargeState.COMPLETED
        bad = await client.post(f"{stack.url}/_control", json={"behaviour": "explode"})
        assert bad.status_code == 400 and "unknown behaviour" in bad.json()["error"]


# --------------------------------------------------------------------------- idempotency


@module_loop
async def test_same_request_id_twice_recharges_once(stack: Stack) -> None:
    req = request()
    first = await stack.api.recharge(req)
    again = await stack.api.recharge(req)
    assert first == again and first.state is RechargeState.COMPLETED
    assert (stack.sim.requests, stack.sim.recharges) == (2, 1)
    assert stack.sim.recharged(ALICE) == Decimal("10.00")


@module_loop
async def test_concurrent_duplicates_recharge_once(stack: Stack) -> None:
    stack.sim.set_behaviour("delay:100")
    req = request()
    answers = await asyncio.gather(*(stack.api.recharge(req) for _ in range(3)))
    states = sorted(a.state for a in answers)
    # the first completes; those arriving while it is in progress see it CREATED
    assert states.count(RechargeState.COMPLETED) >= 1
    assert set(states) <= {RechargeState.COMPLETED, RechargeState.CREATED}
    assert len({a.operator_ref for a in answers}) == 1
    assert stack.sim.recharges == 1


@module_loop
async def test_request_id_reused_for_another_amount_is_not_recharged(stack: Stack) -> None:
    req = request()
    await stack.api.recharge(req)
    other = RechargeRequest(req.request_id, req.msisdn, OPERATOR, Decimal("99"), "USD")
    answer = await stack.api.recharge(other)
    assert answer.state is RechargeState.UNKNOWN and "HTTP 409" in answer.reason
    assert stack.sim.recharges == 1 and stack.sim.recharged(ALICE) == Decimal("10.00")


# --------------------------------------------------------------------------- failures


@module_loop
async def test_wrong_token_is_unknown_and_nothing_recharged(stack: Stack) -> None:
    async with HttpOperatorApi(stack.url, "wrong", timeout=2.0) as api:
        answer = await api.recharge(request())
        assert answer.state is RechargeState.UNKNOWN and "HTTP 401" in answer.reason
    assert stack.sim.requests == 0 and stack.sim.recharges == 0


async def test_unreachable_operator_is_unknown_never_an_exception() -> None:
    async with HttpOperatorApi(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2.0) as api:
        answer = await api.recharge(request())
        assert answer.state is RechargeState.UNKNOWN and "unreachable" in answer.reason
        assert (await api.status("rv-x")).state is RechargeState.UNKNOWN


@module_loop
async def test_status_of_a_request_never_received_is_declined(stack: Stack) -> None:
    answer = await stack.api.status("rv-never-sent")
    assert answer.state is RechargeState.DECLINED
    assert "no record" in answer.reason


async def test_answers_of_a_misbehaving_operator_map_to_safe_states() -> None:
    """Only an explicit answer settles a request: a malformed-request refusal is DECLINED,
    everything else unexpected is UNKNOWN (the money stays held)."""
    replies: list[Response] = []

    async def reply(request: Request) -> Response:
        return replies.pop(0)

    app = Starlette(routes=[Route("/recharges", reply, methods=["POST"]),
                            Route("/recharges/{rid}", reply, methods=["GET"])])
    async with LoopbackServer(app, port=free_port()) as server, \
            HttpOperatorApi(server.url, TOKEN, timeout=2.0) as api:
        req = request()
        cases: list[tuple[Response, RechargeState, str]] = [
            (JSONResponse({"error": "amount: too small"}, 422), RechargeState.DECLINED,
             "HTTP 422): amount: too small"),
            (JSONResponse({"error": "busy"}, 503), RechargeState.UNKNOWN, "HTTP 503: busy"),
            (Response("<html>", 200), RechargeState.UNKNOWN, "unreadable answer"),
            (JSONResponse({"request_id": "rv-other", "state": "COMPLETED"}),
             RechargeState.UNKNOWN, "answer for another request"),
            (JSONResponse({"request_id": req.request_id, "state": "PAID"}),
             RechargeState.UNKNOWN, "state: not one of"),
        ]
        for response, state, reason in cases:
            replies.append(response)
            answer = await api.recharge(req)
            assert (answer.state, answer.request_id) == (state, req.request_id), answer
            assert reason in answer.reason, answer
        replies.append(Response("Not Found", 404))  # a 404 page, not the API's
        assert (await api.status(req.request_id)).state is RechargeState.UNKNOWN
        replies.append(JSONResponse({"error": "no such recharge"}, 404))
        assert (await api.status(req.request_id)).state is RechargeState.DECLINED


@module_loop
async def test_simulator_refuses_malformed_requests(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers) as client:
        bad_amount = await client.post("/recharges", json={
            "request_id": "rv-b", "msisdn": ALICE, "amount": 10, "currency": "USD"})
        assert bad_amount.status_code == 400
        assert "amount" in bad_amount.json()["error"]
        key_differs = await client.post(
            "/recharges", headers={"Idempotency-Key": "other"}, json={
                "request_id": "rv-c", "msisdn": ALICE, "amount": "1", "currency": "USD"})
        assert key_differs.status_code == 400
    assert stack.sim.recharges == 0


# --------------------------------------------------------------------------- callbacks


async def _post_callback(url: str, body: bytes, signature: str | None,
                         client: httpx.AsyncClient | None = None) -> httpx.Response:
    headers = {} if signature is None else {SIGNATURE_HEADER: signature}
    if client is not None:
        return await client.post(url, content=body, headers=headers)
    async with httpx.AsyncClient() as own:
        return await own.post(url, content=body, headers=headers)


@module_loop
async def test_callbacks_refuse_bad_signatures_bodies_and_operators(stack: Stack) -> None:
    base = f"{stack.callbacks.url}/callbacks/"
    body = json.dumps(answer_json(RechargeAnswer("rv-cb", RechargeState.COMPLETED, "R1"))
                      ).encode()
    tampered = body.replace(b"COMPLETED", b"REVERSED")
    junk = b'{"request_id": "rv-cb", "state": "PAID"}'
    cases = (
        (OPERATOR, body, None, 403),  # unsigned
        (OPERATOR, body, sign(b"not-the-secret", body), 403),
        (OPERATOR, body, sign(SECRET, body, time.time() - 3600), 403),  # stale
        (OPERATOR, tampered, sign(SECRET, body), 403),
        (OPERATOR, junk, sign(SECRET, junk), 400),
        ("Nobody", body, sign(SECRET, body), 404),
    )
    async with httpx.AsyncClient() as client:
        for operator, content, signature, expected in cases:
            response = await _post_callback(base + operator, content, signature, client)
            assert response.status_code == expected, (operator, content, signature)
        assert stack.received.answers == []
        # a good one, to the operator's name in another case
        response = await _post_callback(base + OPERATOR.lower(), body, sign(SECRET, body),
                                        client)
    assert response.status_code == 204
    assert stack.received.answers == [
        RechargeAnswer("rv-cb", RechargeState.COMPLETED, "R1", "", OPERATOR)]


async def test_callback_handler_failure_is_a_500_for_the_operator_to_retry() -> None:
    received = Received()
    received.fail = True
    async with LoopbackServer(callback_app({OPERATOR: SECRET}, received),
                              port=free_port()) as server:
        body = json.dumps(answer_json(RechargeAnswer("rv-f", RechargeState.DECLINED))
                          ).encode()
        response = await _post_callback(f"{server.url}/callbacks/{OPERATOR}", body,
                                        sign(SECRET, body))
    assert response.status_code == 500


def test_signatures() -> None:
    body = b'{"a": 1}'
    header = sign(b"k", body, timestamp=1_000_000)
    assert header.startswith("t=1000000,v1=")
    assert verify(b"k", body, header, now=1_000_100)
    assert not verify(b"k", body, header, now=1_000_000 + 301)  # too old
    assert not verify(b"k", body + b" ", header, now=1_000_100)
    assert not verify(b"", body, header, now=1_000_100)  # no secret: nothing is valid
    assert not verify(b"k", body, "t=abc,v1=00", now=1_000_100)
    assert not verify(b"k", body, None)


async def test_stopping_the_server_lets_a_request_in_progress_finish() -> None:
    sim = SimulatedOperator("delay:200", token=TOKEN)
    server = LoopbackServer(sim.app, port=free_port())
    await server.start()
    async with HttpOperatorApi(server.url, TOKEN, timeout=5.0) as api:
        req = request()
        pending = asyncio.create_task(api.recharge(req))
        async with asyncio.timeout(3):
            while sim.answer(req.request_id) is None:  # the request is being handled
                await asyncio.sleep(0.005)
        await server.stop()
        assert (await pending).state is RechargeState.COMPLETED
        # and nothing listens any more
        after = await api.recharge(request())
        assert after.state is RechargeState.UNKNOWN and "unreachable" in after.reason
    await sim.aclose()


def test_listening_on_a_taken_port_is_a_clear_error() -> None:
    async def run() -> None:
        async with LoopbackServer(callback_app({}, Received()), port=free_port()) as first:
            second = LoopbackServer(callback_app({}, Received()), port=first.port,
                                    name="callbacks")
            with pytest.raises(OSError, match="callbacks: cannot listen on 127.0.0.1"):
                await second.start()

    asyncio.run(run())


# --------------------------------------------------------------------------- settings


def test_inline_operator_settings() -> None:
    ops = parse_operators(
        "OperatorA=http:http://127.0.0.1:8099@TOKEN; Other Net = http:https://api.example/v1@",
        timeout=4.0)
    assert list(ops) == ["OperatorA", "Other Net"]
    a = ops["operatora"]  # names match ignoring case
    assert (a.kind, a.url, a.token, a.timeout, a.callback_secret) == (
        "http", "http://127.0.0.1:8099", "TOKEN", 4.0, b"TOKEN")
    assert "TOKEN" not in repr(a)
    assert ops["Other Net"].token == ""
    assert ops.callback_secrets() == {"OperatorA": b"TOKEN", "Other Net": b""}
    for text, message in (
        ("OperatorA", "write NAME=http:URL@TOKEN"),
        ("OperatorA=http:http://127.0.0.1:8099", "no @TOKEN"),
        ("OperatorA=ftp:ftp://host@T", "unknown interface 'ftp'"),
        ("OperatorA=http:127.0.0.1:8099@T", "not an http(s) URL"),
        ("A=http:http://h@T;a=http:http://g@U", "given twice"),
    ):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_operators(text)


def test_operator_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "operators.toml"
    path.write_text('[operators."Operator A"]\nurl = "http://127.0.0.1:8099"\n'
                    'token = "T"\ntimeout = 2.5\ncallback_secret = "S"\n')
    settings = load_settings(environ={"IVR_REVALUE_OPERATORS": str(path)})
    ops = operators_from_settings(settings)
    a = ops["operator a"]
    assert (a.url, a.token, a.timeout, a.callback_secret) == (
        "http://127.0.0.1:8099", "T", 2.5, b"S")
    path.write_text('[operators.A]\nurl = "http://h"\ntimout = 3\n')
    with pytest.raises(ConfigError, match=r"\[operators.'A'\]: unknown key 'timout'"):
        load_operators_file(path)
    path.write_text('[operators.A]\ntoken = "T"\n')
    with pytest.raises(ConfigError, match="url missing"):
        load_operators_file(path)
    path.write_text('[operators.A\n')
    with pytest.raises(ConfigError, match="operators.toml"):
        load_operators_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_operators_file(tmp_path / "missing.toml")
    assert len(operators_from_settings(load_settings(environ={}))) == 0


def test_callback_bind_is_loopback_only() -> None:
    assert parse_bind("127.0.0.1:8091", "x", loopback_only=True) == ("127.0.0.1", 8091)
    assert parse_bind("[::1]:8091", "x", loopback_only=True) == ("::1", 8091)
    with pytest.raises(ConfigError, match="not a loopback address"):
        parse_bind("0.0.0.0:8091", "revalue_callback_bind", loopback_only=True)
    with pytest.raises(ConfigError, match="is not host:port"):
        parse_bind("8091", "revalue_callback_bind")
    with pytest.raises(ConfigError, match="revalue_timeout"):
        load_settings(environ={"IVR_REVALUE_TIMEOUT": "0"})


def test_behaviour_specs() -> None:
    assert Behaviour.parse("approve") == Behaviour("approve", 0)
    assert Behaviour.parse("Delay:250") == Behaviour("delay", 250)
    assert Behaviour.parse("reverse") == Behaviour("reverse", 100)
    for bad in ("slow", "delay:abc", "delay:-5"):
        with pytest.raises(ValueError):
            Behaviour.parse(bad)
    with pytest.raises(ValueError, match="E.164"):
        RechargeRequest("rv-1", "555", OPERATOR, Decimal(1), "USD")
    with pytest.raises(ValueError, match="request_id"):
        RechargeRequest("rv 1/2", ALICE, OPERATOR, Decimal(1), "USD")
    with pytest.raises(ValueError, match="amount"):
        RechargeRequest("rv-1", ALICE, OPERATOR, Decimal(0), "USD")


# --------------------------------------------------------------------------- the command


async def test_operator_sim_command_serves_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # no operator's ivr.toml
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ivr.cli", "operator-sim", "--bind", f"127.0.0.1:{port}",
        "--answer-ms", "0", "--behaviour", "decline", "--token", TOKEN,
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        assert await wait_listening(port, 20.0), "the simulator did not start"
        async with HttpOperatorApi(f"http://127.0.0.1:{port}", TOKEN, timeout=5.0) as api:
            assert (await api.recharge(request())).state is RechargeState.DECLINED
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            raw, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = raw.decode()
    assert proc.returncode == 0, out
    assert f"on http://127.0.0.1:{port} (behaviour decline" in out
    assert "simulated operator stopped" in out
