// cb-world: action
// Action `js-auto-advance` (JavaScript): after a transition, asks the host
// to fire `config.transition` on the same token (its guards and CAS apply),
// with input `{"by": "js-auto-advance", "event": <event sequence>,
// "produced": [...]}`, and logs it. The JavaScript twin of
// `py-auto-advance`: an action's follow-up in each guest language.
//
// Config: `{"transition": "pay"}`. Fails (and is retried) without
// `transition` or when the request is refused.
// WIT: an exported `result<_, string>` is ok when `run` returns, err with
// the thrown string; u64 values (event-sequence) arrive as BigInt.
import { request } from 'circuit-breaker:plugin/transitions@0.2.0';
import { log } from 'circuit-breaker:plugin/log@0.2.0';

// JSON.stringify throws on BigInt: write u64s as numbers, as strings past 2^53.
const toJson = (value) =>
  JSON.stringify(value, (_, v) =>
    typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()) : v);

export function run(ctx) {
  const config = JSON.parse(ctx.config) ?? {};
  const transition = config.transition;
  if (typeof transition !== 'string' || transition === '') {
    throw 'config.transition is required';
  }
  const token = ctx.token;
  const input = { by: 'js-auto-advance', event: ctx.eventSequence, produced: ctx.produced };
  try {
    request(token.workflowId, token.id, transition, toJson(input));
  } catch (e) {
    const err = e.payload ?? e; // a ComponentError; payload is the WIT `error`: {tag, val}
    throw `requesting ${transition} failed: ${err.tag ?? 'error'}: ${err.val ?? err}`;
  }
  log('info', `requested ${transition} for ${token.id}`);
}
