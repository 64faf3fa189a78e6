"""models pull against a local HTTP server: resume, verification, no half files."""
import hashlib
import http.server
import threading

import pytest

from rwkvcpu.registry import RegistryError, download, pull

PAYLOAD = bytes(range(256)) * 4096          # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    calls = []

    def do_GET(self):
        Handler.calls.append(self.headers.get("Range"))
        if self.path == "/missing":
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        if self.path == "/cut":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Handler.calls = []
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_download_verifies_and_renames(server, tmp_path):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    p = download(server + "/model", tmp_path / "m.pth", size=len(PAYLOAD), sha256=sha)
    assert p.read_bytes() == PAYLOAD and not (tmp_path / "m.pth.part").exists()


def test_resume_partial_file(server, tmp_path):
    (tmp_path / "m.pth.part").write_bytes(PAYLOAD[:1000])
    download(server + "/model", tmp_path / "m.pth", size=len(PAYLOAD))
    assert (tmp_path / "m.pth").read_bytes() == PAYLOAD
    assert Handler.calls[-1] == "bytes=1000-"


def test_interrupted_download_leaves_no_final_file(server, tmp_path):
    with pytest.raises(RegistryError, match="interrupted|bytes"):
        download(server + "/cut", tmp_path / "m.pth")
    assert not (tmp_path / "m.pth").exists()


def test_bad_hash_never_becomes_the_model(server, tmp_path):
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        download(server + "/model", tmp_path / "m.pth", sha256="0" * 64)
    assert not (tmp_path / "m.pth").exists()


def test_http_error_named(server, tmp_path):
    with pytest.raises(RegistryError, match="HTTP 404"):
        download(server + "/missing", tmp_path / "x")


def test_pull_from_registry(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RWKVCPU_HOME", str(tmp_path))
    reg = {"models": {"tiny": {"url": server + "/model", "file": "tiny.pth", "size_bytes": len(PAYLOAD),
                               "vocab": "v"}},
           "vocab": {"v": {"url": server + "/model", "file": "v.txt"}}}
    paths = pull("tiny", reg)
    assert [p.name for p in paths] == ["tiny.pth", "v.txt"]
    assert (tmp_path / "models" / "tiny.pth").stat().st_size == len(PAYLOAD)
