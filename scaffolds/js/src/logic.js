// The plugin's decision as a plain function, so `npm test` runs it under Node.
// It fires for orders whose amount reaches `min_amount` in the webhook's config.

/**
 * @param {{id: string, kind: string, payload: string}} event
 * @param {{min_amount?: number}} config
 * @returns {{skip: string} | {send: {body: string, contentType: string, headers: [string, string][]}}}
 */
export function decide(event, config) {
  const order = JSON.parse(event.payload);
  const minimum = config.min_amount ?? 0;
  if ((order.amount ?? 0) < minimum) {
    return { skip: `amount ${order.amount} is below ${minimum}` };
  }
  const body = JSON.stringify({
    order: order.id,
    amount: order.amount,
    email: order.customer?.email ?? null,
    lang: 'javascript',
  });
  return {
    send: { body, contentType: 'application/json', headers: [['x-plugin-lang', 'javascript']] },
  };
}
