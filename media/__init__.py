"""The media store: a customer's files, content-addressed by their SHA-256.

Two backends behind one interface (:class:`media.store.MediaStore`): a directory (``MEDIA_DIR``,
the default) and an S3-compatible bucket (``MEDIA_S3_BUCKET``, ``MEDIA_S3_ENDPOINT_URL`` and the
usual ``AWS_*`` credential variables, through aiobotocore). :func:`open_store` opens the one the
settings name; its owner closes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from wacrm.core.settings import Settings
from wacrm.media.directory import DirectoryStore
from wacrm.media.s3 import S3Store
from wacrm.media.store import ChecksumMismatch, MediaStore, StoreUnavailable

__all__ = ["ChecksumMismatch", "DirectoryStore", "MediaStore", "S3Store", "StoreUnavailable", "open_store"]


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[MediaStore]:
    """The store the settings name: the bucket when ``MEDIA_S3_BUCKET`` is set, else the directory."""
    if settings.media_s3_bucket:
        async with S3Store.open(settings.media_s3_bucket, endpoint_url=settings.media_s3_endpoint_url,
                                region=settings.media_s3_region, timeout=settings.graph_timeout_s) as store:
            yield store
    else:
        yield DirectoryStore(settings.media_dir)
