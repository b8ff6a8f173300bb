// The component's exports: the wasmhooks:plugin/webhook world, wired to logic.js.
import { log, config } from 'wasmhooks:plugin/host@0.1.0';
import { decide } from './logic.js';

export function features() {
  return [];
}

export function onEvent(event) {
  const decision = decide(event, JSON.parse(config() || '{}'));
  if ('skip' in decision) {
    return { tag: 'skip', val: decision.skip };
  }
  log('info', `order ${event.id} qualifies`);
  const { body, contentType, headers } = decision.send;
  return {
    tag: 'send',
    val: [{ headers, body: new TextEncoder().encode(body), contentType }],
  };
}

export function onBatch(events) {
  const requests = [];
  for (const event of events) {
    const decision = onEvent(event);
    if (decision.tag === 'send') requests.push(...decision.val);
  }
  return requests.length ? { tag: 'send', val: requests } : { tag: 'skip', val: 'nothing qualified' };
}

export function onResponse(response) {
  return { tag: 'use-default' };
}
