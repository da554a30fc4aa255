"""The scenarios: each a load, the faults injected during it, and what it expects.

Every scenario runs the same way (:func:`run_scenario`): a fresh system; the load generator
posts for ``seconds`` while the scenario's ``inject`` does its faults on a timeline of the
load; the generator then retries what is not acknowledged yet (as Meta does) for a bounded
time and stops; the harness waits until the system is quiet (bounded); the outcome is counted
from PostgreSQL, fake-meta and the dead-letter topic, and judged. The full and the short
(``--quick``, ``make test``) forms differ only in their :class:`Params`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import aiohttp
import asyncpg

from faults import poison as poison_bodies
from faults.count import Expect, Tally, Verdict, judge
from faults.harness import HOME_NUMBER, Harness, System, log
from faults.load import Load, LoadResult


@dataclass(frozen=True, slots=True)
class Params:
    rate: float  # customer messages per second
    seconds: float  # how long the load lasts
    faults: int = 1  # how many times the fault is injected
    outage_s: float = 0.0  # how long an outage lasts
    retry_for_s: float = 60.0  # how long the generator keeps retrying unacknowledged bodies after the load
    drain_s: float = 180.0  # the bound on waiting for quiet
    burst: int = 1  # messages per conversation
    llm_delay_s: float | None = None  # a fake LLM answering after this many seconds
    media_every: int = 0  # every N-th customer sends an image with a caption (0: text only)


@dataclass
class Injected:
    """What a scenario did, for the report: the faults in words, and notes (counts per fault)."""

    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what the scenario itself saw go wrong
    after_drain: Callable[[System], Awaitable[None]] | None = None  # counts that need the drained system


Inject = Callable[[System, Params, "Timeline", Injected], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str  # one paragraph for FAULTS.md: what it does and what it shows
    inject: Inject
    full: Params
    quick: Params
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    expect: Expect = field(default_factory=Expect)
    # business numbers added beside the environment's one (each its own token); the load writes to all in turn
    numbers: tuple[tuple[str, str], ...] = ()


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    load: str
    faults: str
    tally: Tally | None
    verdict: Verdict
    notes: list[str]
    took_s: float


class Timeline:
    """Moments of the load, as fractions of its duration."""

    def __init__(self, seconds: float) -> None:
        self.t0 = time.monotonic()
        self.seconds = seconds

    async def at(self, fraction: float) -> None:
        delay = self.t0 + fraction * self.seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def _spread(n: int) -> list[float]:
    """``n`` moments spread evenly inside the load."""
    return [(k + 1) / (n + 1) for k in range(n)]


MIN_RUN_S = 2.0  # a restarted worker runs at least this long before the next kill

# --- the faults ----------------------------------------------------------------------------

def _worker_kills(sig: signal.Signals) -> Inject:
    async def inject(system: System, p: Params, tl: Timeline, out: Injected) -> None:
        # Rows turn ambiguous when a restarted worker meets a send its predecessor claimed: the
        # count per kill is the growth from one kill to the next (the last one: to the drained end).
        marks = []
        for k, moment in enumerate(_spread(p.faults)):
            await tl.at(moment)
            await asyncio.sleep(MIN_RUN_S)  # each kill hits a worker that has been handling events
            marks.append(await system.ambiguous_now())
            await system.kill_worker(0, sig)
            await system.start_worker(0)
            log(f"  {sig.name} {k + 1}/{p.faults}: worker restarted and joined")
        out.faults.append(f"{sig.name} of the worker ×{p.faults}, restarted each time")

        async def per_kill(system: System) -> None:
            ends = [*marks[1:], await system.ambiguous_now()]
            counts = [b - a for a, b in zip(marks, ends, strict=True)]
            # Reported, not judged: what a kill catches in flight depends on how loaded the machine is
            # (up to a batch's conversations can be mid-call at once). The verdict asks what matters:
            # none is left unsettled, none was sent twice, every one never sent has a task.
            out.notes.append(f"ambiguous sends per {sig.name}: {', '.join(map(str, counts))} (total {sum(counts)})")

        out.after_drain = per_kill
    return inject


async def _postgres_stop(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    for moment in _spread(p.faults):
        await tl.at(moment)
        log("  PostgreSQL: fast shutdown")
        await system.postgres_stop()
        await asyncio.sleep(p.outage_s)
        await system.postgres_start()
        log(f"  PostgreSQL: started again after {p.outage_s:.0f}s")
    out.faults.append(f"PostgreSQL stopped for {p.outage_s:.0f}s ×{p.faults}")


async def _postgres_crash(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    for moment in _spread(p.faults):
        await tl.at(moment)
        log("  PostgreSQL: kill -9 of the postmaster and every backend")
        await system.postgres_crash()
        await asyncio.sleep(p.outage_s)
        await system.postgres_start()
        log("  PostgreSQL: recovered and accepting")
    out.faults.append(f"PostgreSQL killed (-9, all connections) ×{p.faults}, restarted after {p.outage_s:.0f}s")


async def _broker_pause(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    for moment in _spread(p.faults):
        await tl.at(moment)
        log("  broker: SIGSTOP")
        system.broker_pause()
        try:
            await asyncio.sleep(p.outage_s)
        finally:
            system.broker_resume()
        log(f"  broker: SIGCONT after {p.outage_s:.0f}s")
    out.faults.append(f"broker SIGSTOP for {p.outage_s:.0f}s ×{p.faults}")


async def _graph_timeout(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    timeout_s = float(system.extra_env["GRAPH_TIMEOUT_SECONDS"])
    delay_ms = int(timeout_s * 1000 * 2.5)
    count = max(3, int(p.rate))  # about a second's worth of sends
    for moment in _spread(p.faults):
        await tl.at(moment)
        await system.meta("/__script", [{"delay_ms": delay_ms}] * count)
        log(f"  Graph API: the next {count} sends taken but answered after {delay_ms} ms")
    out.faults.append(f"{count * p.faults} sends taken, answered after {delay_ms / 1000:g}s "
                      f"(GRAPH_TIMEOUT_SECONDS={timeout_s:g})")


async def _graph_storm(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    count = max(5, int(p.rate * 2))  # about two seconds' worth of sends
    kinds = [(130429, 429, "429 (130429)"), (131000, 500, "500 (131000)")]
    moments = _spread(2 * p.faults)
    for k, moment in enumerate(moments):
        code, status, label = kinds[k % 2]
        await tl.at(moment)
        await system.meta("/__fail", {"count": count, "code": code, "http_status": status})
        log(f"  Graph API: the next {count} sends answered {label}")
    out.faults.append(f"{count * p.faults} sends answered 429 (130429) and {count * p.faults} answered 500 (131000)")


async def _slow_llm(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    out.faults.append(f"LLM answers after {p.llm_delay_s:g}s; bursts of {p.burst} messages "
                      f"within the {system.extra_env['BURST_WINDOW_SECONDS']}s burst window")


async def _replay(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    await tl.at(0.5)
    group = f"{system.group}-replay"
    await system.start_worker(1, group=group)
    log(f"  a second worker in the new group {group} reads every topic from offset 0")
    out.faults.append("every topic replayed from offset 0 by a new consumer group mid-load")


async def _poison(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    cases = poison_bodies.cases(system.secret)
    codes: dict[str, int] = {}
    for moment, case in zip(_spread(len(cases)), cases, strict=True):
        await tl.at(moment)
        codes[case.name] = status = await poison_bodies.post(system.port, case)
        log(f"  poison {case.name}: {status}")
        if status not in case.allowed:
            out.problems.append(f"poison {case.name} answered {status}")
    out.faults.append(f"{len(cases)} poison requests: " + ", ".join(c.name for c in cases))
    out.notes.append("poison answers: " + ", ".join(f"{k} {v}" for k, v in codes.items()))
    taken = [c for c in cases if c.message_id and codes[c.name] == 200]

    async def kept(system: System) -> None:
        """A poison message the webhook took must end stored or dead-lettered, never silently gone."""
        stored = await system.stored([c.message_id for c in taken if c.message_id])
        for c in taken:
            if c.message_id not in stored and not system.letters:
                out.problems.append(f"poison {c.name} taken (200) but neither stored nor dead-lettered")

    out.after_drain = kept


async def _rebalance(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    for k in range(p.faults):
        await tl.at((3 * k + 1) / (3 * p.faults + 1))
        await system.start_worker(2)
        log("  a third worker joins the group")
        await tl.at((3 * k + 2) / (3 * p.faults + 1))
        await system.kill_worker(2, signal.SIGTERM)
        log("  the third worker leaves (SIGTERM)")
    out.faults.append(f"two workers; a third joins and leaves mid-load ×{p.faults}")


SECOND_NUMBER = ("200000000000002", "15550001112")


async def _token_revoked(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    """Meta revokes the second number's token mid-load; an operator gives it a new one later."""
    number, new_token = SECOND_NUMBER[0], f"faults-renewed-{time.monotonic_ns()}"
    await tl.at(0.25)
    revoked_at = time.time()
    await system.meta("/__tokens", {"phone_number_id": number, "token": new_token})
    log(f"  Meta revoked the token of {number}")
    await tl.at(0.25 + 0.4)
    state = await system.number_state(number)
    await system.add_number(number, new_token)
    restored_at = time.time()
    log(f"  wacrm numbers add {number} with a new token after {restored_at - revoked_at:.0f}s (it was {state})")
    out.faults.append(f"the token of {number} revoked for {restored_at - revoked_at:.0f}s (Meta: 401, code 190), "
                      "then a new one given with `wacrm numbers add`")
    if state != "token_rejected":
        out.problems.append(f"{number} was {state}, not token_rejected, while Meta refused its token")

    async def other_number(system: System) -> None:
        """The other number went on while this one waited; only this one's sends were refused."""
        sent = await system.sent()
        refused = [x for x in sent if (x.get("answered") or {}).get("error") == 190]
        meanwhile = [x for x in sent if x["phone_number_id"] != number and "id" in (x.get("answered") or {})
                     and revoked_at <= x["received_at"] <= restored_at]
        out.notes.append(f"{len(refused)} sends from {number} refused (401) while its token was revoked; "
                         f"{len(meanwhile)} replies from the other number went out meanwhile")
        if any(x["phone_number_id"] != number for x in refused):
            out.problems.append("a send from the other number was refused")
        if not meanwhile:
            out.problems.append("the other number sent nothing while this one waited for its token")

    out.after_drain = other_number


async def _media_store_away(system: System, p: Params, tl: Timeline, out: Injected) -> None:
    await tl.at(0.25)
    system.media_store_away()
    log(f"  media store: the directory cannot be written for {p.outage_s:.0f}s")
    outage = time.time()
    try:
        await asyncio.sleep(p.outage_s)
    finally:
        system.media_store_back()
    log("  media store: writable again")
    out.faults.append(f"media directory not writable for {p.outage_s:.0f}s")

    async def media_counted(system: System) -> None:
        """Every image stored once, none lost or failed; captions answered while the store was away."""
        conn = await asyncpg.connect(system.database_url)
        try:
            deadline = time.monotonic() + MEDIA_DRAIN_S  # the drain waits for replies; downloads may lag behind
            while time.monotonic() < deadline:
                if not await conn.fetchval("SELECT count(*) FROM media WHERE state IN ('pending', 'downloading')"):
                    break
                await asyncio.sleep(1)
            images = await conn.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound' "
                                         "AND type = 'image'")
            states = dict(await conn.fetch("SELECT state, count(*) FROM media GROUP BY state"))
            rows = await conn.fetchval("SELECT count(*) FROM media")
            files = await conn.fetchval("SELECT count(DISTINCT sha256) FROM media WHERE state = 'stored'")
            # a caption's reply: the ledger row answering the image message, sent (its outbound message)
            delays = [r[0] for r in await conn.fetch(
                """SELECT extract(epoch FROM r.created_at - m.created_at)::float8 FROM messages m
                   JOIN outbound_log o ON o.intent ->> 'reply_to' = m.provider_message_id
                   JOIN messages r ON r.outbound_log_id = o.id
                   WHERE m.type = 'image' AND m.created_at BETWEEN to_timestamp($1) AND to_timestamp($2)
                   ORDER BY 1""", outage, outage + p.outage_s)]
        finally:
            await conn.close()
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{system.fake_meta}/__media") as r:
                fetched = await r.json()
            async with s.get(f"http://127.0.0.1:{system.metrics_port}/metrics") as r:
                failures = sum(float(line.split()[-1]) for line in (await r.text()).splitlines()
                               if line.startswith("wacrm_media_store_failures_total{"))
        out.notes.append(f"media store failures the worker met (each retried in place): {failures:.0f}")
        if not failures:
            out.problems.append("the worker never met the media store's outage: the scenario proved nothing")
        downloads = sum(f["downloads"] for f in fetched)
        out.notes.append(f"media: {images} image messages, {rows} media rows, states {dict(states)}, "
                         f"{files} files kept, {downloads} downloads of {len(fetched)} files registered")
        if delays:
            out.notes.append(f"captions written while the store was away: {len(delays)}, answered in "
                             f"{delays[len(delays) // 2]:.2f}s (median), {delays[-1]:.2f}s at most")
        if rows != images or states.get("stored", 0) != images:
            out.problems.append(f"{images} images but {states.get('stored', 0)} stored of {rows} media rows")
        if files != states.get("stored", 0):
            out.problems.append(f"{states.get('stored', 0)} stored media but {files} distinct files")
        if downloads < files:
            out.problems.append(f"{files} files kept from only {downloads} downloads")
        if delays and delays[-1] > CAPTION_ON_TIME_S:
            out.problems.append(f"a caption waited {delays[-1]:.1f}s for its reply while the store was away")

    out.after_drain = media_counted


CAPTION_ON_TIME_S = 10.0  # a caption's reply while the media store is away: as fast as a text's, within this
MEDIA_DRAIN_S = 120.0  # the bound on waiting for downloads still pending once the messages are drained


# --- the catalogue -------------------------------------------------------------------------

# A restart takes the worker 10-15 s (stop, join, the broker's rebalance delay): ten of them need
# about two minutes of load; with 80 sends/s the kill9 backlog then takes minutes to send.
_KILLS_FULL = Params(rate=300, seconds=120, faults=10, retry_for_s=120, drain_s=900)
_KILLS_QUICK = Params(rate=20, seconds=16, faults=2, drain_s=180)
_OUTAGE_FULL = Params(rate=200, seconds=75, faults=1, outage_s=30, retry_for_s=120, drain_s=300)
_OUTAGE_QUICK = Params(rate=15, seconds=14, faults=1, outage_s=6, drain_s=180)
_PLAIN_FULL = Params(rate=200, seconds=60, faults=1, drain_s=300)
_PLAIN_QUICK = Params(rate=15, seconds=12, faults=1, drain_s=180)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("sigterm", "The worker is stopped gracefully (SIGTERM) and started again, ten times under "
             "300 messages/s. A stop must finish or leave unacked the batch in hand: nothing lost, nothing "
             "sent twice.", _worker_kills(signal.SIGTERM), _KILLS_FULL, _KILLS_QUICK),
    Scenario("kill9", "The worker is killed (-9) and started again, ten times under 300 messages/s, with "
             "Meta's default 80 sends/s per number so that sends queue. Only requests in flight at a kill may "
             "become ambiguous (counted per kill); each must be settled by a status or become a task.",
             _worker_kills(signal.SIGKILL), _KILLS_FULL, _KILLS_QUICK, env={"RATE_LIMIT_PER_SECOND": "80"}),
    Scenario("postgres_stop", "PostgreSQL is shut down (fast shutdown) for 30 s under load, then started. "
             "The webhook keeps accepting (the bus holds the bodies); the worker waits and catches up.",
             _postgres_stop, _OUTAGE_FULL, _OUTAGE_QUICK),
    Scenario("postgres_crash", "PostgreSQL's postmaster and every backend are killed (-9): every connection "
             "drops mid-transaction and nothing is checkpointed; it is started again (crash recovery).",
             _postgres_crash, replace(_OUTAGE_FULL, outage_s=2), replace(_OUTAGE_QUICK, outage_s=1)),
    Scenario("broker_pause", "The broker is frozen (SIGSTOP) for 30 s, then continued: the webhook answers "
             "503 and the generator retries as Meta does; the worker's session times out and rejoins.",
             _broker_pause, _OUTAGE_FULL, _OUTAGE_QUICK),
    Scenario("graph_timeout", "The Graph API takes a stretch of sends but answers after 2.5× "
             "GRAPH_TIMEOUT_SECONDS. Meta sent those messages: resending one blindly answers a customer twice.",
             _graph_timeout, _PLAIN_FULL, _PLAIN_QUICK, env={"GRAPH_TIMEOUT_SECONDS": "1"}),
    Scenario("graph_storm", "The Graph API answers a storm of rate-limit errors (HTTP 429, code 130429) "
             "and then of server errors (HTTP 500, code 131000): every reply must still go out once.",
             _graph_storm, _PLAIN_FULL, _PLAIN_QUICK),
    Scenario("slow_llm", "An LLM that takes 3 s per answer while customers write bursts of three messages "
             "0.3 s apart (inside the 2 s burst window): every burst must get exactly one reply.",
             _slow_llm, Params(rate=30, seconds=60, burst=3, llm_delay_s=3, drain_s=300),
             Params(rate=12, seconds=12, burst=3, llm_delay_s=3, drain_s=180), env={"BURST_WINDOW_SECONDS": "2"}),
    Scenario("replay", "Halfway through the load a worker in a new consumer group reads every topic from "
             "offset 0 against the same database: nothing may be stored or sent twice.",
             _replay, _PLAIN_FULL, _PLAIN_QUICK),
    Scenario("poison", "Poison mixed into normal traffic: a 1.5 MB text message (under the 4 MiB body limit), "
             "deeply nested JSON, invalid UTF-8, truncated JSON, an oversized body, fuzzed signatures "
             "(wrong, non-ASCII, duplicated, wrong scheme, missing) and fuzzed headers (non-Latin-1 bytes, a "
             "gzip Content-Encoding on a plain body). Normal messages are all stored and answered once; an "
             "unsigned request is refused (401/403); other poison gets a 4xx, or is taken and then stored "
             "or dead-lettered; never a 500.",
             _poison, _PLAIN_FULL, _PLAIN_QUICK, expect=Expect(no_dead_letters=False)),
    Scenario("media_store", "Every other customer sends an image with a caption; the media store (the "
             "directory) cannot be written for 20 s mid-load. Captions are answered as texts are, the downloads "
             "wait and retry: afterwards every image is stored once, none failed or lost.",
             _media_store_away, Params(rate=100, seconds=75, outage_s=20, media_every=2, retry_for_s=120,
                                       drain_s=300),
             Params(rate=10, seconds=30, outage_s=20, media_every=2, drain_s=180)),
    Scenario("rebalance", "Two workers share the partitions; a third joins mid-load and leaves again "
             "(two rebalances): nothing lost or doubled.",
             _rebalance, _PLAIN_FULL, _PLAIN_QUICK, workers=2),
    Scenario("token_revoked", "Two business numbers, each with its own token, share the load; Meta revokes "
             "one number's token a quarter into it (401, code 190) and an operator gives it a new one "
             "(`wacrm numbers add`) 40 % later. That number's replies wait, kept (not failed, not "
             "dead-lettered), and go out once each with the new token; the other number's go on meanwhile.",
             _token_revoked, _PLAIN_FULL, _PLAIN_QUICK, numbers=(SECOND_NUMBER,)),
)
BY_NAME = {s.name: s for s in SCENARIOS}


def _load_text(p: Params) -> str:
    text = f"{p.rate:g} msg/s × {p.seconds:g} s"
    return text + (f" (bursts of {p.burst})" if p.burst > 1 else "")


async def run_scenario(harness: Harness, scenario: Scenario, *, quick: bool) -> Row:
    """Run one scenario on a fresh system and count it; a harness failure becomes a failed row
    that names it (the run goes on with the next scenario)."""
    p = scenario.quick if quick else scenario.full
    started = time.monotonic()
    log(f"{scenario.name}: starting a fresh system ({_load_text(p)})")
    system = await harness.system(scenario.name, scenario.env)
    injected = Injected()
    result: LoadResult | None = None
    numbers = (HOME_NUMBER, *scenario.numbers) if scenario.numbers else ()
    load = Load(system.webhook, system.secret, p.rate, tag=scenario.name, burst=p.burst, numbers=numbers,
                media_every=p.media_every, fake_meta=system.fake_meta)
    try:
        await system.start(workers=scenario.workers, llm_delay_s=p.llm_delay_s, numbers=scenario.numbers)
        tl = Timeline(p.seconds)
        log(f"{scenario.name}: load running, faults on the way")
        posting = asyncio.ensure_future(load.run(p.seconds))
        try:
            await scenario.inject(system, p, tl, injected)
            await posting
        finally:
            posting.cancel()
        log(f"{scenario.name}: load done; retrying unacknowledged bodies for up to {p.retry_for_s:.0f}s")
        result = await load.finish(p.retry_for_s)
        log(f"{scenario.name}: {result.posted} messages posted ({result.retries} retries, {result.gave_up} "
            f"given up, answers {dict(result.codes)}); draining (up to {p.drain_s:.0f}s)")
        took = await system.drain(result.units, p.drain_s)
        log(f"{scenario.name}: quiet after {took:.0f}s; counting")
        tally = await system.count(result.units)
        if injected.after_drain is not None:
            await injected.after_drain(system)
        if system.letters:
            injected.notes.append("dead letters: " + ", ".join(f"{k} ×{n}" for k, n in system.letters.items()))
        stuck = await system.in_flight()
        if stuck:
            injected.notes.append("ledger rows left in flight: " + ", ".join(f"{k} {v}" for k, v in stuck.items()))
        lag = await system.lag()
        if lag is not None:
            injected.notes.append("consumer lag left: " + ", ".join(f"{k} {v}" for k, v in lag.items()))
    except Exception as exc:  # a harness failure: reported in the row, the run goes on
        log(f"{scenario.name}: HARNESS ERROR {type(exc).__name__}: {exc} (logs in {system.logs})")
        return Row(scenario.name, _load_text(p), "; ".join(injected.faults) or "-", None,
                   Verdict(False, (f"harness error: {type(exc).__name__}: {exc}",)), injected.notes,
                   time.monotonic() - started)
    finally:
        await load.close()
        await system.stop()
    notes = list(injected.notes)
    if result.gave_up:
        notes.append(f"{result.gave_up} messages never acknowledged (not counted as posted)")
    verdict = judge(tally, scenario.expect, server_errors=result.server_errors, problems=injected.problems)
    log(f"{scenario.name}: {verdict}  posted {tally.posted}, stored {tally.stored}, once {tally.answered_once}, "
        f"twice {tally.answered_twice}, unanswered {tally.unanswered}, dead letters {tally.dead_lettered}")
    return Row(scenario.name, _load_text(p), "; ".join(injected.faults), tally, verdict, notes,
               time.monotonic() - started)
