// The canary split, as served: requests that name no version, counted by the model_version the
// gateway answers with, against the expected shares. EXPECTED is JSON of version -> share
// (default {"1": 0.9, "2": 0.1}); MODEL (default mlp). Set the split first through the registry
// (e.g. `switchyard traffic set mlp 1=90 2=10`); without weights the highest version serves all
// and the run fails.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, MLP_BODY } from './lib.js';

const expected = JSON.parse(__ENV.EXPECTED || '{"1": 0.9, "2": 0.1}');
const model = __ENV.MODEL || 'mlp';
const served = new Counter('served_by_version');
const tolerance = Number(__ENV.TOLERANCE || 0.03);

const requests = Number(__ENV.REQUESTS || 4000);

// Each version's count must land within the tolerance of its share: a wrong split fails the run.
const thresholds = { checks: ['rate==1'] };
for (const [version, share] of Object.entries(expected)) {
  const low = Math.floor(Math.max(0, share - tolerance) * requests);
  const high = Math.ceil(Math.min(1, share + tolerance) * requests);
  thresholds[`served_by_version{version:${version}}`] = [`count>=${low}`, `count<=${high}`];
}

export const options = { vus: 8, iterations: requests, thresholds };

export default function () {
  const response = http.post(`${BASE_URL}/v2/models/${model}/infer`, MLP_BODY, {
    headers: { 'Content-Type': 'application/json' },
  });
  check(response, { 'infer is 200': (r) => r.status === 200 });
  if (response.status === 200) {
    served.add(1, { version: String(response.json('model_version')) });
  }
}

export function handleSummary(data) {
  const total = data.metrics.served_by_version ? data.metrics.served_by_version.values.count : 0;
  const lines = ['version | expected | served'];
  let ok = total > 0;
  for (const [version, share] of Object.entries(expected)) {
    const metric = data.metrics[`served_by_version{version:${version}}`];
    const count = metric ? metric.values.count : 0;
    const actual = total ? count / total : 0;
    lines.push(`${version} | ${(share * 100).toFixed(1)}% | ${(actual * 100).toFixed(1)}%`);
    if (Math.abs(actual - share) > tolerance) ok = false;
  }
  lines.push(ok ? 'canary split: as expected' : 'canary split: NOT as expected');
  return { stdout: lines.join('\n') + '\n' };
}
