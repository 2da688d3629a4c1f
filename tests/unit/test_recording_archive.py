"""Recording archives are hostile input: every refusal leaves storage exactly as it was."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

from lb_core.recording_archive import ArchiveRefused, import_archive
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bbbsim  # noqa: E402

LIMIT = 10 * 1024 * 1024


def published(tmp_path: Path, record_id: str = "rec-1", meta: dict[str, str] | None = None) -> Path:
    """A recording directory as the simulator (and BBB) publishes it."""
    recording = bbbsim.Recording(record_id=record_id, meeting_id="room", internal_meeting_id=record_id, name="Room",
                                 playback_url=f"http://bbb1/playback/presentation/2.3/{record_id}",
                                 start_time=1_700_000_000_000, end_time=1_700_000_600_000, participants=3,
                                 metadata={"mconflb-institution": "moodle", **(meta or {})})
    root = tmp_path / "published"
    bbbsim.write_published(recording, root)
    return root


def pack(tmp_path: Path, root: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = (), *,
         name: str = "a.tar.gz", mode: str = "w:gz") -> Path:
    archive = tmp_path / name
    with tarfile.open(archive, mode) as tar:
        if root is not None:
            for fmt in root.iterdir():
                for rec in fmt.iterdir():
                    tar.add(rec, arcname=f"{fmt.name}/{rec.name}")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, **attrs: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data if kind == tarfile.REGTYPE else None


def storage_listing(storage: Path) -> list[str]:
    return sorted(str(p.relative_to(storage)) for p in storage.rglob("*")
                  if not p.relative_to(storage).parts[0].startswith("."))


def test_a_published_recording_is_imported_whole(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    imported = import_archive(pack(tmp_path, published(tmp_path)), storage, LIMIT)
    assert imported.record_id == "rec-1" and imported.formats == ["presentation"]
    assert (storage / "rec-1" / "presentation" / "metadata.xml").is_file()
    assert (storage / "rec-1" / "presentation" / "video" / "webcams.webm").stat().st_size == bbbsim.PLAYBACK_VIDEO_BYTES
    doc = imported.doc
    assert (doc["meeting_id"], doc["state"], doc["participants"]) == ("room", "published", 3)
    assert doc["metadata"]["mconflb-institution"] == "moodle"
    assert doc["playback"][0]["type"] == "presentation" and doc["playback"][0]["length"] == 10
    assert not any((storage / ".incoming").iterdir())  # nothing staged is left


@pytest.mark.parametrize(("extra", "reason"), [
    ([member("/etc/passwd")], "absolute"),
    ([member("presentation/rec-1/../../../escape.txt")], "'..'"),
    ([member("presentation/rec-1/link", kind=tarfile.SYMTYPE, linkname="/etc/passwd")], "links"),
    ([member("presentation/rec-1/hard", kind=tarfile.LNKTYPE, linkname="presentation/rec-1/metadata.xml")], "links"),
    ([member("presentation/rec-1/dev", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)], "only files"),
    ([member("presentation/rec-1/fifo", kind=tarfile.FIFOTYPE)], "only files"),
    ([member("presentation/other-rec/metadata.xml")], "outside the recording"),
    ([member("stray.txt")], "inside <format>/<recordID>"),
])
def test_hostile_members_are_refused_and_nothing_remains(tmp_path: Path, extra, reason: str) -> None:  # type: ignore[no-untyped-def]
    storage = tmp_path / "storage"
    storage.mkdir()
    archive = pack(tmp_path, published(tmp_path), extra)
    with pytest.raises(ArchiveRefused, match=reason):
        import_archive(archive, storage, LIMIT)
    assert storage_listing(storage) == []
    assert not (tmp_path / "escape.txt").exists()


def test_a_tar_bomb_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    """Members declaring more than the bound (a gzip of zeros unpacks 1000x) are refused from their headers."""
    storage = tmp_path / "storage"
    storage.mkdir()
    zeros = b"\0" * (2 * 1024 * 1024)
    extra = [member(f"presentation/rec-1/zeros-{i}", zeros) for i in range(6)]
    archive = pack(tmp_path, published(tmp_path), extra)
    assert archive.stat().st_size < 200_000
    with pytest.raises(ArchiveRefused, match="exceeds"):
        import_archive(archive, storage, LIMIT)
    assert storage_listing(storage) == []


def test_a_truncated_archive_is_refused_and_nothing_remains(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    whole = pack(tmp_path, published(tmp_path), name="whole.tar", mode="w").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[:len(whole) * 2 // 3])
    with pytest.raises(ArchiveRefused):
        import_archive(cut, storage, LIMIT)
    assert storage_listing(storage) == []


def test_garbage_and_a_format_without_metadata_are_refused(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ArchiveRefused, match="not a readable tar"):
        import_archive(garbage, storage, LIMIT)
    bare = pack(tmp_path, None, [member("video/rec-9/", kind=tarfile.DIRTYPE), member("video/rec-9/v.mp4")],  # type: ignore[arg-type]
                name="bare.tar.gz")
    with pytest.raises(ArchiveRefused, match="metadata.xml"):
        import_archive(bare, storage, LIMIT)
    assert storage_listing(storage) == []


def test_metadata_naming_another_recording_is_refused(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    root = published(tmp_path)
    (root / "presentation" / "rec-1").rename(root / "presentation" / "rec-2")
    with pytest.raises(ArchiveRefused, match="names recording"):
        import_archive(pack(tmp_path, root), storage, LIMIT)
    assert storage_listing(storage) == []


def test_an_entity_in_metadata_is_not_resolved(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    root = published(tmp_path)
    meta = root / "presentation" / "rec-1" / "metadata.xml"
    text = meta.read_text().replace('<?xml version="1.0"?>',
                                    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>')
    meta.write_text(text.replace("<participants>3", "<participants>&x;3"))
    imported = import_archive(pack(tmp_path, root), storage, LIMIT)
    assert "root:" not in str(imported.doc)
