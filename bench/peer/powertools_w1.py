"""The peer of the W1 workload (issue 16): an SQS batch of order events
through Powertools for AWS Lambda (Python) as its documentation writes it,
`process_partial_response` with a `BatchProcessor` and a record handler
under `@idempotent_function` on `DynamoDBPersistenceLayer`, each order written
to the state table by the same conditional update (the apply rule) that
sqs-consumer commits.

Usage: powertools_w1.py ENDPOINT STATE_TABLE IDEMPOTENCY_TABLE EVENT_FILE

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
    with open(event_file, "rb") as f:
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
    # The same key as sqs-consumer's default (`/eventId` of the body) and a
    # payload hash, as ours has.
    config = IdempotencyConfig(
        event_key_jmespath="powertools_json(body).eventId",
        payload_validation_jmespath="powertools_json(body)",
        raise_on_no_idempotency_key=True,
    )
    processor = BatchProcessor(event_type=EventType.SQS)
    outcomes = {"applied": 0, "stale": 0}

    @idempotent_function(data_keyword_argument="record", config=config, persistence_store=persistence)
    def record_handler(record: SQSRecord):
        order = json.loads(record.body)
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
    cpu_before = time.process_time()
    started = time.perf_counter()
    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_before
    print(
        json.dumps(
            {
                "records": len(event["Records"]),
                "failures": len(response.get("batchItemFailures", [])),
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
