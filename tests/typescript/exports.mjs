// The module exports what static/pushskip.d.ts declares, and the client has every
// method the declaration names (a declaration that drifts from the code fails here).
import { readFileSync } from 'node:fs';

const here = new URL('.', import.meta.url);
const dts = readFileSync(new URL('../../static/pushskip.d.ts', here), 'utf8');
const module = await import(new URL('../../static/pushskip.js', here));

const declared = new Set(
  [...dts.matchAll(/^export declare (?:class|function) (\w+)/gm)].map((m) => m[1]),
);
declared.add('default');
const exported = new Set(Object.keys(module));
const missing = [...declared].filter((name) => !exported.has(name));
const undeclared = [...exported].filter((name) => !declared.has(name));

const body = dts.slice(dts.indexOf('export declare class PushskipClient'));
const classBody = body.slice(0, body.indexOf('\n}\n'));
const methods = [...classBody.matchAll(/^  (\w+)(?:<[^>]*>)?\(/gm)].map((m) => m[1]);
const absent = methods.filter((name) => typeof module.PushskipClient.prototype[name] !== 'function');

const problems = [];
if (missing.length) problems.push(`declared but not exported: ${missing.join(', ')}`);
if (undeclared.length) problems.push(`exported but not declared: ${undeclared.join(', ')}`);
if (absent.length) problems.push(`PushskipClient methods declared but missing: ${absent.join(', ')}`);
if (module.default !== module.PushskipClient) problems.push('the default export is not PushskipClient');
if (problems.length) {
  console.error(`pushskip.d.ts does not match pushskip.js:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log(`pushskip.d.ts matches pushskip.js (${declared.size} exports, ${methods.length} methods)`);
