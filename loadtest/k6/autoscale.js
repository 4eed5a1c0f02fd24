// A load step on mlp_heavy for the autoscaler: idle, 12 users for 20 s, idle again for 15 s.
// Every request must succeed (a new replica loads off the request path); loadtest/autoscale
// checks the replica counts and the registry's scaling events around it.
import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL } from './lib.js';

const ROW = Array(512).fill(0.5);
const BODY = JSON.stringify({
  inputs: [{ name: 'x', shape: [1, 512], datatype: 'FP32', data: ROW }],
});

export const options = {
  scenarios: {
    step: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: '1s', target: 12 },
        { duration: '20s', target: 12 },
        { duration: '1s', target: 0 },
      ],
      gracefulRampDown: '5s',
    },
  },
  thresholds: { checks: ['rate==1'], http_req_failed: ['rate==0'] },
};

export default function () {
  const response = http.post(`${BASE_URL}/v2/models/mlp_heavy/infer`, BODY, {
    headers: { 'Content-Type': 'application/json' },
  });
  check(response, { 'infer is 200': (r) => r.status === 200 });
}
