"""The wire APIs `kms serve` speaks, tried in this order; each module is one table."""

from __future__ import annotations

from kmsserve.wire import WireApi


def all_apis() -> list[WireApi]:
    from kmsserve.apis import aws, facade, vendor

    return [aws.API, vendor.API, facade.API]
