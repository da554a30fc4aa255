"""What a file to send is, told by its bytes: never by its name or the type a browser declared.

:func:`sniff` reads the head of a file (its first :data:`HEAD_BYTES`) and answers the
:class:`FileType` WhatsApp takes it as (its MIME type and the message type it goes as), or
:class:`Unsupported` saying what it is instead. The types are the Cloud API's for sending:

- image: JPEG, PNG; sticker: WebP;
- audio: AAC (ADTS), AMR, MPEG (MP3), MP4 audio, Ogg with Opus;
- video: MP4, 3GPP;
- document: PDF, Office (docx/xlsx/pptx, and the old doc/xls/ppt), plain text and CSV.

Programs are refused whatever their name: ELF, PE (``MZ``), Mach-O, and scripts (``#!``). A file's
name is read for one thing only: which of the old Office formats an OLE container is, when its
head does not say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEAD_BYTES = 64 * 1024  # what sniff needs of a file (all of it when shorter)


@dataclass(frozen=True, slots=True)
class FileType:
    mime_type: str
    kind: str  # the message type it is sent as: image | sticker | audio | video | document
    extension: str  # its usual file name extension, without the dot


@dataclass(frozen=True, slots=True)
class Unsupported:
    what: str  # what the file is, in words ("an executable program (ELF)")


def _t(mime: str, kind: str, ext: str) -> FileType:
    return FileType(mime, kind, ext)


JPEG, PNG, WEBP = _t("image/jpeg", "image", "jpg"), _t("image/png", "image", "png"), _t("image/webp", "sticker", "webp")
AAC, AMR, MP3 = _t("audio/aac", "audio", "aac"), _t("audio/amr", "audio", "amr"), _t("audio/mpeg", "audio", "mp3")
M4A, OPUS = _t("audio/mp4", "audio", "m4a"), _t("audio/ogg", "audio", "ogg")
MP4, GPP = _t("video/mp4", "video", "mp4"), _t("video/3gpp", "video", "3gp")
PDF = _t("application/pdf", "document", "pdf")
DOCX = _t("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "document", "docx")
XLSX = _t("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "document", "xlsx")
PPTX = _t("application/vnd.openxmlformats-officedocument.presentationml.presentation", "document", "pptx")
DOC, XLS = _t("application/msword", "document", "doc"), _t("application/vnd.ms-excel", "document", "xls")
PPT = _t("application/vnd.ms-powerpoint", "document", "ppt")
TEXT, CSV = _t("text/plain", "document", "txt"), _t("text/csv", "document", "csv")
ALL = (JPEG, PNG, WEBP, AAC, AMR, MP3, M4A, OPUS, MP4, GPP, PDF, DOCX, XLSX, PPTX, DOC, XLS, PPT, TEXT, CSV)

_EXECUTABLES = ((b"\x7fELF", "an executable program (ELF)"),
                (b"\xfe\xed\xfa\xce", "an executable program (Mach-O)"),
                (b"\xfe\xed\xfa\xcf", "an executable program (Mach-O)"),
                (b"\xce\xfa\xed\xfe", "an executable program (Mach-O)"),
                (b"\xcf\xfa\xed\xfe", "an executable program (Mach-O)"),
                (b"\xca\xfe\xba\xbe", "an executable program (Mach-O universal or Java class)"))
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OLE_STREAMS = (("WordDocument", DOC), ("Workbook", XLS), ("Book", XLS), ("PowerPoint Document", PPT))
_OLE_BY_NAME = {"doc": DOC, "dot": DOC, "xls": XLS, "xlt": XLS, "ppt": PPT, "pps": PPT, "pot": PPT}
_MP4_AUDIO_BRANDS = frozenset({b"M4A ", b"M4B "})
_MP4_VIDEO_BRANDS = frozenset({b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"mmp4",
                               b"dash", b"MSNV", b"M4V ", b"M4VH", b"M4VP", b"f4v "})
# text: printable, plus tab, line feed, form feed, carriage return and escape
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


def sniff(head: bytes, name: str | None = None) -> FileType | Unsupported:
    """The type of the file whose first bytes are ``head`` (the whole file when it is shorter than
    :data:`HEAD_BYTES`; a longer head is fine). ``name``: only to tell doc/xls/ppt apart."""
    if not head:
        return Unsupported("an empty file")
    for magic, what in _EXECUTABLES:
        if head.startswith(magic):
            return Unsupported(what)
    if head.startswith(b"MZ") and b"\x00" in head[:64]:  # a DOS header; text that starts with "MZ" has no NUL
        return Unsupported("an executable program (Windows PE)")
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head.startswith(b"#!AMR\n"):
        return AMR
    if head.startswith(b"#!"):
        return Unsupported("a script (#!)")
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"OggS"):
        return OPUS if b"OpusHead" in head[:256] else Unsupported("Ogg audio not encoded with Opus")
    if head.startswith(b"ID3"):
        return MP3
    found = _mpeg_frame(head) or _iso_media(head) or _zip(head) or _ole(head, name)
    if found is not None:
        return found
    if b"%PDF-" in head[:1024]:  # readers take a PDF header anywhere in the first kilobyte
        return PDF
    return _text(head)


def _mpeg_frame(head: bytes) -> FileType | Unsupported | None:
    """ADTS (AAC) or an MPEG audio frame header, checked field by field (not just the sync word)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    layer = (head[1] >> 1) & 3
    if layer == 0:  # ADTS: MPEG-4 / MPEG-2 AAC
        return AAC if head[1] & 0xF6 == 0xF0 and (head[2] >> 2) & 0xF < 13 else None
    version, bitrate, rate = (head[1] >> 3) & 3, head[2] >> 4, (head[2] >> 2) & 3
    if version == 1 or bitrate in (0, 15) or rate == 3:
        return None
    return MP3


def _iso_media(head: bytes) -> FileType | Unsupported | None:
    """An ISO base media file (``ftyp`` box): MP4 audio or video, 3GPP; others (QuickTime, HEIC) refused."""
    if head[4:8] != b"ftyp" or len(head) < 12:
        return None
    brand = head[8:12]
    if brand in _MP4_AUDIO_BRANDS:
        return M4A
    if brand[:3] in (b"3gp", b"3g2"):
        return GPP
    if brand in _MP4_VIDEO_BRANDS:
        return MP4
    shown = brand.decode("latin-1").strip() or "?"
    return Unsupported(f"an ISO media file of brand {shown!r} (not MP4 or 3GPP)")


def _zip(head: bytes) -> FileType | Unsupported | None:
    """A zip archive: an Office Open XML file by the parts it holds, else refused."""
    if not head.startswith(b"PK\x03\x04"):
        return None
    for part, kind in ((b"word/", DOCX), (b"xl/", XLSX), (b"ppt/", PPTX)):
        if part in head:
            return kind
    return Unsupported("a zip archive (not a Word, Excel or PowerPoint file)")


def _ole(head: bytes, name: str | None) -> FileType | Unsupported | None:
    """An OLE compound file (Office 97–2003): its kind by the stream names in its directory when they are
    in the head, else by the name's extension."""
    if not head.startswith(_OLE):
        return None
    for stream, kind in _OLE_STREAMS:
        if stream.encode("utf-16-le") + b"\x00\x00" in head:
            return kind
    ext = (name or "").rsplit(".", 1)[-1].lower() if name and "." in name else ""
    return _OLE_BY_NAME.get(ext) or Unsupported("an old Office file of unknown kind (name it .doc, .xls or .ppt)")


def _text(head: bytes) -> FileType | Unsupported:
    """UTF-8 text without control characters: CSV when its lines agree on a number of commas, else plain."""
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    if _CONTROL.search(body):
        return Unsupported("a binary file of a type WhatsApp does not take")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        if len(head) < HEAD_BYTES or exc.start < len(body) - 3:  # only a character cut at the head's end is fine
            return Unsupported("a binary file of a type WhatsApp does not take")
        text = body[:exc.start].decode("utf-8")
    lines = text.splitlines()
    if len(head) >= HEAD_BYTES and lines:
        lines = lines[:-1]  # the last line may be cut
    lines = [line for line in lines[:50] if line.strip()]
    commas = {line.count(",") for line in lines}
    return CSV if len(lines) >= 2 and len(commas) == 1 and commas != {0} else TEXT


def file_name(name: str | None, kind: FileType) -> str:
    """A file name to send: the one given, without any path, control characters or more than 200
    characters, ending in the type's extension (appended when it ends in another); ``file.EXT`` when none."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable()).strip().strip(".")[:200]
    if not base:
        return f"file.{kind.extension}"
    ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    same = {kind.extension, *(k for k, v in _OLE_BY_NAME.items() if v == kind)} | _ALSO.get(kind.extension, set())
    return base if ext in same else f"{base}.{kind.extension}"


_ALSO = {"jpg": {"jpeg", "jpe"}, "txt": {"text", "log", "md"}, "mp4": {"m4v"}, "m4a": {"mp4", "m4b"},
         "ogg": {"opus", "oga"}, "3gp": {"3gpp", "3g2"}, "mp3": {"mpga"}}
