// cb-world: guard
// Guard `js-require-fields` (JavaScript): allows a firing only when every
// JSON pointer in `config.fields` resolves to a non-null value in the token's
// data. With `config.check_workflow`, it first reads the token's workflow
// through `token-reader.get-workflow` (denying `unknown-workflow` when that
// fails) and names it in a `missing-fields` denial.
//
// Config: `{"fields": ["/amount", "/meta/cost_center"], "check_workflow": true}`.
// Deny codes: `bad-config`, `unknown-workflow`, `missing-fields` (details
// `{"missing": [...], "revision": <token revision>, "workflow_name"?}`).
// WIT u64 values (revision, versions) arrive as BigInt: see `toJson`.
import { getWorkflow } from 'circuit-breaker:plugin/token-reader@0.2.0';

// JSON.stringify throws on BigInt: write u64s as numbers, as strings past 2^53.
const toJson = (value) =>
  JSON.stringify(value, (_, v) =>
    typeof v === 'bigint' ? (v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()) : v);

const deny = (code, message, details = {}) => ({ tag: 'deny', val: { code, message, details: toJson(details) } });

// RFC 6901: `undefined` when the pointer does not resolve.
function lookup(doc, pointer) {
  if (pointer === '') return doc;
  if (!pointer.startsWith('/')) return undefined;
  let node = doc;
  for (const raw of pointer.slice(1).split('/')) {
    const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (node === null || typeof node !== 'object' || !Object.hasOwn(node, key)) return undefined;
    node = node[key];
  }
  return node;
}

export function evaluate(ctx) {
  const config = JSON.parse(ctx.config) ?? {};
  const fields = config.fields;
  if (!Array.isArray(fields) || !fields.every((f) => typeof f === 'string')) {
    return deny('bad-config', 'config needs `fields`: a list of JSON pointers');
  }
  const details = { revision: ctx.token.revision };
  if (config.check_workflow === true) {
    let workflow;
    try {
      workflow = getWorkflow(ctx.token.workflowId);
    } catch (e) {
      const err = e.payload ?? e; // a ComponentError; payload is the WIT `error`: {tag, val}
      return deny('unknown-workflow', `workflow ${ctx.token.workflowId}: ${err.tag ?? 'error'}: ${err.val ?? err}`);
    }
    details.workflow_name = workflow.name;
  }
  const data = JSON.parse(ctx.token.data);
  const missing = fields.filter((f) => lookup(data, f) == null);
  if (missing.length === 0) return { tag: 'allow' };
  const where = details.workflow_name === undefined ? '' : ` in "${details.workflow_name}"`;
  return deny('missing-fields', `missing field(s)${where}: ${missing.join(', ')}`, { missing, ...details });
}
