"""Interoperability: Node's official socket.io-client (npm, pinned in tests/node) chats with a python client.

The Node script (tests/node/chat_roundtrip.mjs) connects as a shopper and sends a
message with an ack; a python-socketio staff client receives it live, then answers;
the Node client receives the answer. Both sides check acks and sequence numbers.
CI installs the npm package, so a missing ``node_modules`` is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.support.streamclient import StreamClient

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "chat_roundtrip.mjs"
PEER_TEXT = "hello from python"


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: install node >= 18, then run `npm ci` in tests/node")
    if not (NODE_DIR / "node_modules" / "socket.io-client" / "package.json").is_file():
        pytest.fail(
            f"socket.io-client is not installed in {NODE_DIR}/node_modules: run `npm ci` in tests/node"
        )
    return node


@pytest.mark.node
@pytest.mark.parametrize("transports", ["default", "websocket"])
@pytest.mark.asyncio
async def test_node_client_chats_with_python_client(hub, transports) -> None:  # type: ignore[no-untyped-def]
    node = require_node()
    stream = "chat:b:b1:nora"
    staff = StreamClient(hub.url, hub.token("staff", "bob", boutique="b1"))
    await staff.connect()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        hub.url,
        hub.token("shopper", "nora"),
        stream,
        transports,
        PEER_TEXT,
        cwd=str(NODE_DIR),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # node -> python
        await staff.wait_for(lambda: staff.texts(stream) == ["hello from node"], timeout=30)
        frame = staff.entries[stream][0]
        assert frame["seq"] == 1 and frame["author"] == "nora" and frame["author_role"] == "shopper"
        # python -> node
        ack = await staff.send(stream, PEER_TEXT)
        assert ack["seq"] == 2 and ack["duplicate"] is False
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await staff.disconnect()

    lines = stdout.decode().strip().splitlines()
    assert lines, f"node printed nothing; stderr:\n{stderr.decode()}"
    result = json.loads(lines[-1])
    assert proc.returncode == 0, (result, stderr.decode())
    assert result["client_version"] == "4.8.1"
    assert result["errors"] == [] and all(result["checks"].values()), result
    assert result["welcome"]["user"] == "nora"
    assert result["ack"]["ok"] is True and result["ack"]["data"]["seq"] == 1
    assert [(m["seq"], m["text"]) for m in result["messages"]] == [(1, "hello from node"), (2, PEER_TEXT)]
    assert result["messages"][1]["author"] == "bob"
    assert result["messages"][0]["epoch"] == ack["epoch"]
    assert result["transport"] == "websocket"  # the default mode upgrades from polling
    assert staff.texts(stream) == ["hello from node", PEER_TEXT]
