"""Drives a running presence-node with client libraries nobody on the team wrote:
`websockets` over WebSocket and `aioquic` over QUIC. Exits 0 when hello, welcome, a presence
diff and heartbeat/pong all work on both transports."""

import asyncio
import json
import ssl
import struct
import sys
import urllib.request

import websockets
from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration


def admin(base, key, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + key)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read()
        return json.loads(text) if text else None


async def quic_recv(reader):
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    return json.loads(await reader.readexactly(n))


def quic_send(writer, msg):
    data = json.dumps(msg).encode()
    writer.write(struct.pack(">I", len(data)) + data)


async def until(pred, recv, what):
    while True:
        msg = await recv()
        if pred(msg):
            return msg
        print("  (skipping", msg.get("type"), ")", file=sys.stderr)


async def main(ws_addr, quic_addr, admin_addr, key, cert):
    base = "http://" + admin_addr
    admin(base, key, "POST", "/v1/friendships", {"add": [["py-alice", "py-bob"]]})
    alice_token = admin(base, key, "POST", "/v1/tokens", {"user": "py-alice"})["token"]
    bob_token = admin(base, key, "POST", "/v1/tokens", {"user": "py-bob"})["token"]
    await asyncio.sleep(0.5)  # let a tick publish the new friendship

    async with websockets.connect(f"ws://{ws_addr}/v1/ws") as ws:
        await ws.send(json.dumps({"type": "hello", "token": alice_token, "device": "py-ws"}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        assert [f["user"] for f in welcome["friends"]] == ["py-bob"], welcome
        print("ws: welcome", welcome["friends"])

        host, port = quic_addr.rsplit(":", 1)
        config = QuicConfiguration(is_client=True, alpn_protocols=["presence/1"])
        config.load_verify_locations(cafile=cert)
        config.server_name = "localhost"
        config.verify_mode = ssl.CERT_REQUIRED
        async with connect(host, int(port), configuration=config) as client:
            reader, writer = await client.create_stream()
            quic_send(writer, {"type": "hello", "token": bob_token, "device": "py-quic"})
            welcome = await quic_recv(reader)
            assert welcome["type"] == "welcome", welcome
            print("quic: welcome", welcome["friends"])

            async def ws_recv():
                return json.loads(await ws.recv())

            diff = await until(
                lambda m: m["type"] == "presence"
                and any(c["user"] == "py-bob" and c["state"] == "online" for c in m["changes"]),
                ws_recv,
                "presence",
            )
            print("ws: presence diff", diff)

            quic_send(writer, {"type": "heartbeat"})
            pong = await until(lambda m: m["type"] == "pong", lambda: quic_recv(reader), "pong")
            print("quic: pong", pong)
            await ws.send(json.dumps({"type": "heartbeat"}))
            pong = await until(lambda m: m["type"] == "pong", ws_recv, "pong")
            print("ws: pong", pong)

            # bob's status change reaches alice over the other transport.
            quic_send(writer, {"type": "status", "status": "busy", "text": "from aioquic"})
            diff = await until(
                lambda m: m["type"] == "presence"
                and any(c["user"] == "py-bob" and c.get("text") == "from aioquic" for c in m["changes"]),
                ws_recv,
                "presence",
            )
            print("ws: status diff", diff)
    print("interop ok")


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(*sys.argv[1:6]), timeout=30))
    except Exception as e:  # noqa: BLE001 - report anything as a failure
        print("interop failed:", repr(e), file=sys.stderr)
        sys.exit(1)
