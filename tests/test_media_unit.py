"""The pure parts of media: Meta's checksums, the byte ranges and file names the inbox answers with,
Meta's size limits, the bus contract of wa.media and what the ingest agent asks it to download."""

from __future__ import annotations

import base64
import hashlib

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from wacrm.agents.ingest import media_job
from wacrm.inbox.media import byte_range, disposition
from wacrm.topics import MEDIA, catalogue
from wacrm.topics.records import Customer, InboundMessage, MediaJob, RawRef, RecordError, decode_media_job, encode
from wacrm.whatsapp.media import MAX_BYTES, sha256_hex

DIGEST = hashlib.sha256(b"a file").digest()


def test_a_sha256_is_read_as_meta_sends_it_in_the_webhook_and_in_the_media_endpoint() -> None:
    assert sha256_hex(base64.b64encode(DIGEST).decode()) == DIGEST.hex()  # the webhook's base64
    assert sha256_hex(DIGEST.hex().upper()) == DIGEST.hex()  # the media endpoint's hex
    for bad in (None, "", "zz" * 32, "not base64!", base64.b64encode(b"short").decode()):
        assert sha256_hex(bad) is None


def test_metas_limits_per_type() -> None:
    mb = 1024 * 1024
    assert {"image": 5 * mb, "audio": 16 * mb, "video": 16 * mb, "document": 100 * mb,
                         "sticker": 500 * 1024} == MAX_BYTES


@pytest.mark.parametrize(("header", "size", "wanted"), [
    (None, 100, None), ("", 100, None), ("bytes=0-9", 100, (0, 9)), ("bytes=90-", 100, (90, 99)),
    ("bytes=-10", 100, (90, 99)), ("bytes=-500", 100, (0, 99)), ("bytes=50-1000", 100, (50, 99)),
    ("bytes=0-1,5-6", 100, None), ("items=0-9", 100, None), ("bytes=-", 100, None),
])
def test_a_range_header_is_read_as_one_range_or_the_whole_file(header: str | None, size: int,
                                                               wanted: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == wanted


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=9-3", "bytes=-0"])
def test_a_range_past_the_end_is_unsatisfiable(header: str) -> None:
    with pytest.raises(web.HTTPRequestRangeNotSatisfiable) as caught:
        byte_range(header, 100)
    assert caught.value.headers["Content-Range"] == "bytes */100"


@given(st.integers(1, 10_000), st.integers(0, 20_000), st.integers(0, 20_000))
def test_an_answered_range_lies_inside_the_file(size: int, a: int, b: int) -> None:
    try:
        got = byte_range(f"bytes={a}-{b}", size)
    except web.HTTPRequestRangeNotSatisfiable:
        assert a >= size or b < a
        return
    assert got is not None and 0 <= got[0] <= got[1] < size and got[0] == a


def test_a_document_downloads_under_its_name_and_the_rest_show_inline() -> None:
    assert disposition("document", "Preço \"final\".pdf") == (
        "attachment; filename=\"Pre_o _final_.pdf\"; filename*=UTF-8''Pre%C3%A7o%20%22final%22.pdf")
    assert disposition("image", None) == "inline"
    assert disposition("document", None) == "attachment"


def test_wa_media_is_in_the_catalogue_keyed_by_conversation() -> None:
    (spec,) = [t for t in catalogue(4) if t.name == MEDIA]
    assert spec.key == "conversation key" and spec.partitioned


def test_a_media_job_round_trips_and_a_broken_one_is_poison() -> None:
    job = MediaJob("123", "200000000000001:15550002222", "req-1")
    assert decode_media_job(encode(job)) == job
    for bad in (b"{}", b"not json", b'{"media_id": 5, "conversation_key": "k"}'):
        with pytest.raises(RecordError):
            decode_media_job(bad)


def _message(kind: str, content: dict) -> InboundMessage:
    return InboundMessage("k", "200000000000001", None, Customer(wa_id="1555"), "wamid.X", 0, kind, None, {},
                          RawRef("wa.webhook.raw", 0, 0), 0.0, content=content)


def test_only_a_media_message_with_an_id_asks_for_a_download() -> None:
    assert media_job(_message("image", {"media_id": "42"}), "r") == MediaJob("42", "k", "r")
    assert media_job(_message("image", {"media_id": None}), None) is None
    assert media_job(_message("text", {"body": "hi"}), None) is None
    assert media_job(_message("location", {"media_id": "42"}), None) is None
