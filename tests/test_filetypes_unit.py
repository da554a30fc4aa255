"""What a file to send is, by its bytes (whatsapp/filetypes.py): every type WhatsApp takes is told
apart from the rest, and programs are refused whatever they are named."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wacrm.whatsapp import filetypes as ft
from wacrm.whatsapp.filetypes import FileType, Unsupported, file_name, sniff


def _zip(*names: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in names:
            z.writestr(name, "<xml/>")
    return out.getvalue()


def _ftyp(brand: bytes) -> bytes:
    return struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x02\x00" + brand + b"mp41" + b"\x00" * 64


def _ole(stream: str) -> bytes:
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504 + stream.encode("utf-16-le") + b"\x00\x00" + b"\x00" * 64


SAMPLES: dict[str, tuple[bytes, FileType]] = {
    "jpeg": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100), ft.JPEG),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100), ft.PNG),
    "webp": (b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(100), ft.WEBP),
    "aac": (b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(100), ft.AAC),
    "amr": (b"#!AMR\n" + bytes(100), ft.AMR),
    "mp3 (ID3)": (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(100), ft.MP3),
    "mp3 (frame)": (b"\xff\xfb\x90\x64" + bytes(100), ft.MP3),
    "m4a": (_ftyp(b"M4A "), ft.M4A),
    "ogg opus": (b"OggS\x00\x02" + bytes(22) + b"OpusHead\x01\x02" + bytes(40), ft.OPUS),
    "mp4": (_ftyp(b"isom"), ft.MP4),
    "3gp": (_ftyp(b"3gp4"), ft.GPP),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj" + bytes(100), ft.PDF),
    "docx": (_zip("[Content_Types].xml", "word/document.xml"), ft.DOCX),
    "xlsx": (_zip("[Content_Types].xml", "xl/workbook.xml"), ft.XLSX),
    "pptx": (_zip("[Content_Types].xml", "ppt/presentation.xml"), ft.PPTX),
    "doc": (_ole("WordDocument"), ft.DOC),
    "xls": (_ole("Workbook"), ft.XLS),
    "ppt": (_ole("PowerPoint Document"), ft.PPT),
    "text": ("Olá! The price list is attached.\nSee you tomorrow.\n".encode(), ft.TEXT),
    "csv": (b"name,price,qty\nshirt,10.00,2\nhat,5.50,1\n", ft.CSV),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_each_type_whatsapp_takes_is_told_by_its_bytes(name: str) -> None:
    data, expected = SAMPLES[name]
    assert sniff(data) == expected
    assert sniff(data, "holiday.jpg") == expected  # the name does not change what the bytes are


REFUSED = {
    "elf": b"\x7fELF\x02\x01\x01\x00" + bytes(200),
    "pe": b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(200),
    "mach-o": b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + bytes(200),
    "shell script": b"#!/bin/sh\nrm -rf /\n",
    "python script": b"#!/usr/bin/env python3\nprint('hi')\n",
    "zip": _zip("notes/readme.txt"),
    "ogg vorbis": b"OggS\x00\x02" + bytes(22) + b"\x01vorbis" + bytes(40),
    "quicktime": _ftyp(b"qt  "),
    "heic": _ftyp(b"heic"),
    "gif": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    "binary": bytes(range(256)) * 4,
    "empty": b"",
}


@pytest.mark.parametrize("name", REFUSED)
def test_programs_archives_and_other_types_are_refused_saying_what_they_are(name: str) -> None:
    found = sniff(REFUSED[name], "photo.jpg")
    assert isinstance(found, Unsupported) and found.what


def test_an_old_office_file_whose_head_does_not_say_is_told_by_its_name_or_refused() -> None:
    bare = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(1000)
    assert sniff(bare, "budget.XLS") == ft.XLS
    assert isinstance(sniff(bare, "budget.jpg"), Unsupported) and isinstance(sniff(bare), Unsupported)


def test_text_that_starts_with_mz_is_text_not_a_program() -> None:
    assert sniff(b"MZ region sales: up 4%\n") == ft.TEXT


def test_a_utf8_character_cut_at_the_end_of_a_full_head_is_still_text() -> None:
    head = ("a" + "é" * ft.HEAD_BYTES).encode()[:ft.HEAD_BYTES]
    assert len(head) == ft.HEAD_BYTES and head[-1:] == b"\xc3"  # the last character cut in half
    assert sniff(head) == ft.TEXT
    assert isinstance(sniff(b"abc\xc3"), Unsupported)  # a whole file ending mid-character is not UTF-8


@given(st.binary(max_size=2048), st.none() | st.text(max_size=30))
@settings(max_examples=400)
def test_any_bytes_get_an_answer_and_never_an_exception(data: bytes, name: str | None) -> None:
    found = sniff(data, name)
    assert isinstance(found, (FileType, Unsupported))
    if isinstance(found, FileType):
        assert found in ft.ALL


EXECUTABLE_MAGIC = [b"\x7fELF", b"MZ\x90\x00", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                    b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"#!/", b"#! "]


@given(st.sampled_from(EXECUTABLE_MAGIC), st.binary(max_size=4096), st.text(max_size=30))
def test_a_program_is_refused_whatever_follows_its_magic_and_whatever_its_name(
        magic: bytes, rest: bytes, name: str) -> None:
    assert isinstance(sniff(magic + rest, name), Unsupported)


@given(st.sampled_from(sorted(SAMPLES)), st.binary(max_size=4096))
def test_what_follows_a_files_header_does_not_change_its_type(name: str, rest: bytes) -> None:
    data, expected = SAMPLES[name]
    if expected in (ft.TEXT, ft.CSV):  # text has no header: random bytes after it may make it binary
        return
    assert sniff(data + rest) == expected


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=2000))
def test_printable_utf8_text_is_a_text_document(text: str) -> None:
    data = text.encode()
    if data.startswith((b"#!", b"%PDF-", b"ID3", b"MZ", b"OggS", b"PK\x03\x04", b"RIFF")) or b"%PDF-" in data:
        return  # text that starts like another type's header is judged by that header
    assert sniff(data) in (ft.TEXT, ft.CSV)


@pytest.mark.parametrize(("given_name", "kind", "sent"), [
    ("report.pdf", ft.PDF, "report.pdf"),
    ("C:\\Users\\ana\\report.PDF", ft.PDF, "report.PDF"),
    ("../../etc/passwd", ft.TEXT, "passwd.txt"),
    ("photo.jpg", ft.PDF, "photo.jpg.pdf"),  # a PDF named .jpg goes as a PDF, and says so
    ("photo.jpeg", ft.JPEG, "photo.jpeg"),
    (None, ft.DOCX, "file.docx"),
    ("\x00\x1b.", ft.CSV, "file.csv"),
    ("old.xls", ft.XLS, "old.xls"),
])
def test_the_name_sent_has_no_path_and_ends_in_the_types_extension(given_name: str | None, kind: FileType,
                                                                   sent: str) -> None:
    assert file_name(given_name, kind) == sent
