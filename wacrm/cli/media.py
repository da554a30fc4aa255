"""``wacrm media prune``: media kept past ``MEDIA_RETENTION_DAYS`` leaves the store (:mod:`wacrm.media_cmd`)."""

from __future__ import annotations

import argparse
import asyncio

from wacrm.cli.shared import db_settings
from wacrm.core.exits import CommandError


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    md = sub.add_parser("media", help="the media store: prune media past MEDIA_RETENTION_DAYS (needs DATABASE_URL)",
                        description="prune: media stored more than MEDIA_RETENTION_DAYS days ago becomes expired "
                        "(its messages say so) and the files no message still shows are deleted from the media "
                        "store (MEDIA_DIR or MEDIA_S3_BUCKET). Unset MEDIA_RETENTION_DAYS keeps media forever.")
    msub = md.add_subparsers(dest="media_command", required=True)
    mp = msub.add_parser("prune", help="expire media past MEDIA_RETENTION_DAYS and delete its files",
                         description="Media stored more than MEDIA_RETENTION_DAYS days ago becomes expired (its "
                         "messages say so) and every file no stored message still shows is deleted from the "
                         "media store. With MEDIA_RETENTION_DAYS unset, media is kept forever and nothing is "
                         "pruned. Run it daily (cron, a Kubernetes CronJob).")
    mp.add_argument("--dry-run", action="store_true", help="say what would be expired and deleted, change nothing")
    md.set_defaults(func=cmd_media)


def cmd_media(args: argparse.Namespace) -> int:
    from wacrm import media_cmd

    s = db_settings()
    if s.media_retention_days is None:
        print("MEDIA_RETENTION_DAYS is not set: media is kept forever, nothing to prune")
        return 0
    try:
        asyncio.run(media_cmd.prune(s, dry_run=args.dry_run))
    except media_cmd.PruneError as exc:
        raise CommandError(str(exc)) from None
    return 0

