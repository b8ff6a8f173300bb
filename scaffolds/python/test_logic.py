import json
import unittest

from logic import decide


class DecideTest(unittest.TestCase):
    def test_fires_at_the_minimum_with_the_body(self):
        payload = json.dumps({"id": "A-1", "amount": 120, "customer": {"email": "a@example.com"}})
        decision = decide("evt_1", payload, {"min_amount": 100})
        self.assertEqual(
            json.loads(decision["send"]["body"]),
            {"order": "A-1", "amount": 120, "email": "a@example.com", "lang": "python"},
        )

    def test_skips_below_the_minimum(self):
        decision = decide("evt_2", json.dumps({"id": "A-2", "amount": 20}), {"min_amount": 100})
        self.assertEqual(decision, {"skip": "amount 20 is below 100"})


if __name__ == "__main__":
    unittest.main()
