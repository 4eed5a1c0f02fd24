// A catalogue of MODELS versions (models cat_00 ... cat_NN, built by loadtest/memory_pool)
// under Zipf-distributed popularity: model k (from 1) is asked with weight 1 / k^ZIPF_S.
// MODE=infer: each request just infers, and the gateway loads what it must.
// MODE=explicit: Triton's way, a client that loads the model through the repository extension
// before each request and unloads it after.
// VUS users for DURATION; the end-of-test summary goes to SUMMARY (JSON).
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL } from './lib.js';

const MODELS = parseInt(__ENV.MODELS || '40', 10);
const ZIPF_S = parseFloat(__ENV.ZIPF_S || '1.1');
const MODE = __ENV.MODE || 'infer';
const WIDTH = parseInt(__ENV.WIDTH || '256', 10);

const ROW = Array.from({ length: WIDTH }, (_, i) => (i % 7) / 7);
// A request may wait for a load: 30 s at most, as the gateway's own default.
const BODY = JSON.stringify({
  inputs: [{ name: 'x', shape: [1, WIDTH], datatype: 'FP32', data: ROW }],
  parameters: { timeout: 30000000 },
});
const HEADERS = { headers: { 'Content-Type': 'application/json' }, timeout: '40s' };

const weights = Array.from({ length: MODELS }, (_, k) => 1 / Math.pow(k + 1, ZIPF_S));
const total = weights.reduce((a, b) => a + b, 0);
const cumulative = [];
weights.reduce((sum, w, k) => (cumulative[k] = sum + w / total), 0);

function pick() {
  const u = Math.random();
  const k = cumulative.findIndex((c) => u <= c);
  return `cat_${String(k < 0 ? MODELS - 1 : k).padStart(2, '0')}`;
}

export const options = {
  scenarios: {
    zipf: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '8', 10),
      duration: __ENV.DURATION || '60s',
    },
  },
  summaryTrendStats: ['min', 'med', 'p(90)', 'p(99)', 'max', 'avg'],
};

export default function () {
  const model = pick();
  if (MODE === 'explicit') {
    const load = http.post(`${BASE_URL}/v2/repository/models/${model}/load`, '{}', HEADERS);
    check(load, { 'load is 200': (r) => r.status === 200 });
  }
  const response = http.post(`${BASE_URL}/v2/models/${model}/infer`, BODY, HEADERS);
  check(response, { 'infer is 200': (r) => r.status === 200 });
  if (MODE === 'explicit') {
    http.post(`${BASE_URL}/v2/repository/models/${model}/unload`, '{}', HEADERS);
  }
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY || 'memory_pool_summary.json']: JSON.stringify(data) };
}
