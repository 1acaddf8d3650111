#!/usr/bin/env python3
"""A Modbus slave for the gateway's tests: pymodbus's own server (RTU on a
serial device, or TCP on loopback) holding the registers a JSON spec gives,
one datastore per unit id. Unknown unit ids get no answer (as on a real
RS-485 line).

usage: modbus_slave.py rtu:/path/to/pty SPEC.json
       modbus_slave.py tcp:PORT SPEC.json

SPEC: {"units": {"1": {"hr": [words], "ir": [words], "co": [0/1], "di": [0/1]}}}
Address 0 is the first element of each list; reading past a list's end is
answered with exception 2 (illegal data address).

Commands on stdin, each answered "ok" on stdout once applied:
  mute UNIT      the unit stops answering
  unmute UNIT    it answers again
  set UNIT hr|ir|co|di ADDRESS VALUE...
Prints "ready" once the server listens.
"""
import asyncio
import json
import sys

from pymodbus import FramerType
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

FC = {"co": 1, "di": 2, "hr": 3, "ir": 4}


def block(values):
    # pymodbus's device context adds 1 to every protocol address.
    return ModbusSequentialDataBlock(1, list(values) or [0])


async def main():
    where, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    devices = {}
    for unit, tables in spec["units"].items():
        devices[int(unit)] = ModbusDeviceContext(
            hr=block(tables.get("hr", [])),
            ir=block(tables.get("ir", [])),
            co=block(tables.get("co", [])),
            di=block(tables.get("di", [])),
        )
    context = ModbusServerContext(devices=dict(devices), single=False)
    kind, _, target = where.partition(":")
    if kind == "rtu":
        server = ModbusSerialServer(
            context,
            framer=FramerType.RTU,
            port=target,
            baudrate=9600,
            ignore_missing_devices=True,
        )
    else:
        server = ModbusTcpServer(
            context,
            framer=FramerType.SOCKET,
            address=("127.0.0.1", int(target)),
            ignore_missing_devices=True,
        )
    await server.serve_forever(background=True)
    print("ready", flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = line.decode().split()
        if not cmd:
            continue
        if cmd[0] == "mute":
            unit = int(cmd[1])
            if unit in context:
                del context[unit]
        elif cmd[0] == "unmute":
            unit = int(cmd[1])
            context[unit] = devices[unit]
        elif cmd[0] == "set":
            unit, table, address = int(cmd[1]), cmd[2], int(cmd[3])
            values = [int(v) for v in cmd[4:]]
            devices[unit].setValues(FC[table], address, values)
        print("ok", flush=True)
    await server.shutdown()


asyncio.run(main())
