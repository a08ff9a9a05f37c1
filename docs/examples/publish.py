"""Publish tiendo events to Kafka from Python: an example for registry developers.

Builds tiendo.v1.RecordDigitized (or ProcedureCompleted) events and produces them with
confluent-kafka. Run it through scripts/python-examples, which sets up a venv and generates
events_pb2.py from proto/tiendo/v1/events.proto; in your own project, generate it with

    python -m grpc_tools.protoc -I<dir holding tiendo/v1/events.proto> --python_out=gen \\
        tiendo/v1/events.proto

Three encodings of the value:
  protobuf   the message's bytes alone (what tiendo reads)
  confluent  Confluent Schema Registry framing: byte 0, the schema id (4 bytes, big-endian),
             the message indexes, then the message's bytes
  json       the proto3 JSON mapping (camelCase names), UTF-8

The key is the province code, so one province's events stay in order on one partition.
"""

import argparse
import json
import pathlib
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from jsonschema import Draft202012Validator

from tiendo.v1 import events_pb2


SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "schema"


def record(args, event_id, now):
    return events_pb2.RecordDigitized(
        event_id=event_id,
        province_code=args.province,
        code_scheme=events_pb2.CODE_SCHEME_PROVINCES_34,
        dataset=args.dataset,
        record_count=1,
        occurred_at=now,
        source_system=args.source,
    )


def procedure(args, event_id, now):
    return events_pb2.ProcedureCompleted(
        event_id=event_id,
        province_code=args.province,
        code_scheme=events_pb2.CODE_SCHEME_PROVINCES_34,
        channel=events_pb2.CHANNEL_ONLINE_END_TO_END,
        completed_at=now,
        on_time=True,
        source_system=args.source,
    )


def encoder(args, message_type):
    """A function from a message to the bytes of the Kafka value."""
    if args.encoding == "protobuf":
        return lambda msg: msg.SerializeToString()
    if args.encoding == "json":
        # Checked against tiendo's JSON Schema before sending: a bad event fails here, at the
        # source, rather than in tiendo's dead-letter topic.
        name = message_type.DESCRIPTOR.full_name
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)

        def to_json(msg):
            text = json_format.MessageToJson(msg, indent=None)
            validator.validate(json.loads(text))
            return text.encode("utf-8")

        return to_json
    # confluent: "mock://" is an in-process registry (no server), which hands out schema ids
    # starting at 1; give --schema-registry to register the schema with a real one.
    registry = SchemaRegistryClient.new_client({"url": args.schema_registry})
    serializer = ProtobufSerializer(
        message_type,
        registry,
        {
            # Registers the schema under "<topic>-value" on first use.
            "auto.register.schemas": True,
            "subject.name.strategy.type": "TOPIC",
        },
    )
    ctx = SerializationContext(args.topic, MessageField.VALUE)
    return lambda msg: serializer(msg, ctx)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092", help="bootstrap servers")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--kind", choices=["records", "procedures"], default="records")
    parser.add_argument(
        "--encoding", choices=["protobuf", "confluent", "json"], default="protobuf"
    )
    parser.add_argument("--count", type=int, default=1, help="how many events")
    parser.add_argument(
        "--province", default="56", help="province code in the 34-unit table (56: Khánh Hòa)"
    )
    parser.add_argument("--dataset", default="civil_status")
    parser.add_argument("--source", default="hotich-bo-tu-phap", help="source_system")
    parser.add_argument("--id-prefix", default="example", help="event ids are PREFIX-0, PREFIX-1, ...")
    parser.add_argument(
        "--schema-registry",
        default="mock://",
        metavar="URL",
        help="Schema Registry for --encoding confluent (default: an in-process mock)",
    )
    args = parser.parse_args()

    build = record if args.kind == "records" else procedure
    message_type = events_pb2.RecordDigitized if args.kind == "records" else events_pb2.ProcedureCompleted
    encode = encoder(args, message_type)

    producer = Producer(
        {
            "bootstrap.servers": args.brokers,
            # No duplicates or reordering from the producer's own retries.
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    failed = []

    def delivered(err, msg):
        if err is not None:
            failed.append(err)
            print(f"delivery failed: {err}", file=sys.stderr)

    for i in range(args.count):
        now = Timestamp()
        now.GetCurrentTime()
        msg = build(args, f"{args.id_prefix}-{i}", now)
        # A re-send of an event must carry the same event_id: tiendo counts it once.
        producer.produce(
            args.topic,
            key=args.province.encode("utf-8"),
            value=encode(msg),
            on_delivery=delivered,
        )
        producer.poll(0)

    remaining = producer.flush(30)
    if remaining:
        print(f"{remaining} messages not delivered within 30 s", file=sys.stderr)
        return 1
    if failed:
        return 1
    print(f"published {args.count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
