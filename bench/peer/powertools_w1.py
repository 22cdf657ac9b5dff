"""The peer of the W1 workload (issue 16): an SQS batch of order events
through Powertools for AWS Lambda (Python) as its documentation writes it,
`process_partial_response` with a `BatchProcessor` and a record handler
under `@idempotent_function` on `DynamoDBPersistenceLayer`, each order written
to the state table by the same conditional update (the apply rule) that
sqs-consumer commits.

Usage: powertools_w1.py ENDPOINT STATE_TABLE IDEMPOTENCY_TABLE EVENT_FILE [sqs|stream|lines]

The other modes are the peer of the pipeline's other steps, each write under
`@idempotent_function` as its documentation writes it: `stream`, a DynamoDB
stream event of orders through `process_partial_response`, each record's
customer-totals delta one `UpdateItem` (keyed by the record's `eventID`);
`lines`, an NDJSON object's order events (EVENT_FILE is the object), each
line's order written by the same update as W1's (keyed by its `eventId`).

Prints one JSON line: records, failures, applied, stale, requests (every
HTTP request boto3 sent to DynamoDB, retries included, counted on botocore's
`before-send` hook), seconds (wall time of the handler call alone, imports
and client construction excluded, as the Rust side times only
`sqs_consumer::handle`) and cpu_seconds of this process over the same call.
"""

import decimal
import json
import re
import sys
import time
from datetime import datetime, timezone

import boto3
from botocore.config import Config
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

STATUSES = {"PLACED", "PAID", "SHIPPED", "CANCELLED"}
CURRENCY = re.compile(r"^[A-Z]{3}$")


class Context:
    """The part of a Lambda context Powertools reads."""

    function_name = "powertools-w1"
    memory_limit_in_mb = 128
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:powertools-w1"
    aws_request_id = "bench"

    @staticmethod
    def get_remaining_time_in_millis():
        return 900_000


def main():
    endpoint, state_table, idempotency_table, event_file = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else "sqs"
    with open(event_file, "rb") as f:
        if mode == "lines":
            event = {"Records": [json.loads(line) for line in f if line.strip()]}
        else:
            event = json.load(f)
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    dynamodb = session.client("dynamodb", endpoint_url=endpoint, config=Config(retries={"mode": "standard"}))
    requests = [0]

    def count(**_):
        requests[0] += 1

    dynamodb.meta.events.register("before-send.dynamodb", count)
    persistence = DynamoDBPersistenceLayer(table_name=idempotency_table, boto3_client=dynamodb)
    if mode == "stream":
        return report(event, stream(dynamodb, state_table, persistence, event), requests)
    # The same key as sqs-consumer's default (`/eventId` of the body) and a
    # payload hash, as ours has.
    config = IdempotencyConfig(
        event_key_jmespath="powertools_json(body).eventId",
        payload_validation_jmespath="powertools_json(body)",
        raise_on_no_idempotency_key=True,
    )
    line_config = IdempotencyConfig(
        event_key_jmespath="eventId", payload_validation_jmespath="@", raise_on_no_idempotency_key=True
    )
    processor = BatchProcessor(event_type=EventType.SQS)
    outcomes = {"applied": 0, "stale": 0}

    @idempotent_function(data_keyword_argument="order", config=line_config, persistence_store=persistence)
    def apply_line(order):
        return apply_order(order)

    @idempotent_function(data_keyword_argument="record", config=config, persistence_store=persistence)
    def record_handler(record: SQSRecord):
        return apply_order(json.loads(record.body))

    def apply_order(order):
        for field in ("eventId", "orderId", "customerId", "status", "amount", "currency", "occurredAt"):
            if not isinstance(order.get(field), str) or not order[field]:
                raise ValueError(f"{field} is required")
        if order["status"] not in STATUSES or not CURRENCY.match(order["currency"]):
            raise ValueError("invalid status or currency")
        amount = decimal.Decimal(str(order["amount"]))
        if amount < 0 or amount.as_tuple().exponent < -2:
            raise ValueError("invalid amount")
        occurred = datetime.fromisoformat(order["occurredAt"]).astimezone(timezone.utc)
        occurred_at = occurred.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        try:
            dynamodb.update_item(
                TableName=state_table,
                Key={"pk": {"S": f"ORDER#{order['orderId']}"}, "sk": {"S": "ORDER"}},
                UpdateExpression=(
                    "SET entity = :entity, orderId = :orderId, customerId = :customerId, #status = :status, "
                    "amount = :amount, currency = :currency, occurredAt = :occurredAt, lastEventId = :eventId, "
                    "version = if_not_exists(version, :zero) + :one"
                ),
                ConditionExpression=(
                    "attribute_not_exists(pk) OR occurredAt < :occurredAt "
                    "OR (occurredAt = :occurredAt AND lastEventId < :eventId)"
                ),
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":entity": {"S": "order"},
                    ":orderId": {"S": order["orderId"]},
                    ":customerId": {"S": order["customerId"]},
                    ":status": {"S": order["status"]},
                    ":amount": {"N": str(amount)},
                    ":currency": {"S": order["currency"]},
                    ":occurredAt": {"S": occurred_at},
                    ":eventId": {"S": order["eventId"]},
                    ":zero": {"N": "0"},
                    ":one": {"N": "1"},
                },
            )
            outcomes["applied"] += 1
            return {"outcome": "applied"}
        except dynamodb.exceptions.ConditionalCheckFailedException:
            outcomes["stale"] += 1
            return {"outcome": "stale"}

    context = Context()
    config.register_lambda_context(context)
    line_config.register_lambda_context(context)

    def run():
        if mode == "lines":
            for order in event["Records"]:
                apply_line(order=order)
            return 0, outcomes
        response = process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
        return len(response.get("batchItemFailures", [])), outcomes

    report(event, run, requests)


def stream(dynamodb, state_table, persistence, event):
    """The peer of stream-aggregator: each stream record of an order adds
    its delta (count and amount of a non-CANCELLED order, new image minus old)
    to its customer's totals, one `UpdateItem` under `@idempotent_function`."""
    config = IdempotencyConfig(event_key_jmespath="eventID", raise_on_no_idempotency_key=True)
    config.register_lambda_context(Context())
    processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
    outcomes = {"applied": 0, "stale": 0}

    def contribution(image):
        if not image or image.get("status") == "CANCELLED":
            return 0, decimal.Decimal(0)
        return 1, decimal.Decimal(str(image["amount"]))

    @idempotent_function(data_keyword_argument="record", config=config, persistence_store=persistence)
    def record_handler(record: DynamoDBRecord):
        new, old = record.dynamodb.new_image or {}, record.dynamodb.old_image or {}
        customer = (new or old)["customerId"]
        (n1, a1), (n0, a0) = contribution(new), contribution(old)
        currency = (new or old)["currency"]
        dynamodb.update_item(
            TableName=state_table,
            Key={"pk": {"S": f"CUSTOMER#{customer}"}, "sk": {"S": "TOTALS"}},
            UpdateExpression="SET entity = :entity ADD orderCount :count, #total :amount",
            ExpressionAttributeNames={"#total": f"total{currency}"},
            ExpressionAttributeValues={
                ":entity": {"S": "customer_totals"},
                ":count": {"N": str(n1 - n0)},
                ":amount": {"N": str(a1 - a0)},
            },
        )
        outcomes["applied"] += 1
        return {"outcome": "applied"}

    def run():
        response = process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=Context()
        )
        return len(response.get("batchItemFailures", [])), outcomes

    return run


def report(event, run, requests):
    """Times `run` (the handler call alone) and prints the JSON line."""
    cpu_before = time.process_time()
    started = time.perf_counter()
    failures, outcomes = run()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_before
    print(
        json.dumps(
            {
                "records": len(event["Records"]),
                "failures": failures,
                "applied": outcomes["applied"],
                "stale": outcomes["stale"],
                "requests": requests[0],
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
