"""The webhook POST client against real HTTP servers on loopback: keep-alive, the connection
limit, servers that close idle connections, chunked answers, timeouts, refusals, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pushskip.httpclient import PostClient, PostError
from tests.helpers import free_port


class Server:
    """A raw HTTP/1.1 server that answers each request as `mode` says and records what came."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.port = free_port()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.mode == "close-on-reuse" and served == 1:
                    break  # its keep-alive ran out just as the next request came in
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((lines[0], headers, body))
                served += 1
                await asyncio.sleep(0.02 if self.mode == "slowish" else 0)
                if self.mode == "hang":
                    await asyncio.sleep(3600)
                if self.mode == "garbage":
                    writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
                elif self.mode == "chunked":
                    writer.write(
                        b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n0\r\n\r\n"
                    )
                elif self.mode == "close":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                    )
                    await writer.drain()
                    break
                else:
                    status = b"503 Busy" if self.mode == "busy" else b"204 No Content"
                    writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                if self.mode == "drop-idle":
                    await asyncio.sleep(0.05)
                    break  # as a server whose keep-alive timeout is short
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", self.port, ssl=ssl_context)
        scheme = "https" if ssl_context else "http"
        try:
            yield f"{scheme}://127.0.0.1:{self.port}/hooks?x=1"
        finally:
            server.close()


def client(url: str, **kw: object) -> PostClient:
    values: dict[str, object] = {"timeout_s": 2.0, "max_connections": 4, "headers": {"x-a": "b"}}
    values.update(kw)
    return PostClient(url, **values)  # type: ignore[arg-type]


async def test_posts_reuse_one_kept_alive_connection() -> None:
    """Twenty posts one after another go over one connection; each arrives as sent."""
    server = Server()
    async with server.running() as url:
        c = client(url)
        for i in range(20):
            assert await c.post(b'{"n": %d}' % i, {"webhook-id": f"msg_{i}"}) == 204
        await c.aclose()
    assert server.connections == 1
    line, headers, body = server.requests[7]
    assert line == "POST /hooks?x=1 HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{server.port}" and headers["x-a"] == "b"
    assert headers["webhook-id"] == "msg_7" and body == b'{"n": 7}'


async def test_concurrent_posts_stay_within_the_connection_limit() -> None:
    """Forty posts at once over at most four connections, each answered."""
    server = Server()
    server.mode = "slowish"
    async with server.running() as url:
        c = client(url, max_connections=4)
        statuses = await asyncio.gather(*(c.post(b"{}", {}) for _ in range(40)))
        await c.aclose()
    assert statuses == [204] * 40
    assert server.most_open <= 4 and server.connections <= 4


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    """A server that closes each connection after its answer: the next post notices the
    stale connection and goes over a new one, and nothing is lost or sent twice."""
    server = Server()
    server.mode = "drop-idle"
    async with server.running() as url:
        c = client(url)
        for i in range(5):
            assert await c.post(b"%d" % i, {}) == 204
            await asyncio.sleep(0.1)  # the server has closed it by now
        await c.aclose()
    assert [body for _, _, body in server.requests] == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_request_on_a_connection_closed_under_it_goes_again_on_a_new_one() -> None:
    """The server closes a kept-alive connection as the next request arrives, without an
    answer: the client sends it once more on a new connection."""
    server = Server()
    server.mode = "close-on-reuse"
    async with server.running() as url:
        c = client(url)
        for i in range(4):
            assert await c.post(b"%d" % i, {}) == 204
        await c.aclose()
    assert [body for _, _, body in server.requests] == [b"0", b"1", b"2", b"3"]
    assert server.connections == 4


@pytest.mark.parametrize(("mode", "status"), [("chunked", 202), ("close", 200), ("busy", 503)])
async def test_answers_of_every_shape_give_their_status(mode: str, status: int) -> None:
    """A chunked answer, one with Connection: close, and a 503 each give their status, and the
    client goes on working after them."""
    server = Server()
    server.mode = mode
    async with server.running() as url:
        c = client(url)
        assert await c.post(b"{}", {}) == status
        assert await c.post(b"{}", {}) == status
        await c.aclose()


async def test_no_answer_in_time_refused_and_garbage_are_post_errors() -> None:
    """A server that never answers (timeout), a closed port, and an answer that is not HTTP
    raise PostError, and leave no connection counted as open."""
    server = Server()
    server.mode = "hang"
    async with server.running() as url:
        c = client(url, timeout_s=0.3)
        with pytest.raises(PostError, match="no answer"):
            await c.post(b"{}", {})
        assert c._open == 0
    with pytest.raises(PostError, match="cannot connect"):
        await client(f"http://127.0.0.1:{free_port()}/x").post(b"{}", {})
    server = Server()
    server.mode = "garbage"
    async with server.running() as url:
        c = client(url)
        with pytest.raises(PostError):
            await c.post(b"{}", {})
        assert c._open == 0


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(cert_path))
    return server_ctx, client_ctx


async def test_https_with_a_trusted_certificate_and_not_without(tmp_path: Path) -> None:
    """An https:// receiver is reached over TLS; a certificate the client does not trust is a
    PostError, not a silent plain-text post."""
    server_ctx, client_ctx = self_signed(tmp_path)
    server = Server()
    async with server.running(server_ctx) as url:
        assert await client(url, ssl_context=client_ctx).post(b"{}", {}) == 204
        with pytest.raises(PostError):
            await client(url).post(b"{}", {})  # the system's trust store does not know it
    assert len(server.requests) == 1


def test_only_http_urls() -> None:
    """A URL that is not http(s) is refused when the client is made."""
    with pytest.raises(ValueError, match="http"):
        PostClient("ftp://x/y", timeout_s=1, max_connections=1)
