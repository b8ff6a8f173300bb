"""The plugin's decision as a plain function, so `python -m unittest` runs it without a host.

It fires for orders whose amount reaches `min_amount` in the webhook's config.
"""

import json


def decide(event_id: str, payload: str, config: dict) -> dict:
    order = json.loads(payload)
    minimum = config.get("min_amount", 0)
    amount = order.get("amount", 0)
    if amount < minimum:
        return {"skip": f"amount {amount} is below {minimum}"}
    body = json.dumps(
        {
            "order": order.get("id"),
            "amount": amount,
            "email": (order.get("customer") or {}).get("email"),
            "lang": "python",
        }
    )
    return {
        "send": {
            "body": body,
            "content_type": "application/json",
            "headers": [("x-plugin-lang", "python")],
        }
    }
