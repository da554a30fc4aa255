"""``wacrm users``: the people who sign in to the inbox, and their API tokens."""

from __future__ import annotations

import argparse
import asyncio
import sys

from wacrm.cli.shared import db_settings, direct_session, schema_checked
from wacrm.core.exits import EXIT_CONFIG, CommandError
from wacrm.core.settings import Settings


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    us = sub.add_parser("users", help="people who sign in to the inbox (needs DATABASE_URL)",
                        description="Adds, lists and issues API tokens for the people of the inbox. Roles: "
                        "admin (also deletes and restores conversations) and agent.")
    usub = us.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    ua = usub.add_parser("add", help="add a user; the password is read from standard input, or generated and "
                         "printed once", description="Adds a person who signs in to the inbox. The password is "
                         "read from standard input when one is piped in; otherwise one is generated and printed "
                         "once (it is stored only as an argon2id hash).")
    ua.add_argument("email", help="the address they sign in with")
    ua.add_argument("--role", choices=("admin", "agent"), default="agent",
                    help="agent (default) or admin (also deletes and restores conversations)")
    ua.add_argument("--name", default=None, help="the name shown in the inbox (default: the email's local part)")
    ut = usub.add_parser("token", help="print a new API token for the user (Authorization: Bearer …)",
                         description="Prints a new API token for scripts (sent as Authorization: Bearer TOKEN); "
                         "stored hashed, shown once. --revoke revokes every token of the user instead.")
    ut.add_argument("email", help="the user the token acts as")
    ut.add_argument("--revoke", action="store_true", help="revoke every token of the user instead")
    usub.add_parser("list", help="list users", description="Lists the users: email, role, name, and whether "
                    "they are disabled.")
    us.set_defaults(func=cmd_users)


async def _users(args: argparse.Namespace, s: Settings, password: str | None) -> None:
    import asyncpg

    from wacrm.inbox import auth

    conn = await direct_session(s)
    try:
        if args.users_command == "add":
            generated = password is None
            secret = password if password is not None else auth.generate_password()
            try:
                user = await auth.add_user(conn, args.email, args.role, await auth.hash_password_async(secret),
                                           args.name)
            except asyncpg.UniqueViolationError:
                raise CommandError(f"a user with the email {auth.normalize_email(args.email)} exists already") \
                    from None
            print(f"added {user.role} {user.email} (id {user.id})")
            if generated:
                print(f"password (shown once): {secret}")
        elif args.users_command == "token":
            found = await auth.find_user(conn, args.email)
            if found is None:
                raise CommandError(f"no user with the email {auth.normalize_email(args.email)}")
            if args.revoke:
                print(f"revoked {await auth.revoke_tokens(conn, found[0].id)} token(s) of {found[0].email}")
            else:
                print(await auth.issue_token(conn, found[0].id))
        else:
            rows = await auth.list_users(conn)
            if not rows:
                print("no users yet: wacrm users add EMAIL --role admin")
            for r in rows:
                state = " disabled" if r["disabled_at"] else ""
                print(f"{r['id']:>5}  {r['role']:<6} {r['email']:<40} tokens: {r['tokens']}{state}")
    finally:
        await conn.close()


def cmd_users(args: argparse.Namespace) -> int:
    s = db_settings()
    password = None
    if args.users_command == "add" and not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n") or None
        if password is not None and len(password) < 8:
            raise CommandError("the password on standard input must have at least 8 characters", EXIT_CONFIG)
    with schema_checked():
        asyncio.run(_users(args, s, password))
    return 0

