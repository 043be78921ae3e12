"""An independent Sparkplug B host for fieldmq's interop tests, built on pysparkplug.

Subscribes to spBv1.0/# on the broker and prints every message it decodes as one
JSON line on stdout: {"topic", "type", "seq", "timestamp", "metrics": [{"name",
"alias", "datatype", "value", "is_null", "is_historical"}]}. Aliases in DATA are
resolved through the last birth, as a host does. A payload pysparkplug cannot
decode is printed as {"topic", "error"} instead of ending the run.

Commands are read from stdin, one JSON object per line:
{"topic": "...", "type": "NCMD"|"DCMD", "metrics": [{"name", "datatype", "value"}],
 "compress": "GZIP"|"DEFLATE" (optional)}
and encoded with pysparkplug (datatypes included, as Ignition sends them).

Compressed payloads follow the Eclipse Tahu convention, written here from it
with Python's own zlib and gzip: a wrapper payload with uuid
"SPBV1.0_COMPRESSED", a String metric "algorithm" ("GZIP" or "DEFLATE", a
zlib stream; DEFLATE when absent) and the compressed payload in body. Each
printed line says "compressed": the algorithm, or null.
"""

import argparse
import gzip
import json
import sys
import threading
import zlib

import paho.mqtt.client as mqtt
import pysparkplug as sp
from pysparkplug._protobuf import sparkplug_b_pb2 as pb

COMPRESSED = "SPBV1.0_COMPRESSED"
STRING = 12


def unwrap(raw):
    """The payload a compression wrapper carries, and its algorithm; others as they are."""
    outer = pb.Payload()
    outer.ParseFromString(raw)
    if outer.uuid != COMPRESSED:
        return raw, None
    algorithm = "DEFLATE"
    for m in outer.metrics:
        if m.name == "algorithm":
            algorithm = m.string_value.upper()
    if algorithm == "GZIP":
        return gzip.decompress(outer.body), algorithm
    if algorithm == "DEFLATE":
        return zlib.decompress(outer.body), algorithm
    raise ValueError(f"unknown algorithm {algorithm}")


def wrap(raw, algorithm):
    outer = pb.Payload()
    outer.timestamp = sp.get_current_timestamp()
    outer.uuid = COMPRESSED
    outer.body = gzip.compress(raw) if algorithm == "GZIP" else zlib.compress(raw)
    m = outer.metrics.add()
    m.name = "algorithm"
    m.datatype = STRING
    m.string_value = algorithm
    return outer.SerializeToString()

DECODERS = {
    "NBIRTH": sp.NBirth,
    "DBIRTH": sp.DBirth,
    "NDATA": sp.NData,
    "DDATA": sp.DData,
    "NDEATH": sp.NDeath,
    "DDEATH": sp.DDeath,
    "NCMD": sp.NCmd,
    "DCMD": sp.DCmd,
}


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    births = {}

    def on_connect(client, userdata, flags, rc):
        client.subscribe("spBv1.0/#", qos=1)

    def on_subscribe(client, userdata, mid, granted_qos):
        emit({"ready": True})

    def on_message(client, userdata, msg):
        parts = msg.topic.split("/")
        if len(parts) < 4 or parts[1] == "STATE":
            return
        kind = parts[2]
        edge = "/".join([parts[1], parts[3]] + parts[4:])
        decoder = DECODERS.get(kind)
        if decoder is None:
            return
        try:
            raw, compressed = unwrap(msg.payload)
            if kind in ("NDATA", "DDATA"):
                payload = decoder.decode(raw, birth=births.get(edge))
            else:
                payload = decoder.decode(raw)
            if kind in ("NBIRTH", "DBIRTH"):
                births[edge] = payload
            metrics = []
            # NDeath keeps its one metric apart, as bd_seq_metric.
            listed = getattr(payload, "metrics", None)
            if listed is None and hasattr(payload, "bd_seq_metric"):
                listed = (payload.bd_seq_metric,)
            for m in listed or ():
                metrics.append(
                    {
                        "name": m.name,
                        "alias": m.alias,
                        "datatype": m.datatype.name,
                        "value": m.value,
                        "is_null": m.is_null,
                        "is_historical": m.is_historical,
                    }
                )
            emit(
                {
                    "topic": msg.topic,
                    "type": kind,
                    "seq": getattr(payload, "seq", None),
                    "timestamp": payload.timestamp,
                    "metrics": metrics,
                    "compressed": compressed,
                }
            )
        except Exception as e:  # report, keep listening: the test decides
            emit({"topic": msg.topic, "error": f"{type(e).__name__}: {e}"})

    client = mqtt.Client(client_id="pysparkplug-host", protocol=mqtt.MQTTv311)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=30)

    def commands():
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            metrics = tuple(
                sp.Metric(
                    timestamp=sp.get_current_timestamp(),
                    name=m["name"],
                    datatype=sp.DataType[m["datatype"]],
                    value=m["value"],
                )
                for m in cmd["metrics"]
            )
            kind = sp.NCmd if cmd["type"] == "NCMD" else sp.DCmd
            payload = kind(timestamp=sp.get_current_timestamp(), metrics=metrics)
            raw = payload.encode(include_dtypes=True)
            if cmd.get("compress"):
                raw = wrap(raw, cmd["compress"])
            client.publish(cmd["topic"], raw, qos=0)
        client.disconnect()

    threading.Thread(target=commands, daemon=True).start()
    client.loop_forever()


if __name__ == "__main__":
    main()
