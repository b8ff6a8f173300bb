import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decide } from '../src/logic.js';

const order = (payload) => ({ id: 'evt_1', kind: 'order.created', payload: JSON.stringify(payload) });

test('fires at the minimum with the body', () => {
  const decision = decide(order({ id: 'A-1', amount: 120, customer: { email: 'a@example.com' } }), { min_amount: 100 });
  assert.deepEqual(JSON.parse(decision.send.body), { order: 'A-1', amount: 120, email: 'a@example.com', lang: 'javascript' });
});

test('skips below the minimum', () => {
  assert.deepEqual(decide(order({ id: 'A-2', amount: 20 }), { min_amount: 100 }), { skip: 'amount 20 is below 100' });
});
