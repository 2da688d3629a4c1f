"""Recording archives shipped by BBB servers: checked as hostile input, then moved into storage in one step.

An archive is a tar (optionally gzip-compressed) of one recording as BBB publishes it: members under
``<format>/<recordID>/``, each format with its ``metadata.xml``. Everything here is blocking file work:
callers run it in a thread (``asyncio.to_thread``), never on the event loop.

Storage layout: ``<storage>/<recordID>/<format>/...``, so a whole recording appears or goes with one
rename. Nothing is extracted in place: members are written under ``<storage>/.incoming/<random>/`` and
the directory is renamed in once every check has passed; a refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lb_core import bbbxml

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_MEMBERS = 100_000
INCOMING = ".incoming"
TRASH = ".trash"
DELETED = ".deleted"
UNPUBLISHED = ".unpublished"
# Each read and write of a member is one system call the kernel runs to its end (PREEMPT_NONE, the usual
# server kernel): with 1 MiB ones, the API process woken on the same core waited up to a millisecond for
# the import worker, whatever its priority (join p99 +30..70 % during imports). 64 KiB ones end in ~20 us.
COPY_CHUNK = 64 * 1024


class ArchiveRefused(Exception):
    """An archive that is not imported; the message says why, for the uploader."""


@dataclass(slots=True)
class Imported:
    record_id: str
    formats: list[str]
    doc: dict[str, Any]
    replaced: bool = False
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def _member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    name = member.name
    if "\\" in name or "\x00" in name:
        raise ArchiveRefused(f"member {name[:200]!r}: backslashes and NUL are not allowed in names")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise ArchiveRefused(f"member {name[:200]!r}: absolute paths are not allowed")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise ArchiveRefused(f"member {name[:200]!r}: '..' is not allowed")
    return parts


def check_members(tar: tarfile.TarFile, max_bytes: int) -> tuple[str, list[str], list[tarfile.TarInfo]]:
    """The recordID, its formats and the members, once every member is a plain file or directory inside
    ``<format>/<recordID>/`` and the unpacked total stays within ``max_bytes``."""
    record_id = ""
    formats: list[str] = []
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:
        if len(members) >= MAX_MEMBERS:
            raise ArchiveRefused(f"more than {MAX_MEMBERS} members")
        parts = _member_parts(member)
        if member.issym() or member.islnk():
            raise ArchiveRefused(f"member {member.name[:200]!r}: links are not allowed")
        if not (member.isfile() or member.isdir()):
            raise ArchiveRefused(f"member {member.name[:200]!r}: only files and directories are allowed")
        if not parts:
            continue  # "." itself
        if len(parts) == 1:
            if not member.isdir():
                raise ArchiveRefused(f"member {member.name[:200]!r}: files must be inside <format>/<recordID>/")
            continue
        fmt, rid = parts[0], parts[1]
        if not SAFE_NAME.fullmatch(fmt) or not SAFE_NAME.fullmatch(rid):
            raise ArchiveRefused(f"member {member.name[:200]!r}: format and recordID must be plain names")
        if record_id and rid != record_id:
            raise ArchiveRefused(f"member {member.name[:200]!r}: outside the recording's directory {record_id!r}")
        record_id = rid
        if len(parts) == 2 and not member.isdir():
            raise ArchiveRefused(f"member {member.name[:200]!r}: <format>/<recordID> must be a directory")
        if fmt not in formats:
            formats.append(fmt)
        total += max(0, member.size)
        if total > max_bytes:
            raise ArchiveRefused(f"unpacked, the archive exceeds {max_bytes} bytes")
        members.append(member)
    if not record_id:
        raise ArchiveRefused("the archive holds no recording (expected <format>/<recordID>/metadata.xml)")
    present = {_member_parts(m) for m in members if m.isfile()}
    for fmt in formats:
        if (fmt, record_id, "metadata.xml") not in present:
            raise ArchiveRefused(f"format {fmt!r} has no metadata.xml")
    return record_id, formats, members


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], into: Path) -> tuple[int, int]:
    """Write members under ``into`` ourselves (no tarfile.extract: no owners, modes or links from outside)."""
    files = written = 0
    for member in members:
        target = into.joinpath(*_member_parts(member))
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True, mode=0o755)
            continue
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        source = tar.extractfile(member)
        if source is None:
            raise ArchiveRefused(f"member {member.name[:200]!r} cannot be read")
        remaining = member.size
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            while remaining > 0:
                chunk = source.read(min(COPY_CHUNK, remaining))
                if not chunk:
                    raise ArchiveRefused(f"member {member.name[:200]!r} is truncated")
                out.write(chunk)
                remaining -= len(chunk)
        files += 1
        written += member.size
    return files, written


def _format_doc(path: Path) -> dict[str, Any]:
    """What one format's metadata.xml (as BBB publishes it) says about the recording."""
    if path.stat().st_size > 4 * 1024 * 1024:
        raise ArchiveRefused(f"{path.parent.parent.name}/{path.parent.name}/metadata.xml is too large")
    try:
        root = bbbxml.parse(path.read_bytes())
    except bbbxml.XmlError as exc:
        raise ArchiveRefused(f"metadata.xml is not valid XML: {str(exc)[:200]}") from None
    text = bbbxml.text_of
    meeting = root.find("meeting")
    meta = {child.tag.lower(): (child.text or "").strip() for child in root.iterfind("meta/*")
            if isinstance(child.tag, str)}
    playback = root.find("playback")
    images = []
    fmt: dict[str, Any] = {}
    if playback is not None:
        images = [{"url": (i.text or "").strip(), "width": i.get("width", ""), "height": i.get("height", ""),
                   "alt": i.get("alt", "")} for i in playback.iterfind("extensions/preview/images/image")]
        duration = text(playback, "duration")
        fmt = {"type": text(playback, "format"), "url": text(playback, "link"),
               "processing_time": _int(text(playback, "processing_time")),
               "length": _int(duration) // 60000 if duration.isdigit() else 0,
               "size": _int(text(playback, "size")), "preview": images}
    state = text(root, "state").lower() or ("published" if text(root, "published") == "true" else "unpublished")
    return {
        "record_id": text(root, "id"),
        "meeting_id": (meeting.get("externalId", "") if meeting is not None else "") or meta.get("meetingid", ""),
        "internal_meeting_id": (meeting.get("id", "") if meeting is not None else "") or text(root, "id"),
        "name": (meeting.get("name", "") if meeting is not None else "") or meta.get("meetingname", ""),
        "is_breakout": (meeting.get("breakout", "") if meeting is not None else "") == "true",
        "state": state if state in ("processing", "processed", "published", "unpublished") else "published",
        "start_time": _int(text(root, "start_time")), "end_time": _int(text(root, "end_time")),
        "participants": _int(text(root, "participants")), "raw_size": _int(text(root, "raw_size")),
        "metadata": meta, "format": fmt,
    }


def _int(text: str) -> int:
    return int(text) if text.isdigit() and len(text) < 19 else 0


def import_archive(archive: str | os.PathLike[str], storage: str | os.PathLike[str], max_bytes: int) -> Imported:
    """Check, unpack and move one archive into ``storage``; raises ArchiveRefused with nothing left behind.

    The caller indexes ``Imported.doc`` and, should that fail, calls ``discard`` to take the files out again.
    """
    storage = Path(storage)
    incoming = storage / INCOMING / uuid.uuid4().hex
    incoming.mkdir(parents=True, mode=0o755)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                record_id, formats, members = check_members(tar, max_bytes)
            with tarfile.open(archive, "r:*") as tar:  # a second pass: members were only listed above
                files, written = _extract(tar, members, incoming)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            if isinstance(exc, ArchiveRefused):
                raise
            raise ArchiveRefused(f"not a readable tar archive: {str(exc)[:200]}") from None
        formats_docs = [_format_doc(incoming / fmt / record_id / "metadata.xml") for fmt in formats]
        for found in formats_docs:
            if found["record_id"] != record_id:
                raise ArchiveRefused(f"metadata.xml names recording {found['record_id'][:128]!r}, "
                                     f"the archive {record_id!r}")
        doc = {k: v for k, v in formats_docs[0].items() if k != "format"}
        doc["playback"] = [dict(d["format"], type=d["format"].get("type") or fmt)
                           for d, fmt in zip(formats_docs, formats, strict=True)]
        doc["stored_formats"] = list(formats)
        doc["size"] = written
        # <storage>/<recordID>/<format>/: one rename brings the whole recording in.
        staged = incoming / "recording"
        staged.mkdir()
        for fmt in formats:
            os.rename(incoming / fmt / record_id, staged / fmt)
        target = storage / record_id
        replaced = False
        if target.exists():
            trash = storage / TRASH / uuid.uuid4().hex
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(target, trash)
            replaced = True
            try:
                os.rename(staged, target)
            except OSError:
                os.rename(trash, target)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staged, target)
        earlier = storage / UNPUBLISHED / record_id  # an earlier, unpublished copy is replaced too
        if earlier.is_dir():
            shutil.rmtree(earlier, ignore_errors=True)
            replaced = True
        return Imported(record_id, formats, doc, replaced, files, written)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def rewrite_meta(storage: str | os.PathLike[str], record_id: str, changes: dict[str, str]) -> int:
    """updateRecordings on the stored copy: each format's metadata.xml ``<meta>`` gets the changes (an
    empty value removes the key), written atomically. Answers how many files changed."""
    if not SAFE_NAME.fullmatch(record_id):
        return 0
    root = Path(storage)
    folder = next((f for f in (root / record_id, root / UNPUBLISHED / record_id, root / DELETED / record_id)
                   if f.is_dir()), None)
    if folder is None:
        return 0
    from lxml import etree

    changed = 0
    for metadata in sorted(folder.glob("*/metadata.xml")):
        try:
            tree = bbbxml.parse(metadata.read_bytes())
        except (bbbxml.XmlError, OSError):
            continue
        meta = tree.find("meta")
        if meta is None:
            meta = etree.SubElement(tree, "meta")
        for key, value in changes.items():
            if not bbbxml.is_tag_name(key):
                continue
            for old in meta.findall(key):
                meta.remove(old)
            if value:
                etree.SubElement(meta, key).text = value
        temporary = metadata.with_name(f".metadata.xml.{uuid.uuid4().hex}")
        temporary.write_bytes(etree.tostring(tree, xml_declaration=True, encoding="UTF-8"))
        os.replace(temporary, metadata)
        changed += 1
    return changed


def discard(storage: str | os.PathLike[str], record_id: str) -> None:
    """Take an imported recording's files out again (its indexing failed, or it was refused)."""
    if SAFE_NAME.fullmatch(record_id):
        shutil.rmtree(Path(storage) / record_id, ignore_errors=True)
        shutil.rmtree(Path(storage) / UNPUBLISHED / record_id, ignore_errors=True)


def place(storage: str | os.PathLike[str], record_id: str, state: str) -> None:
    """Move a stored recording where its state says: only published ones under ``<storage>/<recordID>``
    (what a web server may expose), unpublished or unfinished ones in ``.unpublished/``, deleted ones in
    ``.deleted/`` until their retention ends."""
    if not SAFE_NAME.fullmatch(record_id):
        return
    root = Path(storage)
    folders = {"published": root / record_id, "deleted": root / DELETED / record_id}
    target = folders.get(state, root / UNPUBLISHED / record_id)
    for source in (root / record_id, root / UNPUBLISHED / record_id, root / DELETED / record_id):
        if source != target and source.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.rename(source, target)
            return


def remove_deleted(storage: str | os.PathLike[str], record_id: str) -> None:
    if SAFE_NAME.fullmatch(record_id):
        shutil.rmtree(Path(storage) / DELETED / record_id, ignore_errors=True)
