"""Runs in an engine pod's node container: may a client without the journal's password use it?

Usage: python journal_open.py URL CA_FILE. Prints JSON: {"anonymous": {...}, "plain": {...}}, each
{"ok": true} when the connection was accepted or {"ok": false, "error": "..."}.
"""

import asyncio
import json
import ssl
import sys

import nats

url, ca_file = sys.argv[1:3]


async def attempt(**options):
    try:
        client = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0, allow_reconnect=False,
                                    **options)
    except Exception as err:  # nats-py raises several unrelated types here
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
    await client.close()
    return {"ok": True}


async def main():
    context = ssl.create_default_context(cafile=ca_file)
    print(json.dumps({"anonymous": await attempt(tls=context), "plain": await attempt()}))


asyncio.run(main())
