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


def has_templates(raw):
    p = pb.Payload()
    p.ParseFromString(raw)
    return any(m.HasField("template_value") for m in p.metrics)


def template_json(raw, aliases):
    """A payload holding Templates, read with the Sparkplug protobuf schema
    pysparkplug ships (pysparkplug itself does not decode Templates).
    `aliases` maps this edge's aliases to names, from its births."""
    p = pb.Payload()
    p.ParseFromString(raw)

    def metric(m):
        name = m.name if m.HasField("name") else aliases.get(m.alias)
        if m.HasField("alias") and m.HasField("name"):
            aliases[m.alias] = m.name
        out = {
            "name": name,
            "alias": m.alias if m.HasField("alias") else None,
            "datatype": m.datatype if m.HasField("datatype") else None,
            "is_null": m.is_null,
            "is_historical": m.is_historical,
        }
        if m.HasField("properties"):
            for key, value in zip(m.properties.keys, m.properties.values):
                if key == "engUnit":
                    out["unit"] = value.string_value
        kind = m.WhichOneof("value")
        if kind == "template_value":
            t = m.template_value
            out["template"] = {
                "version": t.version if t.HasField("version") else None,
                "template_ref": t.template_ref if t.HasField("template_ref") else None,
                "is_definition": t.is_definition if t.HasField("is_definition") else None,
                "metrics": [metric(member) for member in t.metrics],
            }
        elif kind is not None:
            out["value"] = getattr(m, kind)
        return out

    return {"seq": p.seq if p.HasField("seq") else None, "timestamp": p.timestamp,
            "metrics": [metric(m) for m in p.metrics]}


def instance_command(instance):
    """A DCMD addressing Template members through their instance:
    {"alias" or "name", "template_ref", "members": [{"name", "datatype", "value"}]}."""
    p = pb.Payload()
    p.timestamp = sp.get_current_timestamp()
    m = p.metrics.add()
    if "alias" in instance:
        m.alias = instance["alias"]
    else:
        m.name = instance["name"]
    m.datatype = 19
    m.template_value.template_ref = instance["template_ref"]
    m.template_value.is_definition = False
    for member in instance["members"]:
        x = m.template_value.metrics.add()
        x.name = member["name"]
        x.datatype = sp.DataType[member["datatype"]].value
        if member["datatype"] in ("FLOAT",):
            x.float_value = member["value"]
        elif member["datatype"] in ("DOUBLE",):
            x.double_value = member["value"]
        elif member["datatype"] == "BOOLEAN":
            x.boolean_value = member["value"]
        else:
            x.int_value = member["value"]
    return p.SerializeToString()


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
    template_aliases = {}

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
            if has_templates(raw):
                if kind in ("NBIRTH", "DBIRTH"):
                    # What pysparkplug can read of the birth, for the plain
                    # metrics of later data.
                    plain = pb.Payload()
                    plain.ParseFromString(raw)
                    kept = [m for m in plain.metrics if not m.HasField("template_value")]
                    del plain.metrics[:]
                    plain.metrics.extend(kept)
                    births[edge] = decoder.decode(plain.SerializeToString())
                decoded = template_json(raw, template_aliases.setdefault(edge, {}))
                decoded.update({"topic": msg.topic, "type": kind, "compressed": compressed,
                                "templates": True})
                emit(decoded)
                return
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
            if "instance" in cmd:
                client.publish(cmd["topic"], instance_command(cmd["instance"]), qos=0)
                continue
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
