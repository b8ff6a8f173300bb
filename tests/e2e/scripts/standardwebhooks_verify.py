"""Checks wasmhooks' deliveries with independent implementations from PyPI.

`v1` (HMAC) cases go through the `standardwebhooks` package. It has no `v1a` (Ed25519)
support, so cases with a `whpk_` public key are checked here with `cryptography`, following
the specification: the `v1a,` signature is Ed25519 over `{id}.{timestamp}.{body}`.

Reads a JSON list of cases {what, secret | public_key, headers, body, expect: "accept" |
"reject"} from the file named on the command line; prints one line per case whose outcome
differs; exits 1 if any.
"""

import base64
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def verify_v1a(public_key: str, body: str, headers: dict) -> None:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("whpk_")))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(signature), content)
            return
        except InvalidSignature:
            continue
    raise WebhookVerificationError("No matching v1a signature found")


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        cases = json.load(f)
    wrong = 0
    for i, case in enumerate(cases):
        try:
            if "public_key" in case:
                verify_v1a(case["public_key"], case["body"], case["headers"])
            else:
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
