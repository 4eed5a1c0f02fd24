// Two tenants' keys against one gateway, or one key against two gateways of a cluster.
//
//   PHASE=alone     the steady key alone at STEADY_RPS;
//   PHASE=together  the steady key at STEADY_RPS beside the noisy key at NOISY_RPS, far over
//                   its limit;
//   PHASE=cluster   the shared key at RPS_A on BASE_URL and RPS_B on BASE_URL_B;
//   PHASE=high      priority-1 requests alone at HIGH_RPS on MODEL (default mlp_heavy);
//   PHASE=overload  the same beside priority-10 requests at LOW_RPS, more than MODEL serves.
//
// Keys come in STEADY_KEY, NOISY_KEY, SHARED_KEY; DURATION (default 20s). The summary
// (SUMMARY, a JSON file) holds each scenario's answers by status and the steady key's latency.
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { BASE_URL, MLP_BODY } from './lib.js';

const phase = __ENV.PHASE || 'together';
const duration = __ENV.DURATION || '20s';
const BASE_URL_B = __ENV.BASE_URL_B || BASE_URL;

const answered = {
  steady: [new Counter('steady_ok'), new Counter('steady_refused'), new Counter('steady_failed')],
  noisy: [new Counter('noisy_ok'), new Counter('noisy_refused'), new Counter('noisy_failed')],
  shared_a: [new Counter('shared_a_ok'), new Counter('shared_a_refused'), new Counter('shared_a_failed')],
  shared_b: [new Counter('shared_b_ok'), new Counter('shared_b_refused'), new Counter('shared_b_failed')],
  high: [new Counter('high_ok'), new Counter('high_refused'), new Counter('high_failed')],
  low: [new Counter('low_ok'), new Counter('low_refused'), new Counter('low_failed')],
};
const steadyLatency = new Trend('steady_latency', true);
const highLatency = new Trend('high_latency', true);
const lowLatency = new Trend('low_latency', true);
const MODEL = __ENV.MODEL || 'mlp_heavy';
const ROW = Array.from({ length: Number(__ENV.MODEL_WIDTH || 512) }, (_, i) => (i % 11) / 11);
const bodyAt = (priority) => JSON.stringify({
  inputs: [{ name: 'x', shape: [1, ROW.length], datatype: 'FP32', data: ROW }],
  parameters: { priority },
});
const HIGH_BODY = bodyAt(1);
const LOW_BODY = bodyAt(10);
const retryAfter = new Counter('refusals_with_retry_after');

function rate(name, rps, exec) {
  return {
    executor: 'constant-arrival-rate',
    rate: rps,
    timeUnit: '1s',
    duration,
    preAllocatedVUs: 16,
    maxVUs: 256,
    exec,
  };
}

const scenarios = {};
if (phase === 'alone' || phase === 'together') {
  scenarios.steady = rate('steady', Number(__ENV.STEADY_RPS || 100), 'steady');
}
if (phase === 'together') {
  scenarios.noisy = rate('noisy', Number(__ENV.NOISY_RPS || 1000), 'noisy');
}
if (phase === 'high' || phase === 'overload') {
  scenarios.high = rate('high', Number(__ENV.HIGH_RPS || 20), 'high');
}
if (phase === 'overload') {
  scenarios.low = rate('low', Number(__ENV.LOW_RPS || 400), 'low');
}
if (phase === 'cluster') {
  scenarios.shared_a = rate('shared_a', Number(__ENV.RPS_A || 300), 'sharedA');
  scenarios.shared_b = rate('shared_b', Number(__ENV.RPS_B || 100), 'sharedB');
}
export const options = { scenarios, summaryTrendStats: ['p(50)', 'p(99)', 'max', 'count'] };

function call(base, key, counters, model = 'mlp', body = MLP_BODY) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = http.post(`${base}/v2/models/${model}/infer`, body, { headers });
  if (response.status === 200) {
    counters[0].add(1);
  } else if (response.status === 429) {
    counters[1].add(1);
    if (response.headers['Retry-After']) retryAfter.add(1);
  } else {
    counters[2].add(1);
  }
  return response;
}

export function steady() {
  const response = call(BASE_URL, __ENV.STEADY_KEY, answered.steady);
  if (response.status === 200) steadyLatency.add(response.timings.duration);
}

export function noisy() {
  call(BASE_URL, __ENV.NOISY_KEY, answered.noisy);
}

export function sharedA() {
  call(BASE_URL, __ENV.SHARED_KEY, answered.shared_a);
}

export function sharedB() {
  call(BASE_URL_B, __ENV.SHARED_KEY, answered.shared_b);
}

export function high() {
  const response = call(BASE_URL, __ENV.SHARED_KEY, answered.high, MODEL, HIGH_BODY);
  if (response.status === 200) highLatency.add(response.timings.duration);
}

export function low() {
  const response = call(BASE_URL, __ENV.SHARED_KEY, answered.low, MODEL, LOW_BODY);
  if (response.status === 200) lowLatency.add(response.timings.duration);
}

export function handleSummary(data) {
  const count = (name) => (data.metrics[name] ? data.metrics[name].values.count : 0);
  const out = { phase };
  for (const scenario of Object.keys(answered)) {
    out[scenario] = {
      ok: count(`${scenario}_ok`),
      refused: count(`${scenario}_refused`),
      failed: count(`${scenario}_failed`),
    };
  }
  out.refusals_with_retry_after = count('refusals_with_retry_after');
  for (const name of ['steady', 'high', 'low']) {
    const latency = data.metrics[`${name}_latency`];
    out[`${name}_p50_ms`] = latency ? latency.values['p(50)'] : null;
    out[`${name}_p99_ms`] = latency ? latency.values['p(99)'] : null;
  }
  out.dropped_iterations = count('dropped_iterations');
  return { [__ENV.SUMMARY || '/dev/stdout']: JSON.stringify(out) };
}
