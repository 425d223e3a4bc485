"""model.data.download against a local HTTP server on 127.0.0.1 serving a small zip."""
import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from model.data import download


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support (enough to test resuming)."""
    served_ranges: list = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            type(self).served_ranges.append(start)
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a configured proxy must not intercept
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "www"
    (root / "zips").mkdir(parents=True)
    zpath = root / "zips" / "val2017.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("val2017/000000000001.jpg", b"x" * 5000)
        zf.writestr("val2017/000000000002.jpg", b"y" * 3000)
    _RangeHandler.served_ranges = []
    handler = functools.partial(_RangeHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", zpath
    httpd.shutdown()
    httpd.server_close()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verify_unpack_with_progress(server, tmp_path, capfd):
    base, zpath = server
    dest = tmp_path / "coco"
    rc = download.main(["coco", "--output", str(dest), "--base-url", base, "--only", "val2017",
                        "--sha256", _sha(zpath)])
    assert rc == 0
    assert (dest / "val2017" / "000000000001.jpg").read_bytes() == b"x" * 5000
    assert (dest / "val2017.zip").read_bytes() == zpath.read_bytes()
    assert not (dest / "val2017.zip.part").exists()
    captured = capfd.readouterr()
    assert "val2017.zip" in captured.err and "100%" in captured.err   # tqdm bar
    assert f"sha256 {_sha(zpath)}" in captured.out
    # A second run finds everything in place.
    assert download.main(["coco", "--output", str(dest), "--base-url", base, "--only", "val2017",
                          "--sha256", _sha(zpath), "--no-progress"]) == 0


def test_checksum_failure(server, tmp_path, capsys):
    base, _ = server
    dest = tmp_path / "coco"
    rc = download.main(["coco", "--output", str(dest), "--base-url", base, "--only", "val2017",
                        "--sha256", "0" * 64, "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and "val2017.zip" in err
    assert not (dest / "val2017.zip").exists() and not (dest / "val2017.zip.part").exists()
    assert not (dest / "val2017").exists()


def test_builtin_size_mismatch(server, tmp_path):
    # Without an override the built-in size of the real val2017.zip applies: the small test
    # zip is refused.
    base, _ = server
    with pytest.raises(download.ChecksumError, match="size"):
        download.fetch("coco", tmp_path / "c", base_url=base, only=["val2017"], progress=False)


def test_resume_from_part_file(server, tmp_path):
    base, zpath = server
    dest = tmp_path / "c"
    dest.mkdir()
    data = zpath.read_bytes()
    (dest / "val2017.zip.part").write_bytes(data[:1000])
    out = download.download_file(f"{base}/zips/val2017.zip", dest / "val2017.zip",
                                 sha256=_sha(zpath), progress=False)
    assert out.read_bytes() == data
    assert _RangeHandler.served_ranges == [1000]


def test_http_error_and_bad_zip(server, tmp_path, capsys):
    base, _ = server
    rc = download.main(["kitti", "--output", str(tmp_path / "k"), "--base-url", base,
                        "--no-progress"])
    assert rc == 1 and "404" in capsys.readouterr().err
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"bad\.zip: not a valid zip"):
        download.unpack(bad, tmp_path / "out", progress=False)


def test_cli_argument_checks(tmp_path, capsys):
    assert download.main(["coco", "--output", str(tmp_path), "--sha256", "abc"]) == 2
    assert capsys.readouterr().err == ("error: --sha256: needs NAME=HEX when several archives "
                                       "are fetched (names: train2017, val2017, annotations)\n")
    assert download.main(["coco", "--output", str(tmp_path), "--only", "val2017",
                          "--sha256", "abc"]) == 2
    assert capsys.readouterr().err == "error: --sha256: 'abc': expected 64 hex digits\n"
    with pytest.raises(ValueError, match="unknown archive"):
        download.fetch("coco", tmp_path, only=["test2017"], progress=False)
