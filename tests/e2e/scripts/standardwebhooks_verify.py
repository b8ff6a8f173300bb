"""Checks wasmhooks' deliveries with the independent `standardwebhooks` package (PyPI).

Reads a JSON list of cases {secret, headers, body, expect: "accept" | "reject"} from the file
named on the command line; prints one line per case whose outcome differs; exits 1 if any.
"""

import json
import sys

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        cases = json.load(f)
    wrong = 0
    for i, case in enumerate(cases):
        try:
            Webhook(case["secret"]).verify(case["body"], case["headers"], json_parse=False)
            outcome = "accept"
        except WebhookVerificationError as e:
            outcome = f"reject ({e})"
        if outcome.split(" ")[0] != case["expect"]:
            wrong += 1
            print(f"case {i} ({case['what']}): expected {case['expect']}, got {outcome}")
    print(f"{len(cases)} cases, {wrong} wrong")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
