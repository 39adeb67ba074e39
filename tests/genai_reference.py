"""genai-prices' own total for a usage: the reference devmeter's prices are checked
against (tests/test_pricing.py, tests/test_import_bulk.py, tests/test_import_history.py)."""

from __future__ import annotations

import warnings
from datetime import datetime
from decimal import Decimal

import genai_prices

from devmeter import pricing
from devmeter.usage import Usage


def genai_total(provider: str, model: str, usage: Usage, when: datetime) -> Decimal:
    """genai-prices' total price; raises where genai-prices refuses the usage for the
    model. Its deprecation warnings are not the test's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return genai_prices.calc_price(
            pricing._genai_usage(usage), model_ref=model, provider_id=provider,
            genai_request_timestamp=when,
        ).total_price  # fmt: skip
