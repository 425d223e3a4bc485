"""Download and unpack the real datasets from their official addresses.

    python -m model.data.download kitti --output data            # -> data/data_road/...
    python -m model.data.download coco --output data/coco        # -> data/coco/{train2017,val2017,annotations}
    python -m model.data.download coco --output data/coco --only val2017 annotations

Downloads stream into `<name>.part` and are renamed only once complete and verified, so an
interrupted download resumes (HTTP Range) and a half file is never mistaken for a whole one.
Checksums: COCO publishes none, so the sha256 values below are the ones independently
recorded by several public projects (TFDS among them) together with the sizes COCO's server
reports; KITTI publishes neither, so only the server's Content-Length is checked and the
sha256 of what arrived is printed (pin it with --sha256 for later downloads).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys
import time
import zipfile
from dataclasses import dataclass

import requests
from tqdm import tqdm

from common import cli

__all__ = ["Archive", "ARCHIVES", "ChecksumError", "download_file", "unpack", "fetch", "main"]

CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    name: str           # short name used by --only / --sha256 NAME=HEX
    base_url: str       # official base address
    path: str           # path under the base (kept when --base-url points to a mirror)
    sha256: str | None  # None where no trustworthy checksum is known
    size: int | None    # bytes; None where unknown

    @property
    def file_name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


ARCHIVES: dict[str, list[Archive]] = {
    "kitti": [
        Archive("data_road", "https://s3.eu-central-1.amazonaws.com/avg-kitti", "data_road.zip",
                None, None),
    ],
    "coco": [
        Archive("train2017", "http://images.cocodataset.org", "zips/train2017.zip",
                "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929", 19336861798),
        Archive("val2017", "http://images.cocodataset.org", "zips/val2017.zip",
                "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05", 815585330),
        Archive("annotations", "http://images.cocodataset.org",
                "annotations/annotations_trainval2017.zip",
                "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268", 252907541),
    ],
}


class ChecksumError(ValueError):
    """The downloaded file does not have the expected size or sha256."""


def _sha256_of(path: pathlib.Path, progress: bool) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"sha256 {path.name.removesuffix('.part')}",
                                     disable=not progress) as bar:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def download_file(url: str, dest: str | os.PathLike, sha256: str | None = None,
                  size: int | None = None, progress: bool = True, retries: int = 3,
                  timeout: float = 60.0) -> pathlib.Path:
    """Download url to dest via dest.part (resumed when the server allows Range requests).

    Verifies the size (expected or Content-Length) and, when given, the sha256; on a
    checksum mismatch the partial file is deleted and ChecksumError names both digests.
    A dest that already exists with a recorded matching digest is not downloaded again.
    """
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    stamp = dest.with_name(dest.name + ".sha256")
    if dest.is_file():
        if (stamp.is_file() and (sha256 is None or stamp.read_text().split()[0] == sha256)
                and (size is None or dest.stat().st_size == size)):
            return dest
        # Present but never verified here (copied in, or older run): verify it now.
        digest = _sha256_of(dest, progress)
        if (sha256 is None or digest == sha256) and (size is None or dest.stat().st_size == size):
            stamp.write_text(f"{digest}  {dest.name}\n")
            return dest
        raise ChecksumError(f"{dest}: existing file does not match (sha256 {digest}, "
                            f"expected {sha256}); delete it to download again")

    for attempt in range(1, retries + 1):
        try:
            _stream(url, part, size, progress, timeout)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if attempt == retries:
                raise ConnectionError(f"{url}: download failed after {retries} attempts "
                                      f"({exc}); rerun to resume from {part}") from None
            time.sleep(min(2 ** attempt, 30))

    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise ChecksumError(f"{dest.name}: size {got} bytes, expected {size} ({url})")
    digest = _sha256_of(part, progress)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise ChecksumError(f"{dest.name}: sha256 mismatch: got {digest}, expected {sha256} "
                            f"({url}); the partial file was removed")
    os.replace(part, dest)
    stamp.write_text(f"{digest}  {dest.name}\n")
    return dest


def _stream(url: str, part: pathlib.Path, size: int | None, progress: bool, timeout: float):
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, stream=True, headers=headers, timeout=timeout) as r:
        if r.status_code == 416 and have:      # already complete
            return
        if r.status_code not in (200, 206):
            raise ConnectionError(f"{url}: HTTP {r.status_code} {r.reason}")
        if r.status_code == 200:
            have = 0                           # no Range support: start over
        length = r.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"), disable=not progress) as bar:
            for block in r.iter_content(CHUNK):
                f.write(block)
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        # Server closed early: keep the part for resuming.
        raise requests.exceptions.ChunkedEncodingError(f"connection closed at {got} of {total} bytes")


def unpack(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> None:
    """Extract a zip into dest (once: a marker file records completion)."""
    archive, dest = pathlib.Path(archive), pathlib.Path(dest)
    marker = dest / f".{archive.name}.unpacked"
    if marker.is_file():
        return
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in tqdm(members, desc=f"unpack {archive.name}", unit="file",
                          disable=not progress):
                zf.extract(m, dest)  # zipfile drops absolute paths and '..' components
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{archive}: not a valid zip archive ({exc})") from None
    marker.write_text("ok\n")


def fetch(dataset: str, dest, base_url: str | None = None, only=None, sha256_overrides=None,
          keep_archives: bool = True, progress: bool = True) -> list[pathlib.Path]:
    """Download (verify) and unpack the archives of a dataset into dest."""
    if dataset not in ARCHIVES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(ARCHIVES)}")
    archives = ARCHIVES[dataset]
    if only:
        unknown = set(only) - {a.name for a in archives}
        if unknown:
            raise ValueError(f"unknown archive(s) {sorted(unknown)} for {dataset}; "
                             f"choose from {[a.name for a in archives]}")
        archives = [a for a in archives if a.name in only]
    overrides = dict(sha256_overrides or {})
    dest = pathlib.Path(dest)
    done = []
    for a in archives:
        url = f"{(base_url or a.base_url).rstrip('/')}/{a.path}"
        sha = overrides.get(a.name, a.sha256)
        size = a.size if a.name not in overrides else None
        if sha is None:
            print(f"note: {a.file_name} has no published checksum; only completeness "
                  f"(Content-Length) is checked, its sha256 is printed below", file=sys.stderr)
        path = download_file(url, dest / a.file_name, sha256=sha, size=size, progress=progress)
        print(f"{path.name}: sha256 {(dest / (a.file_name + '.sha256')).read_text().split()[0]}")
        unpack(path, dest, progress=progress)
        if not keep_archives:
            path.unlink()
        done.append(path)
    return done


def _parse_sha(values, archives) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" in v:
            name, hexd = v.split("=", 1)
        elif len(archives) == 1:
            name, hexd = archives[0].name, v
        else:
            raise cli.UserError("--sha256", "needs NAME=HEX when several archives are "
                                f"fetched (names: {', '.join(a.name for a in archives)})")
        if len(hexd) != 64 or any(c not in "0123456789abcdefABCDEF" for c in hexd):
            raise cli.UserError("--sha256", f"{v!r}: expected 64 hex digits")
        out[name] = hexd.lower()
    return out


def _main(argv) -> int:
    ap = cli.ArgumentParser(prog="python -m model.data.download", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(ARCHIVES))
    ap.add_argument("--output", required=True, help="folder for archives and unpacked files")
    ap.add_argument("--base-url", help="mirror to use instead of the official address "
                                       "(archive paths below it stay the same)")
    ap.add_argument("--only", nargs="+", metavar="NAME",
                    help="archives to fetch (kitti: data_road; coco: train2017 val2017 annotations)")
    ap.add_argument("--sha256", action="append", metavar="[NAME=]HEX",
                    help="expected sha256, overriding the built-in value")
    ap.add_argument("--delete-archives", action="store_true", help="remove zips after unpacking")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only or ()) - {a.name for a in ARCHIVES[args.dataset]})
    if unknown:
        raise cli.UserError("--only", f"unknown archive(s) {unknown} for {args.dataset}; "
                            f"choose from {[a.name for a in ARCHIVES[args.dataset]]}")
    archives = [a for a in ARCHIVES[args.dataset] if not args.only or a.name in args.only]
    overrides = _parse_sha(args.sha256, archives)
    # A folder that cannot exist (below a file, no permission) stops here, before any download.
    pathlib.Path(args.output).mkdir(parents=True, exist_ok=True)
    try:
        fetch(args.dataset, args.output, base_url=args.base_url, only=args.only,
              sha256_overrides=overrides, keep_archives=not args.delete_archives,
              progress=not args.no_progress)
    except (ChecksumError, ConnectionError, ValueError) as exc:
        # the download failed (not the command line): exit 1, as any failed run
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
