// mlp at a constant rate, for the payload capture's cost: the same load with no capture, with
// a capture to a file, and with the file beside HTTP sinks that are down or slow.
//
// RPS (default 500) for DURATION (default 20s) on BASE_URL. The summary (SUMMARY, a JSON
// file) holds the answers by status and the successful ones' latency.
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { BASE_URL, MLP_BODY } from './lib.js';

const ok = new Counter('answered_ok');
const failed = new Counter('answered_failed');
const latency = new Trend('latency', true);

export const options = {
  scenarios: {
    mlp: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RPS || 500),
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 16,
      maxVUs: 256,
    },
  },
  summaryTrendStats: ['p(50)', 'p(99)', 'max', 'count'],
};

export default function () {
  const response = http.post(`${BASE_URL}/v2/models/mlp/infer`, MLP_BODY, {
    headers: { 'Content-Type': 'application/json' },
  });
  if (response.status === 200) {
    ok.add(1);
    latency.add(response.timings.duration);
  } else {
    failed.add(1);
  }
}

export function handleSummary(data) {
  const count = (name) => (data.metrics[name] ? data.metrics[name].values.count : 0);
  const trend = data.metrics.latency;
  return {
    [__ENV.SUMMARY || '/dev/stdout']: JSON.stringify({
      ok: count('answered_ok'),
      failed: count('answered_failed'),
      dropped_iterations: count('dropped_iterations'),
      p50_ms: trend ? trend.values['p(50)'] : null,
      p99_ms: trend ? trend.values['p(99)'] : null,
    }),
  };
}
