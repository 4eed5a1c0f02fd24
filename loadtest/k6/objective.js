// Offered load on `digits` through its policy (no version named): a ramp from RATE/8 to RATE
// requests/s over RAMP seconds, then HOLD seconds at RATE. Counts, for the hold alone, what
// each version served and what was refused, so that the objective and the score policies can
// be compared over the same load (gateway/tests/it/objective.rs, loadtest/objective).
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e RATE=400 -e RAMP=4 -e HOLD=10 \
//     -e SUMMARY=out.json loadtest/k6/objective.js
import http from 'k6/http';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const RATE = Number(__ENV.RATE || 400);
const RAMP = Number(__ENV.RAMP || 4);
const HOLD = Number(__ENV.HOLD || 10);
const VERSIONS = (__ENV.VERSIONS || '1,3').split(',');

// One row of the digits test set's range; which row does not matter to capacity.
const BODY = JSON.stringify({
  inputs: [{ name: 'x', shape: [1, 64], datatype: 'FP32', data: Array.from({ length: 64 }, (_, i) => ((i * 7) % 17) / 16) }],
});

const served = Object.fromEntries(VERSIONS.map((v) => [v, new Counter(`served_${v}`)]));
const refused = new Counter('refused');
const failed = new Counter('failed');

// A threshold on a tagged metric is what makes k6 report it on its own in the summary.
const holdOnly = Object.fromEntries(
  [...VERSIONS.map((v) => `served_${v}`), 'refused', 'failed'].map((m) => [`${m}{scenario:hold}`, ['count>=0']]),
);

export const options = {
  discardResponseBodies: false,
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: Math.max(1, Math.round(RATE / 8)),
      timeUnit: '1s',
      preAllocatedVUs: 40,
      maxVUs: 200,
      stages: [{ target: RATE, duration: `${RAMP}s` }],
    },
    hold: {
      executor: 'constant-arrival-rate',
      startTime: `${RAMP}s`,
      rate: RATE,
      timeUnit: '1s',
      duration: `${HOLD}s`,
      preAllocatedVUs: 40,
      maxVUs: 200,
    },
  },
  thresholds: holdOnly,
};

export default function () {
  const response = http.post(`${BASE_URL}/v2/models/digits/infer`, BODY, {
    headers: { 'Content-Type': 'application/json' },
    timeout: '10s',
  });
  if (response.status === 200) {
    const version = response.json('model_version');
    if (served[version]) served[version].add(1);
  } else if (response.status === 429) {
    refused.add(1);
  } else {
    failed.add(1);
  }
}

export function handleSummary(data) {
  const count = (name) => (data.metrics[`${name}{scenario:hold}`] || { values: { count: 0 } }).values.count;
  const hold = {
    rate: RATE,
    seconds: HOLD,
    served: Object.fromEntries(VERSIONS.map((v) => [v, count(`served_${v}`)])),
    refused: count('refused'),
    failed: count('failed'),
    dropped_iterations: (data.metrics.dropped_iterations || { values: { count: 0 } }).values.count,
  };
  return { [__ENV.SUMMARY || 'objective_summary.json']: JSON.stringify(hold) };
}
