"""The conversation list: a page of conversations under the list's filters (status, owner, search,
waiting, number), newest activity first, and the counts beside it. Like :mod:`inbox.store`,
functions run inside the caller's transaction.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from wacrm.inbox import store
from wacrm.inbox.store import STATUSES
from wacrm.storage import waiting

PER_PAGE = 50


@dataclass(frozen=True, slots=True)
class ListQuery:
    status: str  # one of STATUSES or "all"
    assignee: str  # me | unassigned | all
    q: str | None
    page: int
    deleted: bool = False
    waiting: bool = False  # only the conversations waiting for a person, the longest wait first
    number: str | None = None  # only the conversations of this business number (phone_number_id)


async def list_conversations(conn: asyncpg.Connection, query: ListQuery, me: int,
                             counts: CountsCache | None = None,
                             stamp: int | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A page of conversations, newest activity first (``waiting``: the longest wait first), each
    with its ``waiting`` (or null), and the counts per status, mine, unassigned (from ``counts``
    while ``stamp`` says nothing changed since they were read) and waiting."""
    sql, args = list_sql(query, me)
    rows = await conn.fetch(sql, *args)
    groups = await (counts.groups(lambda: count_groups(conn, query.deleted), query.deleted, stamp)
                    if counts is not None else count_groups(conn, query.deleted))
    waits = await waiting.waits(conn, [r["id"] for r in rows])
    items = [{**store.conversation_json(r), "waiting": waits.get(r["id"])} for r in rows]
    return items, {**list_counts(groups, me), "waiting": await waiting.count(conn, query.deleted)}


async def count_groups(conn: asyncpg.Connection, deleted: bool) -> list[tuple[str, int | None, int]]:
    """Conversations per (status, owner): one grouped read from the index conversations_inbox_counts
    (migration 0012)."""
    rows = await conn.fetch(
        "SELECT inbox_status, assigned_user_id, count(*) n FROM conversations WHERE deleted_at "
        + ("IS NOT NULL" if deleted else "IS NULL") + " GROUP BY 1, 2")
    return [(r["inbox_status"], r["assigned_user_id"], r["n"]) for r in rows]


class CountsCache:
    """The count groups, reused while nothing in the inbox changed: groups read under a stamp of the
    live-event hub (:meth:`inbox.events.Hub.stamp`, which moves with every inbox event, so with every
    change to a conversation) serve until it moves. No stamp (the hub is not listening): counted
    afresh each time."""

    def __init__(self) -> None:
        self._stamp: int | None = None
        self._groups: dict[bool, asyncio.Future[list[tuple[str, int | None, int]]]] = {}

    async def groups(self, count: Callable[[], Awaitable[list[tuple[str, int | None, int]]]], deleted: bool,
                     stamp: int | None) -> list[tuple[str, int | None, int]]:
        """The groups read under ``stamp`` (taken before the count began, so a change during the
        count leaves them already out of date); one count at a time per stamp: the lists that ask
        meanwhile wait for it instead of counting too."""
        if stamp is None:
            return await count()
        if stamp != self._stamp:
            self._stamp, self._groups = stamp, {}
        pending = self._groups.get(deleted)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[list[tuple[str, int | None, int]]] = asyncio.get_running_loop().create_future()
        self._groups[deleted] = future
        try:
            future.set_result(await count())
        except BaseException as exc:  # the lists waiting get the failure; the next list counts again
            if self._groups.get(deleted) is future:
                del self._groups[deleted]
            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("the count was cancelled"))
            future.exception()  # retrieved
            raise
        return future.result()


def list_sql(query: ListQuery, me: int) -> tuple[str, list[Any]]:
    """The list's statement, with a condition only for each filter given: one statement per
    combination of filters (a handful), each with a plan of its own that can use the index made
    for it (migration 0012). One statement with ``$n IS NULL OR …`` for every filter gets a
    generic plan that sorts every conversation (PostgreSQL picks it after five runs)."""
    where = ["c.deleted_at IS NOT NULL" if query.deleted else "c.deleted_at IS NULL"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.status != "all":
        where.append(f"c.inbox_status = {arg(query.status)}")
    if query.assignee == "me":
        where.append(f"c.assigned_user_id = {arg(me)}")
    elif query.assignee == "unassigned":
        where.append("c.assigned_user_id IS NULL")
    if query.q and query.q.strip():
        where.append(_search(query.q.strip(), arg))
    if query.waiting:
        where.append(waiting.FILTER)
    if query.number is not None:
        where.append(f"c.phone_number_id = {arg(query.number)}")
    order = waiting.ORDER if query.waiting else "c.last_message_at DESC NULLS LAST, c.id DESC"
    sql = (f"{store.SELECT}\n    WHERE {' AND '.join(where)}\n    ORDER BY {order} "
           f"LIMIT {arg(PER_PAGE)} OFFSET {arg((query.page - 1) * PER_PAGE)}")
    return sql, args


#: What a phone number typed any way looks like: digits with spaces, dots, dashes, brackets, a leading +.
_PHONE = re.compile(r"\+?[\d\s().\-]*\d[\d\s().\-]*")
#: A message's text is searched from this many characters: shorter, a trigram index cannot help.
MESSAGE_SEARCH_MIN = 3


def like_pattern(text: str) -> str:
    """``text`` matched anywhere by LIKE/ILIKE, its ``%``, ``_`` and ``\\`` taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _search(q: str, arg: Callable[[Any], str]) -> str:
    """The list's ``q``: the contact's name (any case), user id or phone number (typed in any format:
    ``+1 999 000 0001`` finds ``19990000001``), or the text of one of the conversation's messages
    (from :data:`MESSAGE_SEARCH_MIN` characters). From that length each branch uses its trigram index
    (migrations 0013 and 0018) and the matches are fetched by id (``= ANY (ARRAY(…))``: joins or
    ``OR``ed subqueries make PostgreSQL scan every conversation); shorter, no trigram helps, and the
    contact's fields are filtered while the list is read in its order."""
    like = arg(like_pattern(q))
    contact = [f"profile_name ILIKE {like}", f"user_id LIKE {like}"]
    if _PHONE.fullmatch(q):
        contact.append(f"wa_id LIKE {arg(like_pattern(re.sub(r'[^0-9]', '', q)))}")
    if len(q) < MESSAGE_SEARCH_MIN:
        return "(" + " OR ".join(f"k.{c}" for c in contact) + ")"
    found = [f"SELECT s.id FROM conversations s WHERE s.contact_id = ANY "
             f"(ARRAY(SELECT id FROM contacts WHERE {' OR '.join(contact)}))",
             f"SELECT m.conversation_id FROM messages m WHERE m.body ILIKE {like}"]
    return f"c.id = ANY (ARRAY({' UNION '.join(found)}))"


def list_counts(groups: list[tuple[str, int | None, int]], me: int) -> dict[str, int]:
    """The list's ``meta.counts`` from counts per (status, owner): per status, all, mine, unassigned."""
    counts = dict.fromkeys((*STATUSES, "all", "mine", "unassigned"), 0)
    for status, owner, n in groups:
        counts[status] += n
        counts["all"] += n
        if owner is None:
            counts["unassigned"] += n
        elif owner == me:
            counts["mine"] += n
    return counts
